package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// e2e is the thin end-to-end path of the foundation: PostgreSQL -> capture
// -> embedded Kafka -> router -> sql target in a PostgreSQL "ERP" database.
type e2e struct {
	t          *testing.T
	pg         *testharness.PG
	srcDB      string
	erpDB      string
	bin        string
	cfgPath    string
	brokerAddr string
	proc       *testharness.Proc
}

func newE2E(t *testing.T) *e2e {
	if testing.Short() {
		t.Skip("end-to-end test needs PostgreSQL")
	}
	e := &e2e{t: t, pg: testharness.Postgres(t), bin: testharness.BuildPlume(t)}
	e.srcDB = e.pg.NewDatabase(t)
	e.erpDB = e.pg.NewDatabase(t)
	// The ERP is keyed by sku, not by the source's primary key: deletes need
	// the full before image, so the table has REPLICA IDENTITY FULL.
	e.pg.Exec(t, e.srcDB, `CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL, name text, price numeric(12,2))`)
	e.pg.Exec(t, e.srcDB, `ALTER TABLE products REPLICA IDENTITY FULL`)
	e.pg.Exec(t, e.srcDB, `INSERT INTO products SELECT g, 'SKU-'||g, 'product '||g, g*1.25 FROM generate_series(1,50) g`)
	e.pg.Exec(t, e.erpDB, `CREATE SCHEMA erp; CREATE TABLE erp.products (sku text PRIMARY KEY, name text, price numeric(12,2))`)
	port, err := testharness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	e.brokerAddr = fmt.Sprintf("127.0.0.1:%d", port)
	dir := t.TempDir()
	e.cfgPath = filepath.Join(dir, "pipeline.yaml")
	cfg := fmt.Sprintf(`name: e2e
state_dir: %s
log: { level: debug }
source:
  type: postgres
  dsn: "%s"
  tables: ["public.products"]
  snapshot: initial
  heartbeat_interval: 1s
kafka:
  embedded: { listen: "%s" }
  batch_linger: 20ms
routes:
  - name: products-to-erp
    when: 'table == "products"'
    to: [erp]
    map: '{"sku": row.sku, "name": row.name, "price": row.price}'
targets:
  erp:
    type: sql
    dsn: "%s"
    table: erp.products
    key: [sku]
`, filepath.Join(dir, "state"), e.pg.DSN(e.srcDB), e.brokerAddr, e.pg.DSN(e.erpDB))
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *e2e) start() {
	e.proc = testharness.StartProcess(e.t, e.bin, "run", "-c", e.cfgPath)
	if !e.proc.WaitOutput("pipeline running", 60*time.Second) {
		e.t.Fatalf("plume did not start:\n%s", e.proc.Output())
	}
}

func (e *e2e) rows(db, query string) []string {
	conn := e.pg.Connect(e.t, db)
	defer conn.Close(context.Background())
	rs, err := conn.Query(context.Background(), query)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) (string, error) {
		var a, b, c *string
		err := r.Scan(&a, &b, &c)
		return fmt.Sprintf("%v|%v|%v", deref(a), deref(b), deref(c)), err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// waitInSync waits until the ERP table equals the source table.
func (e *e2e) waitInSync(d time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	var src, dst []string
	for time.Now().Before(deadline) {
		src = e.rows(e.srcDB, `SELECT sku, name, price::text FROM products`)
		dst = e.rows(e.erpDB, `SELECT sku, name, price::text FROM erp.products`)
		if strings.Join(src, "\n") == strings.Join(dst, "\n") {
			return
		}
		if e.proc.Exited() {
			e.t.Fatalf("plume exited:\n%s", e.proc.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("ERP table did not converge to the source within %v:\nsource %d rows, erp %d rows\nplume output:\n%s", d, len(src), len(dst), tail(e.proc.Output(), 40))
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// records reads a topic with read_committed from the start.
func (e *e2e) records(topic string) []*kgo.Record {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokerAddr), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			return out
		}
		out = append(out, fs.Records()...)
	}
}

// topicIDs returns every CloudEvents id in a topic, in order.
func (e *e2e) topicIDs(topic string) []string {
	var ids []string
	for _, r := range e.records(topic) {
		for _, h := range r.Headers {
			if h.Key == "ce_id" {
				ids = append(ids, string(h.Value))
			}
		}
	}
	return ids
}

func TestEndToEndPostgresToERP(t *testing.T) {
	e := newE2E(t)
	e.start()
	e.waitInSync(60 * time.Second) // the initial snapshot

	e.pg.Exec(t, e.srcDB, `INSERT INTO products VALUES (100, 'SKU-100', 'new', 9.99)`)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET price = price + 1, name = 'renamed' WHERE id <= 10`)
	e.pg.Exec(t, e.srcDB, `DELETE FROM products WHERE id BETWEEN 11 AND 15`)
	e.waitInSync(30 * time.Second)

	// A clean stop (SIGTERM), changes while stopped, then a restart: the
	// source position and target offsets survive; nothing is lost.
	if err := e.proc.Stop(); err != nil {
		t.Fatalf("clean stop: %v\n%s", err, e.proc.Output())
	}
	e.pg.Exec(t, e.srcDB, `UPDATE products SET price = 1 WHERE id = 20`)
	e.pg.Exec(t, e.srcDB, `INSERT INTO products VALUES (101, 'SKU-101', 'while stopped', 1)`)
	e.pg.Exec(t, e.srcDB, `DELETE FROM products WHERE id = 30`)
	e.start()
	e.waitInSync(60 * time.Second)

	// SIGKILL mid-stream, then restart.
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'before kill' WHERE id > 40`)
	time.Sleep(300 * time.Millisecond)
	if err := e.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = e.proc.Wait()
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'after kill' WHERE id > 45`)
	e.start()
	e.waitInSync(60 * time.Second)

	// Every change is in the topic exactly once (read while plume, and so
	// the embedded broker, still runs).
	ids := e.topicIDs("e2e.public.products")
	if err := e.proc.Stop(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	seen := map[string]int{}
	for _, id := range ids {
		seen[id]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("id %s appears %d times in the topic", id, n)
		}
	}
	// 50 snapshot rows + 1 insert + 10 updates + 5 deletes, 3 while
	// stopped, then 12 and 7 updates (ids above 40 and 45, with 100 and 101).
	if want := 50 + 1 + 10 + 5 + 3 + 12 + 7; len(seen) != want {
		t.Errorf("topic holds %d distinct change ids, want %d", len(seen), want)
	}
}
