#!/usr/bin/env bash
# make demo: a local PostgreSQL with a shop database and an ERP database,
# Plume running pipelines/quickstart.yaml through the embedded broker, and a
# few changes shown arriving in the ERP table and on the Kafka topic.
# Needs nothing but Debian packages (installed if missing) and no accounts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/data
PGDATA=$DATA/demo-pg
PGBIN=/usr/lib/postgresql/15/bin
export PLUME_DEMO_PG_PORT=${PLUME_DEMO_PG_PORT:-5433}
export PLUME_DEMO_KAFKA_PORT=${PLUME_DEMO_KAFKA_PORT:-9092}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ ! -x $PGBIN/postgres ] || ! command -v psql >/dev/null || ! command -v kcat >/dev/null; then
	say "installing postgresql-15 and kcat"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -q update && apt-get -q install -y --no-install-recommends postgresql-15 postgresql-client-15 kcat
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$DATA"
rm -rf "$PGDATA" "$DATA/quickstart"
mkdir -p "$PGDATA"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
say "starting PostgreSQL 15 on 127.0.0.1:$PLUME_DEMO_PG_PORT (wal_level=logical)"
as_pg $PGBIN/initdb -D "$PGDATA" -A trust -U postgres -E UTF8 --locale=C >/dev/null
as_pg $PGBIN/pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" -w -o "-p $PLUME_DEMO_PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c wal_level=logical" start >/dev/null

PLUME_PID=
cleanup() {
	[ -n "$PLUME_PID" ] && kill "$PLUME_PID" 2>/dev/null && wait "$PLUME_PID" 2>/dev/null || true
	as_pg $PGBIN/pg_ctl -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql() { command psql -X -q -h 127.0.0.1 -p "$PLUME_DEMO_PG_PORT" -U postgres "$@"; }
psql -c "CREATE DATABASE shop" -c "CREATE DATABASE erp"
psql -d shop <<'SQL'
CREATE TABLE products (id serial PRIMARY KEY, sku text UNIQUE NOT NULL, name text NOT NULL, price numeric(10,2) NOT NULL);
-- The ERP is keyed by sku: deletes must carry the whole old row.
ALTER TABLE products REPLICA IDENTITY FULL;
INSERT INTO products (sku, name, price) VALUES
  ('TEA-001', 'Green tea, 100 g', 4.90), ('TEA-002', 'Black tea, 100 g', 4.50),
  ('MUG-001', 'Stoneware mug', 12.00), ('POT-001', 'Cast-iron teapot', 39.00);
SQL
psql -d erp -c "CREATE SCHEMA erp" -c "CREATE TABLE erp.products (sku text PRIMARY KEY, name text, price numeric(10,2))"

say "source table shop.public.products"
psql -d shop -c "SELECT sku, name, price FROM products ORDER BY sku"

say "running: bin/plume run -c pipelines/quickstart.yaml"
bin/plume run -c pipelines/quickstart.yaml > "$DATA/quickstart.log" 2>&1 &
PLUME_PID=$!

wait_erp() { # wait until the ERP table equals the source
	for _ in $(seq 1 150); do
		a=$(psql -d shop -At -c "SELECT sku||'|'||name||'|'||price FROM products ORDER BY sku")
		b=$(psql -d erp -At -c "SELECT sku||'|'||name||'|'||price FROM erp.products ORDER BY sku")
		[ "$a" = "$b" ] && return 0
		kill -0 "$PLUME_PID" 2>/dev/null || { cat "$DATA/quickstart.log"; echo "plume exited"; exit 1; }
		sleep 0.2
	done
	echo "ERP table did not catch up; log:"; tail -30 "$DATA/quickstart.log"; exit 1
}
wait_erp
say "the initial snapshot reached the ERP table"
psql -d erp -c "SELECT * FROM erp.products ORDER BY sku"

say "applying changes: a price change, a new product, a deleted product"
psql -d shop -c "UPDATE products SET price = 5.20 WHERE sku = 'TEA-001'" \
	-c "INSERT INTO products (sku, name, price) VALUES ('TEA-003', 'Oolong, 100 g', 7.80)" \
	-c "DELETE FROM products WHERE sku = 'MUG-001'"
wait_erp
say "ERP table after the changes"
psql -d erp -c "SELECT * FROM erp.products ORDER BY sku"

say "the same changes as CloudEvents on Kafka topic shop.public.products (kcat, read_committed)"
kcat -C -b 127.0.0.1:"$PLUME_DEMO_KAFKA_PORT" -t shop.public.products -e -q -X isolation.level=read_committed \
	-f 'key=%k  %h\n  %s\n' | tail -n 8 | cut -c1-400

say "done: stopping Plume (SIGTERM: clean shutdown, checkpoints consistent)"
kill "$PLUME_PID"; wait "$PLUME_PID" || true; PLUME_PID=
tail -3 "$DATA/quickstart.log"
