package main

import (
	"context"
	dbsql "database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/testharness"
	check "github.com/plumecdc/plume/pkg/validate"
)

// The exactly-once-effect tests of delivery (issue: delivery to targets,
// exactly once in effect). One pipeline captures a PostgreSQL table into a
// real Apache Kafka and routes it to four targets at once:
//
//   - erp_pg: a sql target into a PostgreSQL database, keyed by sku;
//   - erp_my: a sql target into MariaDB, keyed by id;
//   - hooks: an http target (batch mode) posting to the test receiver;
//   - feed: a kafka target re-routing every event into a topic outside the
//     pipeline's prefix.
//
// TestTargetsExactlyOnceUnderRouteKills streams more than 100,000 changes
// while `plume run --stage route` is SIGKILLed and restarted (capture keeps
// running in its own process), then checks with pkg/validate: each SQL
// target equals the source table; the re-route topic holds every source
// event exactly once, in per-key order; the receiver got every event, with
// duplicates only from the batch each kill left unacknowledged.
//
// TestTargetsOutageKeepsOthersFlowing stops a target's database (a
// dedicated MariaDB) for a minute while changes stream: the other targets
// keep flowing, the process's memory stays bounded, and the stopped target
// catches up with nothing lost once its database returns.

const (
	eoInitialRows = 2000   // snapshot rows
	eoMinChanges  = 100000 // streamed changes in the kill test
	eoRouteKills  = 5
	// eoBatchSize is the delivery layer's batch (target.DeliveryConfig's
	// default BatchMaxEvents): an at-least-once target may see at most
	// one batch again per crash.
	eoBatchSize = 1000
	// eoRate paces the kill test's writer (changes per second) so that the
	// kills land while changes stream.
	eoRate      = 550
	eoMaxRSS    = 300 << 20
	eoOutage    = 60 * time.Second
	eoSrcBySku  = `SELECT sku, id, name, price FROM products`
	eoSrcByID   = `SELECT id, sku, name, price FROM products`
	eoErpPGRows = `SELECT sku, id, name, price FROM erp.products`
	eoErpMyRows = `SELECT id, sku, name, price FROM products`
)

// eoEnv is one pipeline under test with its databases, receiver and topics.
type eoEnv struct {
	t       *testing.T
	name    string // pipeline name and topic prefix
	bin     string
	dir     string
	brokers []string

	pg           *testharness.PG
	srcDB, erpDB string
	src, erp     *pgx.Conn // for reads from the test goroutine only

	my   *testharness.MySQL
	myDB string
	mydb *dbsql.DB

	rc        *receiver.Receiver
	hookURL   string
	feedTopic string // "" without a kafka target
}

func newEOEnv(t *testing.T, my *testharness.MySQL, withFeed bool) *eoEnv {
	t.Helper()
	e := &eoEnv{t: t, name: testharness.UniqueName(t), bin: testharness.BuildPlume(t), dir: t.TempDir(), my: my}
	e.brokers = testharness.Kafka(t).Brokers()
	e.pg = testharness.Postgres(t)
	e.srcDB = e.pg.NewDatabase(t)
	e.erpDB = e.pg.NewDatabase(t)
	e.pg.Exec(t, e.srcDB, `CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, name text, price numeric(12,2));
		ALTER TABLE products REPLICA IDENTITY FULL;
		INSERT INTO products SELECT g, 'SKU-'||g, 'product '||g, (g % 997) * 0.25 FROM generate_series(1, `+strconv.Itoa(eoInitialRows)+`) g`)
	// The PostgreSQL ERP is keyed by sku, not the source's key: deletes
	// need the before image (REPLICA IDENTITY FULL).
	e.pg.Exec(t, e.erpDB, `CREATE SCHEMA erp; CREATE TABLE erp.products (sku text PRIMARY KEY, id bigint NOT NULL, name text, price numeric(12,2))`)
	e.src = e.pg.Connect(t, e.srcDB)
	e.erp = e.pg.Connect(t, e.erpDB)

	e.myDB = my.NewDatabase(t)
	my.Exec(t, e.myDB, "CREATE TABLE products (id bigint PRIMARY KEY, sku varchar(64) NOT NULL, name varchar(200), price decimal(12,2), UNIQUE KEY (sku)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
	db, err := dbsql.Open("mysql", my.DSN(e.myDB))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	e.mydb = db

	e.rc = receiver.New()
	e.rc.Keep = true
	srv := httptest.NewServer(e.rc)
	t.Cleanup(srv.Close)
	e.hookURL = srv.URL
	if withFeed {
		e.feedTopic = e.name + "-feed" // not under the topic prefix "<name>."
	}
	return e
}

// config writes a pipeline file with its own state_dir (processes of one
// pipeline cannot share a Badger store) and returns its path.
func (e *eoEnv) config(file, extra string) string {
	e.t.Helper()
	state := filepath.Join(e.dir, strings.TrimSuffix(file, ".yaml")+"-state")
	feedRoute, feedTarget := "", ""
	if e.feedTopic != "" {
		feedRoute = ", feed"
		feedTarget = fmt.Sprintf("  feed: { type: kafka, topic: %q }\n", e.feedTopic)
	}
	cfg := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
  type: postgres
  dsn: %q
  tables: ["public.products"]
  snapshot: initial
  heartbeat_interval: 1s
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
  topics: { partitions: 3 }
routes:
  - name: to-erp
    when: 'table == "products"'
    to: [erp_pg, erp_my]
    map: '{"id": row.id, "sku": row.sku, "name": row.name, "price": row.price}'
  - name: to-feeds
    when: 'table == "products"'
    to: [hooks%s]
targets:
  erp_pg: { type: sql, dsn: %q, table: erp.products, key: [sku] }
  erp_my: { type: sql, dsn: %q, table: products, key: [id] }
  hooks: { type: http, url: %q, mode: batch, max_batch: 200, concurrency: 4 }
%s%s`, e.name, state, e.pg.DSN(e.srcDB), e.brokers[0], e.name, feedRoute,
		e.pg.DSN(e.erpDB), e.my.DSN(e.myDB), e.hookURL, feedTarget, extra)
	path := filepath.Join(e.dir, file)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *eoEnv) start(cfg string, args ...string) *testharness.Proc {
	e.t.Helper()
	p := testharness.StartProcess(e.t, e.bin, append([]string{"run", "-c", cfg}, args...)...)
	if !p.WaitOutput("pipeline running", 90*time.Second) {
		e.t.Fatalf("plume %v did not start:\n%s", args, eoTail(p.Output(), 30))
	}
	return p
}

func (e *eoEnv) pgRows(ctx context.Context, conn *pgx.Conn, query string) check.Rows {
	e.t.Helper()
	rows, err := check.PostgresTable(ctx, conn, query)
	if err != nil {
		e.t.Fatal(err)
	}
	return rows
}

// diffPG compares the PostgreSQL ERP table with the source.
func (e *eoEnv) diffPG(ctx context.Context) error {
	return check.DiffRows(e.pgRows(ctx, e.src, eoSrcBySku), e.pgRows(ctx, e.erp, eoErpPGRows))
}

// diffMy compares the MariaDB table with the source; a database that is
// down is an error, not a failure of the test.
func (e *eoEnv) diffMy(ctx context.Context) error {
	got, err := check.SQLTable(ctx, e.mydb, eoErpMyRows)
	if err != nil {
		return err
	}
	return check.DiffRows(e.pgRows(ctx, e.src, eoSrcByID), got)
}

// slotCaughtUp reports whether capture has confirmed the source's WAL up to lsn.
func (e *eoEnv) slotCaughtUp(ctx context.Context, lsn string) bool {
	var ok bool
	err := e.src.QueryRow(ctx, `SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::pg_lsn), false) FROM pg_replication_slots WHERE slot_name = $2`,
		lsn, "plume_"+e.name).Scan(&ok)
	return err == nil && ok
}

func (e *eoEnv) currentLSN(ctx context.Context) string {
	var lsn string
	if err := e.src.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// eoWriter makes changes to products in transactions of several kinds:
// multi-row inserts, updates and deletes, re-inserts of deleted ids,
// several changes of one key in one transaction, primary-key changes,
// and transactions larger
// than a delivery batch.
type eoWriter struct {
	conn    *pgx.Conn
	rng     *rand.Rand
	nextID  int64
	changes int64
	txns    int
	// bulk makes half the transactions range updates of up to 2,000 rows:
	// many changes for little work on the source.
	bulk bool
}

func (w *eoWriter) txn(ctx context.Context) error {
	n := w.txns
	rng := w.rng
	rnd := func(span int64) int64 { return 1 + rng.Int64N(max(span, 1)) }
	var stmts []string
	keyChange := false
	switch k := rng.IntN(100); {
	case w.bulk && k%2 == 0:
		lo := rnd(w.nextID - 500)
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = price + 0.01, name = 'bulk %d' WHERE id BETWEEN %d AND %d`, n, lo, lo+rng.Int64N(2000)))
	case n%250 == 249: // larger than a delivery batch
		lo := rnd(w.nextID - 1500)
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = price + 1, name = 'big %d' WHERE id BETWEEN %d AND %d`, n, lo, lo+1499))
	case k < 35:
		m := 1 + rng.Int64N(40)
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO products (id, sku, name, price) SELECT g, 'SKU-'||g, 'n'||g||' ü', (g %% 997) * 0.25 FROM generate_series(%d, %d) g`, w.nextID, w.nextID+m-1))
		w.nextID += m
	case k < 65:
		lo := rnd(w.nextID)
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = price + 0.01, name = CASE WHEN random() < 0.1 THEN NULL ELSE 'u%d' END WHERE id BETWEEN %d AND %d`, n, lo, lo+rng.Int64N(60)))
	case k < 80:
		lo := rnd(w.nextID)
		stmts = append(stmts, fmt.Sprintf(`DELETE FROM products WHERE id BETWEEN %d AND %d`, lo, lo+rng.Int64N(8)))
	case k < 87: // bring deleted ids back, with their sku
		lo := rnd(w.nextID)
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO products (id, sku, name, price) SELECT g, 'SKU-'||g, 'revived %d', 1.5 FROM generate_series(%d, %d) g WHERE g < %d ON CONFLICT (id) DO NOTHING`, n, lo, lo+9, w.nextID))
	case k < 90: // a primary-key change (and so a new sku): two events, delete of the old key and insert of the new
		x := w.nextID
		w.nextID++
		keyChange = true
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET id = %d, sku = 'SKU-%d', name = 'moved %d' WHERE id = %d`, x, x, n, rnd(x-1)))
	default: // one key changed several times in one transaction
		x := w.nextID
		w.nextID++
		stmts = append(stmts,
			fmt.Sprintf(`INSERT INTO products VALUES (%d, 'SKU-%d', 'm%d', 1)`, x, x, n),
			fmt.Sprintf(`UPDATE products SET price = 2 WHERE id = %d`, x),
			fmt.Sprintf(`UPDATE products SET name = 'm%d b' WHERE id = %d`, n, x),
			fmt.Sprintf(`UPDATE products SET name = name || ' c' WHERE id = %d`, rnd(x)))
		if rng.IntN(2) == 0 {
			stmts = append(stmts, fmt.Sprintf(`DELETE FROM products WHERE id = %d`, x))
		}
	}
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	var affected int64
	for _, s := range stmts {
		tag, err := tx.Exec(ctx, s)
		if err != nil {
			_ = tx.Rollback(ctx)
			return fmt.Errorf("%s: %w", s, err)
		}
		affected += tag.RowsAffected()
		if keyChange {
			affected += tag.RowsAffected() // captured as a delete and an insert
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	w.txns++
	w.changes += affected
	return nil
}

// run writes at about rate changes per second until done() or maxTime.
func (w *eoWriter) run(ctx context.Context, rate float64, maxTime time.Duration, done func() bool) error {
	start := time.Now()
	for !done() && time.Since(start) < maxTime {
		if err := w.txn(ctx); err != nil {
			return err
		}
		if ahead := time.Duration(float64(w.changes)/rate*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(min(ahead, 200*time.Millisecond))
		}
	}
	return nil
}

// eoTopic reads a topic from the start with read_committed, incrementally.
type eoTopic struct {
	cl         *kgo.Client
	events     []check.Event
	distinct   map[string]bool
	tombstones int
}

func newEOTopic(t *testing.T, brokers []string, topic string) *eoTopic {
	return &eoTopic{
		cl: testharness.KafkaClient(t, brokers, kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())),
		distinct: map[string]bool{},
	}
}

// drain reads until no record arrives for idle, or for at most max.
func (r *eoTopic) drain(t *testing.T, idle, max time.Duration) {
	t.Helper()
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), idle)
		fs := r.cl.PollFetches(ctx)
		cancel()
		for _, fe := range fs.Errors() {
			if fe.Err != context.DeadlineExceeded {
				t.Fatalf("read %s[%d]: %v", fe.Topic, fe.Partition, fe.Err)
			}
		}
		if fs.NumRecords() == 0 {
			return
		}
		fs.EachRecord(func(rec *kgo.Record) {
			ev, ok, err := check.FromRecord(rec)
			if err != nil {
				t.Fatalf("%s[%d]@%d: %v", rec.Topic, rec.Partition, rec.Offset, err)
			}
			if !ok {
				r.tombstones++
				return
			}
			r.events = append(r.events, ev)
			r.distinct[ev.Identity()] = true
		})
	}
}

// procMem reads a process's resident set and its peak (bytes).
func procMem(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// scrapeGauge reads one unlabelled metric from a Prometheus text endpoint
// (0 if it cannot).
func scrapeGauge(url, name string) int64 {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f)
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func eoTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// killRec is what happened around one SIGKILL of the route stage.
type killRec struct {
	at       time.Time
	rss, hwm int64 // the killed process's memory
	// mark is the number of events the receiver had accepted once the
	// killed process was gone: deliveries before it are the killed
	// process's, after it the next one's.
	mark        int
	resumeAfter time.Duration // restart to the first delivery after it; 0: none seen
}

// attributeDuplicates checks that every redelivery the receiver saw (evs,
// in arrival order) re-sends an event of the batch a kill left
// unacknowledged: its previous delivery is among the last batchSize events
// accepted before that kill, and the kill lies between the two
// deliveries. It returns the redeliveries per kill and the violations.
func attributeDuplicates(evs []receiver.Event, kills []killRec, batchSize int) (perKill []int, bad []string) {
	perKill = make([]int, len(kills))
	last := make(map[string]int, len(evs))
	for j, re := range evs {
		id := re.Source + " " + re.ID
		p, seen := last[id]
		last[id] = j
		if !seen {
			continue
		}
		k := sort.Search(len(kills), func(i int) bool { return kills[i].mark > p })
		switch {
		case k == len(kills) || kills[k].mark > j:
			bad = append(bad, fmt.Sprintf("%s delivered as event #%d and again as #%d with no kill between", id, p, j))
		case kills[k].mark-p > batchSize:
			bad = append(bad, fmt.Sprintf("%s redelivered after kill %d, but its previous delivery (#%d) was %d events before the kill: not the unacknowledged batch",
				id, k+1, p, kills[k].mark-p))
		default:
			perKill[k]++
		}
	}
	return perKill, bad
}

func TestTargetsExactlyOnceUnderRouteKills(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with real PostgreSQL, MariaDB and Kafka")
	}
	t.Parallel()
	testStart := time.Now()
	e := newEOEnv(t, testharness.MariaDB(t), true)
	captureCfg := e.config("capture.yaml", "")
	routeCfg := e.config("route.yaml", "")
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))

	capture := e.start(captureCfg, "--stage", "capture")
	if !capture.WaitOutput("snapshot done", 2*time.Minute) {
		t.Fatalf("the snapshot did not finish:\n%s", eoTail(capture.Output(), 30))
	}
	route := e.start(routeCfg, "--stage", "route")

	// waitProgress waits until the receiver has accepted more than from
	// events, and returns how long that took (0: not within d).
	waitProgress := func(from int64, d time.Duration) time.Duration {
		start := time.Now()
		for time.Since(start) < d {
			if e.rc.Stats().Events > from {
				return time.Since(start)
			}
			if route.Exited() {
				t.Fatalf("the route stage exited:\n%s", eoTail(route.Output(), 30))
			}
			time.Sleep(50 * time.Millisecond)
		}
		return 0
	}
	if waitProgress(0, 2*time.Minute) == 0 {
		t.Fatalf("nothing delivered to the http target:\n%s", eoTail(route.Output(), 30))
	}

	// The writer streams changes until it has made eoMinChanges and the
	// kills are done, so that every kill lands while changes flow.
	var killsDone atomic.Bool
	w := &eoWriter{conn: e.pg.Connect(t, e.srcDB), rng: rand.New(rand.NewPCG(rng.Uint64(), 5)), nextID: eoInitialRows + 1}
	writerStart := time.Now()
	var writerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		writerErr = w.run(ctx, eoRate, 5*time.Minute, func() bool { return w.changes >= eoMinChanges && killsDone.Load() })
	})

	// SIGKILL the route stage at random moments while it delivers, and
	// restart it at once. Each restart waits for the first delivery after
	// it before the next kill is armed.
	var kills []killRec
	for k := 0; k < eoRouteKills; k++ {
		time.Sleep(time.Duration(500+rng.IntN(3000)) * time.Millisecond)
		if route.Exited() {
			t.Fatalf("the route stage exited by itself:\n%s", eoTail(route.Output(), 30))
		}
		kr := killRec{at: time.Now()}
		kr.rss, kr.hwm = procMem(route.Pid())
		if err := route.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = route.Wait()
		time.Sleep(300 * time.Millisecond) // requests in flight end
		kr.mark = int(e.rc.Stats().Events)
		restarted := time.Now()
		route = e.start(routeCfg, "--stage", "route")
		if waitProgress(e.rc.Stats().Events, 2*time.Minute) > 0 {
			kr.resumeAfter = time.Since(restarted)
		}
		kills = append(kills, kr)
		note := ""
		if kr.resumeAfter > 30*time.Second {
			// The restarted consumers' groups wait for the killed
			// members' sessions to expire (franz-go's default, 45 s).
			note = " (the killed consumer-group members had to time out first)"
		}
		t.Logf("kill %d at +%v (route stage RSS %s, peak %s); delivery resumed %v after the restart%s",
			k+1, kr.at.Sub(testStart).Round(time.Second), mib(kr.rss), mib(kr.hwm), kr.resumeAfter.Round(100*time.Millisecond), note)
	}
	killsDone.Store(true)
	wg.Wait()
	if writerErr != nil {
		t.Fatalf("writer: %v", writerErr)
	}
	if w.changes < eoMinChanges {
		t.Fatalf("the writer made only %d changes", w.changes)
	}
	t.Logf("writer: %d changes in %d transactions in %v", w.changes, w.txns, time.Since(writerStart).Round(time.Second))

	// Capture is caught up once the slot has confirmed the WAL written so
	// far; then the source topic holds every event.
	lsn := e.currentLSN(ctx)
	for deadline := time.Now().Add(2 * time.Minute); !e.slotCaughtUp(ctx, lsn); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) || capture.Exited() {
			t.Fatalf("capture did not confirm %s within 2m:\n%s", lsn, eoTail(capture.Output(), 30))
		}
	}
	srcTopic := newEOTopic(t, e.brokers, e.name+".public.products")
	srcTopic.drain(t, 3*time.Second, 2*time.Minute)
	source := srcTopic.events
	wantIDs := check.IDs(source)
	streamed := 0
	for _, ev := range source {
		if ev.Pos != "" {
			streamed++
		}
	}
	t.Logf("source topic: %d events (%d snapshot reads, %d streamed), %d tombstones", len(source), len(source)-streamed, streamed, srcTopic.tombstones)
	if err := check.NoDuplicates(source); err != nil {
		t.Errorf("source topic: %v", err)
	}
	if int64(streamed) != w.changes {
		t.Errorf("source topic holds %d streamed changes, the writer made %d", streamed, w.changes)
	}
	if err := check.PerKeyOrder(source, check.PositionLess); err != nil {
		t.Errorf("source topic: %v", err)
	}

	// Wait until every target has caught up (bounded).
	feed := newEOTopic(t, e.brokers, e.feedTopic)
	var pgErr, myErr error
	caughtUp := time.Now()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(2 * time.Second) {
		feed.drain(t, time.Second, 30*time.Second)
		pgErr, myErr = e.diffPG(ctx), e.diffMy(ctx)
		st := e.rc.Stats()
		if pgErr == nil && myErr == nil && st.Unique >= int64(len(source)) && len(feed.distinct) >= len(source) {
			break
		}
		if route.Exited() {
			t.Fatalf("the route stage exited:\n%s", eoTail(route.Output(), 30))
		}
		if time.Now().After(deadline) {
			t.Errorf("targets did not catch up within 3m: http %d of %d events, feed %d", st.Unique, len(source), len(feed.distinct))
			break
		}
	}
	t.Logf("targets caught up %v after the source", time.Since(caughtUp).Round(time.Second))
	feed.drain(t, 3*time.Second, time.Minute)

	// SQL targets: the final state equals the source table.
	if pgErr != nil {
		t.Errorf("sql target erp_pg (PostgreSQL, keyed by sku) differs from the source: %v", pgErr)
	}
	if myErr != nil {
		t.Errorf("sql target erp_my (MariaDB, keyed by id) differs from the source: %v", myErr)
	}

	// kafka target: every source event exactly once, in per-key order.
	feedIDs := check.IDs(feed.events)
	for what, err := range map[string]error{
		"duplicates":   check.NoDuplicates(feed.events),
		"loss":         check.NoLoss(wantIDs, feedIDs),
		"extra events": check.NoExtra(wantIDs, feedIDs),
		"order":        check.PerKeyOrder(feed.events, check.PositionLess),
	} {
		if err != nil {
			t.Errorf("kafka target feed (topic %s, read_committed), %s: %v", e.feedTopic, what, err)
		}
	}
	t.Logf("kafka target: %d records in %s for %d source events", len(feed.events), e.feedTopic, len(source))

	// http target: every event, duplicates only from the batch left
	// unacknowledged by each kill.
	received := e.rc.Events()
	var recv []check.Event
	for _, re := range received {
		ev, err := check.FromReceiver(re)
		if err != nil {
			t.Fatal(err)
		}
		recv = append(recv, ev)
	}
	recvIDs := check.IDs(recv)
	for what, err := range map[string]error{
		"loss":         check.NoLoss(wantIDs, recvIDs),
		"extra events": check.NoExtra(wantIDs, recvIDs),
		"order":        check.PerKeyOrder(check.Dedup(recv), check.PositionLess),
	} {
		if err != nil {
			t.Errorf("http target hooks, %s: %v", what, err)
		}
	}
	st := e.rc.Stats()
	perKill, bad := attributeDuplicates(received, kills, eoBatchSize)
	for i, msg := range bad {
		if i == check.MaxExamples {
			t.Errorf("... and %d more unexplained redeliveries", len(bad)-i)
			break
		}
		t.Errorf("http target: %s", msg)
	}
	var perKillText []string
	for i, n := range perKill {
		perKillText = append(perKillText, strconv.Itoa(n))
		if n > eoBatchSize {
			t.Errorf("kill %d: the http target redelivered %d events, more than one batch (%d)", i+1, n, eoBatchSize)
		}
	}
	t.Logf("http target: %d events received, %d distinct, %d duplicates (per kill: %s), %d requests, %d overlapping requests for one subject",
		st.Events, st.Unique, st.Duplicates, strings.Join(perKillText, ", "), st.Requests, st.Overlaps)
	if st.Duplicates > int64(len(kills))*eoBatchSize {
		t.Errorf("http target: %d duplicates, more than %d kills × %d", st.Duplicates, len(kills), eoBatchSize)
	}

	// Nothing was dead-lettered.
	dlq := newEOTopic(t, e.brokers, e.name+"."+e.name+".dlq")
	dlq.drain(t, 2*time.Second, 30*time.Second)
	if len(dlq.events) > 0 {
		t.Errorf("%d dead letters, e.g. %s", len(dlq.events), dlq.events[0].Identity())
	}

	for _, p := range []*testharness.Proc{route, capture} {
		if err := p.Stop(); err != nil {
			t.Errorf("clean stop: %v\n%s", err, eoTail(p.Output(), 20))
		}
	}
	t.Logf("verified %d source events through 4 targets across %d route-stage kills in %v", len(source), len(kills), time.Since(testStart).Round(time.Second))
}

func TestTargetsOutageKeepsOthersFlowing(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with real PostgreSQL, MariaDB and Kafka")
	}
	t.Parallel()
	testStart := time.Now()
	my := testharness.NewMariaDB(t) // dedicated: this test stops it
	e := newEOEnv(t, my, false)
	ctx := context.Background()
	port, err := testharness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	proc := e.start(e.config("pipeline.yaml", fmt.Sprintf("metrics: { listen: \"127.0.0.1:%d\" }\n", port)))
	pid := proc.Pid()

	// Sample the process's memory throughout: RSS from /proc, and the Go
	// heap in use from the metrics endpoint (to tell the heap from the rest).
	var maxRSS, maxHeap atomic.Int64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for i := 0; ; i++ {
			if rss, _ := procMem(pid); rss > maxRSS.Load() {
				maxRSS.Store(rss)
			}
			if i%4 == 0 {
				if h := scrapeGauge(metrics, "go_memstats_heap_inuse_bytes"); h > maxHeap.Load() {
					maxHeap.Store(h)
				}
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	})
	defer func() { close(stopSampling); sampler.Wait() }()

	waitSynced := func(what string, d time.Duration, diff func(context.Context) error) time.Duration {
		t.Helper()
		start := time.Now()
		var err error
		for time.Since(start) < d {
			if err = diff(ctx); err == nil {
				return time.Since(start)
			}
			if proc.Exited() {
				t.Fatalf("plume exited:\n%s", eoTail(proc.Output(), 30))
			}
			time.Sleep(time.Second)
		}
		t.Fatalf("%s did not catch up within %v: %v\n%s", what, d, err, eoTail(proc.Output(), 20))
		return 0
	}
	waitSynced("the snapshot in erp_pg", 2*time.Minute, e.diffPG)
	waitSynced("the snapshot in erp_my", time.Minute, e.diffMy)

	// Stream changes; stop MariaDB a moment into it, for eoOutage.
	// The backlog the stopped target builds up (about 100,000 changes,
	// some 100 MB of events) is far more than the delivery layer may hold
	// for it: one batch plus the fetch buffers.
	w := &eoWriter{conn: e.pg.Connect(t, e.srcDB), rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9)), nextID: eoInitialRows + 1, bulk: true}
	var writerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		writerErr = w.run(ctx, 3000, 35*time.Second, func() bool { return false })
	})
	time.Sleep(2 * time.Second)
	if err := my.Stop(); err != nil {
		t.Fatalf("stop MariaDB: %v", err)
	}
	stopped := time.Now()
	t.Logf("MariaDB stopped at +%v", stopped.Sub(testStart).Round(time.Second))
	wg.Wait()
	if writerErr != nil {
		t.Fatalf("writer: %v", writerErr)
	}
	writerStopped := time.Since(stopped)
	t.Logf("writer: %d changes in %d transactions", w.changes, w.txns)
	want := int64(eoInitialRows) + w.changes // one event per snapshot row and per change

	// The other targets keep flowing: erp_pg and the http target catch up
	// while MariaDB is still down.
	var pgAt time.Duration
	for deadline := stopped.Add(eoOutage - 3*time.Second); ; time.Sleep(time.Second) {
		if e.diffPG(ctx) == nil && e.rc.Stats().Unique >= want {
			pgAt = time.Since(stopped)
			break
		}
		if proc.Exited() {
			t.Fatalf("plume exited:\n%s", eoTail(proc.Output(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("erp_pg and the http target did not catch up while erp_my's database was down (pg: %v; http %d of %d)\n%s",
				e.diffPG(ctx), e.rc.Stats().Unique, want, eoTail(proc.Output(), 20))
		}
	}
	if my.Running() {
		t.Fatal("MariaDB is running again too early")
	}
	t.Logf("erp_pg and hooks caught up %v into the MariaDB outage (writer stopped %v into it)", pgAt.Round(time.Second), writerStopped.Round(time.Second))

	time.Sleep(time.Until(stopped.Add(eoOutage)))
	rssDown := maxRSS.Load()
	if err := my.Start(); err != nil {
		t.Fatalf("start MariaDB: %v", err)
	}
	t.Logf("MariaDB started again after %v", time.Since(stopped).Round(time.Second))
	took := waitSynced("erp_my after its database returned", 2*time.Minute, e.diffMy)
	t.Logf("erp_my caught up %v after MariaDB returned", took.Round(time.Second))

	// Nothing lost anywhere, and no duplicate without a crash.
	if err := e.diffPG(ctx); err != nil {
		t.Errorf("erp_pg: %v", err)
	}
	src := newEOTopic(t, e.brokers, e.name+".public.products")
	src.drain(t, 3*time.Second, time.Minute)
	var recv []check.Event
	for _, re := range e.rc.Events() {
		ev, err := check.FromReceiver(re)
		if err != nil {
			t.Fatal(err)
		}
		recv = append(recv, ev)
	}
	if err := check.NoLoss(check.IDs(src.events), check.IDs(recv)); err != nil {
		t.Errorf("http target: %v", err)
	}
	if err := check.NoDuplicates(recv); err != nil {
		t.Errorf("http target, no crash: %v", err)
	}

	_, hwm := procMem(pid)
	rss := maxRSS.Load()
	t.Logf("plume memory: RSS max %s sampled (%s until MariaDB returned), peak (VmHWM) %s; Go heap in use max %s",
		mib(rss), mib(rssDown), mib(hwm), mib(maxHeap.Load()))
	if hwm > eoMaxRSS || rss > eoMaxRSS {
		t.Errorf("plume used %s of memory (peak), more than %s", mib(max(hwm, rss)), mib(eoMaxRSS))
	}
	if err := proc.Stop(); err != nil {
		t.Errorf("clean stop: %v\n%s", err, eoTail(proc.Output(), 20))
	}
	t.Logf("done in %v", time.Since(testStart).Round(time.Second))
}
