package main

import (
	"bytes"
	"context"
	dbsql "database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/testharness"
	check "github.com/plumecdc/plume/pkg/validate"
)

// End-to-end tests of the search target (issue #8) with the real plume
// binary: PostgreSQL or MariaDB -> capture -> Apache Kafka -> router ->
// search target -> OpenSearch. A writer makes inserts, updates, deletes,
// re-inserts of deleted keys and primary-key changes (also back to keys used
// before) while the route stage is SIGKILLed and restarted several times.
// Afterwards the index must equal the source table document by document,
// and every document's _version must be the Kafka offset (+1) of the last
// change of its key: no document holds a stale version.

const (
	srchInitialRows = 400
	srchChanges     = 2500 // changes made by the writer (rows affected)
	srchRate        = 250  // changes per second
	srchKills       = 3
)

// srchSource is the source database of one test.
type srchSource interface {
	yaml() string                                  // the source block
	topic(prefix string) string                    // the products topic
	txn(ctx context.Context, stmts []string) error // one transaction
	rows(ctx context.Context) (check.Rows, error)  // id -> columns
	exec(t *testing.T, stmts string)               // setup statements
}

type srchPG struct {
	pg   *testharness.PG
	db   string
	conn *pgx.Conn
}

func (s *srchPG) yaml() string {
	return fmt.Sprintf("  type: postgres\n  dsn: %q\n  tables: [\"public.products\"]\n  heartbeat_interval: 1s\n", s.pg.DSN(s.db))
}
func (s *srchPG) topic(prefix string) string      { return prefix + ".public.products" }
func (s *srchPG) exec(t *testing.T, stmts string) { s.pg.Exec(t, s.db, stmts) }
func (s *srchPG) txn(ctx context.Context, stmts []string) error {
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return err
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			_ = tx.Rollback(ctx)
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return tx.Commit(ctx)
}
func (s *srchPG) rows(ctx context.Context) (check.Rows, error) {
	return check.PostgresTable(ctx, s.conn, `SELECT id, sku, name, price, qty FROM products`)
}

type srchMy struct {
	my *testharness.MySQL
	db string
	sq *dbsql.DB
}

func (s *srchMy) yaml() string {
	return fmt.Sprintf("  type: mysql\n  dsn: %q\n  tables: [\"%s.products\"]\n  heartbeat_interval: 1s\n", s.my.DSN(s.db), s.db)
}
func (s *srchMy) topic(prefix string) string      { return prefix + "." + s.db + ".products" }
func (s *srchMy) exec(t *testing.T, stmts string) { s.my.Exec(t, s.db, stmts) }
func (s *srchMy) txn(ctx context.Context, stmts []string) error {
	tx, err := s.sq.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return tx.Commit()
}
func (s *srchMy) rows(ctx context.Context) (check.Rows, error) {
	return check.SQLTable(ctx, s.sq, `SELECT id, sku, name, price, qty FROM products`)
}

func TestSearchEndToEndPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with real PostgreSQL, Kafka and OpenSearch")
	}
	t.Parallel()
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	src := &srchPG{pg: pg, db: db}
	// REPLICA IDENTITY DEFAULT: a delete's before image holds the key only,
	// and a key-changing update's the old key (what the target needs).
	src.exec(t, `CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL, name text, price numeric(12,2), qty integer)`)
	src.conn = pg.Connect(t, db)
	runSearchE2E(t, src)
}

func TestSearchEndToEndMariaDB(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with real MariaDB, Kafka and OpenSearch")
	}
	t.Parallel()
	my := testharness.MariaDB(t)
	db := my.NewDatabase(t)
	src := &srchMy{my: my, db: db}
	src.exec(t, "CREATE TABLE products (id bigint PRIMARY KEY, sku varchar(64) NOT NULL, name varchar(200), price decimal(12,2), qty int) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
	sq, err := dbsql.Open("mysql", my.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	sq.SetMaxOpenConns(2)
	t.Cleanup(func() { sq.Close() })
	src.sq = sq
	runSearchE2E(t, src)
}

func runSearchE2E(t *testing.T, src srchSource) {
	start := time.Now()
	ctx := context.Background()
	name := testharness.UniqueName(t)
	bin := testharness.BuildPlume(t)
	brokers := testharness.Kafka(t).Brokers()
	osrv := testharness.OpenSearch(t)
	index := name
	dir := t.TempDir()

	var vals []string
	for i := 1; i <= srchInitialRows; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 'SKU-%d', 'product %d', %d.25, %d)", i, i, i, i%97, i%13))
	}
	src.exec(t, "INSERT INTO products (id, sku, name, price, qty) VALUES "+strings.Join(vals, ", "))

	cfg := func(file string) string {
		c := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
%s  snapshot: initial
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
  topics: { partitions: 1 }   # the default; primary-key changes need it (docs/targets/search.md)
routes:
  - name: to-search
    when: 'table == "products"'
    to: [search]
targets:
  search:
    type: search
    url: %q
    index: %s
    create_index: { settings: { number_of_shards: 1, number_of_replicas: 0 } }
    delivery: { batch_max_events: 200 }
`, name, filepath.Join(dir, strings.TrimSuffix(file, ".yaml")+"-state"), src.yaml(), brokers[0], name, osrv.URL(), index)
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	captureCfg, routeCfg := cfg("capture.yaml"), cfg("route.yaml")
	startStage := func(file, stage string) *testharness.Proc {
		p := testharness.StartProcess(t, bin, "run", "-c", file, "--stage", stage)
		if !p.WaitOutput("pipeline running", 90*time.Second) {
			t.Fatalf("plume --stage %s did not start:\n%s", stage, eoTail(p.Output(), 30))
		}
		return p
	}
	capture := startStage(captureCfg, "capture")
	if !capture.WaitOutput("snapshot done", 2*time.Minute) {
		t.Fatalf("the snapshot did not finish:\n%s", eoTail(capture.Output(), 30))
	}
	route := startStage(routeCfg, "route")
	e := srchES{t: t, url: osrv.URL()}
	for deadline := time.Now().Add(60 * time.Second); e.count(index) < srchInitialRows; {
		if time.Now().After(deadline) || route.Exited() {
			t.Fatalf("the snapshot did not reach the index (%d documents):\n%s", e.count(index), eoTail(route.Output(), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The writer: transactions of 1-5 statements on keys it tracks.
	w := &srchWriter{src: src, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8)), live: map[int64]bool{}, next: srchInitialRows + 1}
	for i := int64(1); i <= srchInitialRows; i++ {
		w.live[i] = true
	}
	var writerErr error
	var writing atomic.Bool
	writing.Store(true)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer writing.Store(false)
		writerErr = w.run(ctx, srchChanges, srchRate, 3*time.Minute)
	})

	// SIGKILL the route stage while changes stream, restarting it at once.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	kills := 0
	for kills < srchKills && writing.Load() {
		time.Sleep(time.Duration(800+rng.IntN(1500)) * time.Millisecond)
		if route.Exited() {
			t.Fatalf("the route stage exited:\n%s", eoTail(route.Output(), 30))
		}
		_ = route.Kill()
		kills++
		route = startStage(routeCfg, "route")
	}
	wg.Wait()
	if writerErr != nil {
		t.Fatalf("writer: %v", writerErr)
	}
	t.Logf("writer: %d changes (%d primary-key changes) in %d transactions; %d kills of the route stage", w.changes, w.keyChanges, w.txns, kills)
	if kills < 2 {
		t.Fatalf("only %d kills landed while the writer ran", kills)
	}

	// Wait until the index equals the source, document by document.
	var diff error
	for deadline := time.Now().Add(90 * time.Second); ; {
		want, err := src.rows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		diff = check.DiffRows(want, e.rows(index))
		if diff == nil {
			break
		}
		if route.Exited() {
			t.Fatalf("the route stage exited:\n%s", eoTail(route.Output(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the index does not equal the source table:\n%v\nroute stage:\n%s", diff, eoTail(route.Output(), 30))
		}
		time.Sleep(time.Second)
	}

	// No document holds a stale version: each one's _version is the offset
	// of the last change of its key, plus one.
	last := srchLastOffsets(t, brokers, src.topic(name))
	docs := e.versions(index)
	var stale []string
	for id, v := range docs {
		off, ok := last["id="+id]
		if !ok || v != off+1 {
			stale = append(stale, fmt.Sprintf("_id %s: _version %d, last change of the key at offset %d (found %v)", id, v, off, ok))
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Fatalf("%d documents with a stale version:\n%s", len(stale), strings.Join(stale[:min(len(stale), 20)], "\n"))
	}
	if err := route.Stop(); err != nil {
		t.Errorf("route stage stop: %v", err)
	}
	if err := capture.Stop(); err != nil {
		t.Errorf("capture stage stop: %v", err)
	}
	t.Logf("index equals the source: %d documents, all at the version of their last change; %v in all", len(docs), time.Since(start).Round(time.Second))
}

// srchWriter changes products on keys whose state it tracks, so that every
// statement affects the rows it names.
type srchWriter struct {
	src                       srchSource
	rng                       *rand.Rand
	live                      map[int64]bool
	dead                      []int64 // deleted keys, for re-inserts and key changes
	next                      int64
	changes, keyChanges, txns int
}

func (w *srchWriter) liveKey() int64 {
	for {
		k := 1 + w.rng.Int64N(w.next-1)
		if w.live[k] {
			return k
		}
	}
}

// freeKey returns a key not in use: a deleted one (reused) or a new one.
func (w *srchWriter) freeKey() int64 {
	if len(w.dead) > 0 && w.rng.IntN(2) == 0 {
		i := w.rng.IntN(len(w.dead))
		k := w.dead[i]
		w.dead = append(w.dead[:i], w.dead[i+1:]...)
		return k
	}
	k := w.next
	w.next++
	return k
}

func (w *srchWriter) run(ctx context.Context, changes int, rate float64, maxTime time.Duration) error {
	start := time.Now()
	for w.changes < changes && time.Since(start) < maxTime {
		var stmts []string
		n := 1 + w.rng.IntN(5)
		for range n {
			switch k := w.rng.IntN(100); {
			case k < 30 || len(w.live) < 50:
				id := w.freeKey()
				stmts = append(stmts, fmt.Sprintf("INSERT INTO products (id, sku, name, price, qty) VALUES (%d, 'SKU-%d', 'new %d', %d.50, %d)", id, id, w.txns, w.rng.IntN(1000), w.rng.IntN(100)))
				w.live[id] = true
			case k < 65:
				id := w.liveKey()
				name := fmt.Sprintf("'u%d ü'", w.txns)
				if w.rng.IntN(10) == 0 {
					name = "NULL"
				}
				stmts = append(stmts, fmt.Sprintf("UPDATE products SET price = price + 0.01, qty = qty + 1, name = %s WHERE id = %d", name, id))
			case k < 80:
				id := w.liveKey()
				stmts = append(stmts, fmt.Sprintf("DELETE FROM products WHERE id = %d", id))
				delete(w.live, id)
				w.dead = append(w.dead, id)
			default: // the primary key itself changes
				from := w.liveKey()
				to := w.freeKey()
				stmts = append(stmts, fmt.Sprintf("UPDATE products SET id = %d, name = 'moved from %d' WHERE id = %d", to, from, from))
				delete(w.live, from)
				w.live[to] = true
				w.dead = append(w.dead, from)
				w.keyChanges++
			}
		}
		if err := w.src.txn(ctx, stmts); err != nil {
			return err
		}
		w.txns++
		w.changes += len(stmts)
		if ahead := time.Duration(float64(w.changes)/rate*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(min(ahead, 200*time.Millisecond))
		}
	}
	return nil
}

// srchLastOffsets reads a topic from the start (read_committed) and returns,
// per record key, the offset of the key's last change (tombstones skipped).
func srchLastOffsets(t *testing.T, brokers []string, topic string) map[string]int64 {
	t.Helper()
	cl := testharness.KafkaClient(t, brokers, kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	last := map[string]int64{}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			return last
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Value != nil {
				last[string(r.Key)] = r.Offset
			}
		})
	}
	t.Fatalf("reading %s took more than 60s", topic)
	return nil
}

// srchES reads an OpenSearch index for the checks.
type srchES struct {
	t   *testing.T
	url string
}

func (e srchES) post(path, body string) []byte {
	e.t.Helper()
	code, b := e.try(path, body)
	if code == 404 {
		return nil
	}
	if code != 200 {
		e.t.Fatalf("POST %s: HTTP %d %s", path, code, b)
	}
	return b
}

func (e srchES) try(path, body string) (int, []byte) {
	e.t.Helper()
	resp, err := http.Post(e.url+path, "application/json", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// count is the number of documents, 0 while the index is missing or its
// shard is not active yet.
func (e srchES) count(index string) int {
	e.try("/"+index+"/_refresh", "")
	var r struct {
		Count int `json:"count"`
	}
	if code, b := e.try("/"+index+"/_count", ""); code == 200 {
		_ = json.Unmarshal(b, &r)
	}
	return r.Count
}

type srchHit struct {
	ID      string         `json:"_id"`
	Version int64          `json:"_version"`
	Source  map[string]any `json:"_source"`
}

// hits returns every document (the test indexes stay below 10,000).
func (e srchES) hits(index string) []srchHit {
	e.post("/"+index+"/_refresh", "")
	b := e.post("/"+index+"/_search", `{"size":10000,"version":true,"track_total_hits":true,"query":{"match_all":{}}}`)
	var r struct {
		Hits struct {
			Total struct {
				Value int `json:"value"`
			} `json:"total"`
			Hits []srchHit `json:"hits"`
		} `json:"hits"`
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&r); err != nil {
		e.t.Fatalf("search %s: %v", index, err)
	}
	if r.Hits.Total.Value > len(r.Hits.Hits) {
		e.t.Fatalf("index %s holds %d documents, more than the test reads", index, r.Hits.Total.Value)
	}
	return r.Hits.Hits
}

// rows returns the index as a table: _id -> the document's fields.
func (e srchES) rows(index string) check.Rows {
	out := check.Rows{}
	for _, h := range e.hits(index) {
		out[h.ID] = h.Source
	}
	return out
}

func (e srchES) versions(index string) map[string]int64 {
	out := map[string]int64{}
	for _, h := range e.hits(index) {
		out[h.ID] = h.Version
	}
	return out
}
