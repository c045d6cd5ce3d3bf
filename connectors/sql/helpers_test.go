package sql

import (
	"context"
	dbsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// testDB is a fresh database on one of the harness servers.
type testDB struct {
	dialect string // dialectPostgres or dialectMySQL
	name    string // database name
	dsn     string
	// schema qualifies table names: "erp" (a PG schema) or the MySQL database.
	schema string
	exec   func(t *testing.T, sql string)
	rows   func(t *testing.T, sql string) [][]string
	// kill terminates, from another connection, the session running tx.
	kill func(t *testing.T, tx txn)
	// addUser creates a user with a password that may connect, and returns
	// the DSN for it with password pw.
	addUser func(t *testing.T, user, realPW, pw string) string
}

func (d *testDB) pg() bool { return d.dialect == dialectPostgres }

// pick returns pgSQL or mySQL for the database's dialect.
func (d *testDB) pick(pgSQL, mySQL string) string {
	if d.pg() {
		return pgSQL
	}
	return mySQL
}

// forEachDB runs f against a fresh PostgreSQL and a fresh MariaDB database.
func forEachDB(t *testing.T, f func(t *testing.T, db *testDB)) {
	t.Run("postgres", func(t *testing.T) { f(t, newPGDB(t)) })
	t.Run("mariadb", func(t *testing.T) { f(t, newMariaDB(t)) })
}

func newPGDB(t *testing.T) *testDB {
	pg := testharness.Postgres(t)
	name := pg.NewDatabase(t)
	pg.Exec(t, name, `CREATE SCHEMA erp`)
	conn := pg.Connect(t, name)
	ctx := context.Background()
	d := &testDB{dialect: dialectPostgres, name: name, dsn: pg.DSN(name), schema: "erp"}
	d.exec = func(t *testing.T, sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("exec %q: %v", sql, err)
		}
	}
	d.rows = func(t *testing.T, sql string) [][]string {
		t.Helper()
		// The simple protocol returns every value in PostgreSQL's text form.
		rows, err := conn.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		defer rows.Close()
		var out [][]string
		for rows.Next() {
			var row []string
			for _, v := range rows.RawValues() {
				if v == nil {
					row = append(row, "NULL")
				} else {
					row = append(row, string(v))
				}
			}
			out = append(out, row)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		return out
	}
	d.kill = func(t *testing.T, tx txn) {
		t.Helper()
		var pid int64
		if err := tx.query(ctx, "SELECT pg_backend_pid()::bigint", nil, func(scan func(...any) error) error { return scan(&pid) }); err != nil {
			t.Fatalf("pg_backend_pid: %v", err)
		}
		d.exec(t, fmt.Sprintf("SELECT pg_terminate_backend(%d)", pid))
		// Wait until the backend is gone, so COMMIT cannot race it.
		for i := 0; i < 100; i++ {
			if d.rows(t, fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid))[0][0] == "0" {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	d.addUser = func(t *testing.T, user, realPW, pw string) string {
		t.Helper()
		// The harness server trusts every local connection: require a
		// password for this role only, in pg_hba.conf.
		d.exec(t, fmt.Sprintf(`DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[1]s') THEN CREATE ROLE %[1]s LOGIN PASSWORD '%[2]s'; END IF;
		END $$`, user, realPW))
		hba := d.rows(t, "SHOW hba_file")[0][0]
		line := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", user)
		cur, err := os.ReadFile(hba)
		if err != nil {
			t.Skipf("cannot edit pg_hba.conf: %v", err)
		}
		if !strings.Contains(string(cur), line) {
			if err := os.WriteFile(hba, append([]byte(line), cur...), 0o600); err != nil {
				t.Skipf("cannot edit pg_hba.conf: %v", err)
			}
			d.exec(t, "SELECT pg_reload_conf()")
		}
		bad := fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, pw, pg.Host, pg.Port, name)
		// pg_reload_conf only signals the postmaster: wait until the rule applies.
		wrong := fmt.Sprintf("postgres://%s:definitely-not-it@%s:%d/%s?sslmode=disable", user, pg.Host, pg.Port, name)
		for i := 0; i < 100; i++ {
			c, err := pgx.Connect(ctx, wrong)
			if err != nil {
				break
			}
			c.Close(ctx)
			time.Sleep(50 * time.Millisecond)
		}
		return bad
	}
	return d
}

func newMariaDB(t *testing.T) *testDB {
	m := testharness.MariaDB(t)
	name := m.NewDatabase(t)
	conn, err := dbsql.Open("mysql", m.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetMaxOpenConns(2)
	t.Cleanup(func() { conn.Close() })
	ctx := context.Background()
	d := &testDB{dialect: dialectMySQL, name: name, dsn: m.DSN(name), schema: name}
	d.exec = func(t *testing.T, sql string) {
		t.Helper()
		if _, err := conn.ExecContext(ctx, sql); err != nil {
			t.Fatalf("exec %q: %v", sql, err)
		}
	}
	d.rows = func(t *testing.T, sql string) [][]string {
		t.Helper()
		rows, err := conn.QueryContext(ctx, sql)
		if err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var out [][]string
		for rows.Next() {
			vals := make([]dbsql.NullString, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			row := make([]string, len(cols))
			for i, v := range vals {
				row[i] = v.String
				if !v.Valid {
					row[i] = "NULL"
				}
			}
			out = append(out, row)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		return out
	}
	d.kill = func(t *testing.T, tx txn) {
		t.Helper()
		var id int64
		if err := tx.query(ctx, "SELECT CONNECTION_ID()", nil, func(scan func(...any) error) error { return scan(&id) }); err != nil {
			t.Fatalf("CONNECTION_ID: %v", err)
		}
		d.exec(t, fmt.Sprintf("KILL %d", id))
	}
	d.addUser = func(t *testing.T, user, realPW, pw string) string {
		t.Helper()
		d.exec(t, fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s'", user, realPW))
		d.exec(t, fmt.Sprintf("GRANT ALL ON `%s`.* TO '%s'@'%%'", name, user))
		return fmt.Sprintf("%s:%s@tcp(%s)/%s", user, pw, m.Addr(), name)
	}
	return d
}

// productsDDL creates erp.products (sku key, name, price, qty).
func productsDDL(db *testDB) string {
	return db.pick(
		`CREATE TABLE erp.products (sku text PRIMARY KEY, name varchar(20), price numeric(12,2), qty integer)`,
		"CREATE TABLE products (sku VARCHAR(64) PRIMARY KEY, name VARCHAR(20), price DECIMAL(12,2), qty INT)")
}

// newTarget builds and opens a target on db with cfg's table defaulting
// to the qualified products table.
func newTarget(t *testing.T, db *testDB, mod func(*Config)) (*Target, target.Offsets) {
	t.Helper()
	tgt, offs, err := openTarget(t, db, mod)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return tgt, offs
}

func openTarget(t *testing.T, db *testDB, mod func(*Config)) (*Target, target.Offsets, error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DSN = config.DSN(db.dsn)
	cfg.Table = db.schema + ".products"
	cfg.Key = []string{"sku"}
	if mod != nil {
		mod(&cfg)
	}
	tgt, err := New(context.Background(), cfg, "pipe", "erp", nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { tgt.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	offs, err := tgt.Open(ctx)
	return tgt, offs, err
}

func apply(t *testing.T, tgt *Target, b *target.Batch) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return tgt.Apply(ctx, b)
}

func mustApply(t *testing.T, tgt *Target, b *target.Batch) {
	t.Helper()
	if err := apply(t, tgt, b); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

const testTopic = "plume.erp"

// msgs builds messages on partition 0 at offsets from, from+1, ...
type msgs struct {
	from int64
	list []target.Message
}

func (m *msgs) add(op event.Op, row map[string]any) *msgs {
	m.list = append(m.list, target.Message{
		Topic: testTopic, Partition: 0, Offset: m.from + int64(len(m.list)),
		Op: op, Row: row,
	})
	return m
}

func (m *msgs) ins(row map[string]any) *msgs { return m.add(event.OpCreate, row) }
func (m *msgs) upd(row map[string]any) *msgs { return m.add(event.OpUpdate, row) }
func (m *msgs) del(row map[string]any) *msgs { return m.add(event.OpDelete, row) }

// batch returns the batch with offsets just past its last message.
func (m *msgs) batch() *target.Batch {
	return &target.Batch{
		Messages: m.list,
		Offsets:  target.Offsets{{Topic: testTopic, Partition: 0}: m.from + int64(len(m.list))},
	}
}

func num(s string) json.Number { return json.Number(s) }

func dsnOf(s string) config.DSN { return config.DSN(s) }

func product(sku string, name any, price any, qty any) map[string]any {
	return map[string]any{"sku": sku, "name": name, "price": price, "qty": qty}
}

// products returns the products table as "sku|name|price|qty" lines.
func products(t *testing.T, db *testDB) []string {
	t.Helper()
	rows := db.rows(t, "SELECT sku, name, price, qty FROM "+db.schema+".products ORDER BY sku")
	out := []string{}
	for _, r := range rows {
		out = append(out, strings.Join(r, "|"))
	}
	return out
}

func wantRows(t *testing.T, got []string, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rows:\n got  %q\n want %q", got, want)
	}
}

// storedOffsets reads the offsets table directly.
func storedOffsets(t *testing.T, db *testDB) []string {
	t.Helper()
	rows := db.rows(t, "SELECT pipeline, target, topic, kafka_partition, next_offset FROM plume_offsets ORDER BY 1, 2, 3, 4")
	out := []string{}
	for _, r := range rows {
		out = append(out, strings.Join(r, "|"))
	}
	return out
}

func recordErrors(t *testing.T, err error) *target.RecordErrors {
	t.Helper()
	var re *target.RecordErrors
	if !errors.As(err, &re) {
		t.Fatalf("want *target.RecordErrors, got %T: %v", err, err)
	}
	if re.Applied {
		t.Fatalf("RecordErrors.Applied = true, want false")
	}
	return re
}

func failedIndexes(re *target.RecordErrors) []int {
	var idx []int
	for i := range re.Failed {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return idx
}

// without returns b without the messages at the given indexes, as the
// delivery layer re-applies it after dead-lettering them.
func without(b *target.Batch, failed map[int]error) *target.Batch {
	out := &target.Batch{Offsets: b.Offsets}
	for i, m := range b.Messages {
		if _, bad := failed[i]; !bad {
			out.Messages = append(out.Messages, m)
		}
	}
	return out
}
