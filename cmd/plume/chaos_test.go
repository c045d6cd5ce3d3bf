package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// The chaos test of exactly-once capture (issue: change events and
// exactly-once capture). For each source type it streams more than 100,000
// changes (inserts, updates, deletes over three tables, multi-row
// statements, large transactions) into a real Apache Kafka while `plume run
// --stage capture` is killed with SIGKILL at random moments, at least once
// during the initial snapshot. Afterwards a read_committed consumer must see:
//   - every change exactly once (no duplicate ids, no missing ones);
//   - every source transaction whole (rows per transaction id);
//   - per-key order;
//   - a replayed table state equal to the source tables.

const (
	chaosTables      = 3
	chaosInitialRows = 30000 // per table: the snapshot phase
	chaosMinChanges  = 100000
	chaosKills       = 5
)

// chaosDB is a source database under test.
type chaosDB interface {
	sourceYAML() string
	exec(sql string) (affected int64)
	// txn runs statements in one transaction and returns the transaction
	// id as Plume renders it (PostgreSQL xid, MariaDB GTID).
	txn(stmts []string) (txid string, affected int64)
	// state returns id -> v for a table.
	state(table string) map[string]string
	close()
}

func TestChaosCapturePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test")
	}
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	conn := pg.Connect(t, db)
	runChaos(t, "postgres", &pgChaos{conn: conn, dsn: pg.DSN(db)})
}

func TestChaosCaptureMariaDB(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test")
	}
	my := testharness.MariaDB(t)
	db := my.NewDatabase(t)
	runChaos(t, "mysql", newMyChaos(t, my.DSN(db), db))
}

func runChaos(t *testing.T, kind string, src chaosDB) {
	defer src.close()
	kafkaSrv := testharness.Kafka(t)
	brokers := kafkaSrv.Brokers()
	bin := testharness.BuildPlume(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	t.Logf("seed-independent run at %s", time.Now().Format(time.RFC3339))

	for i := 0; i < chaosTables; i++ {
		src.exec(fmt.Sprintf(`CREATE TABLE t%d (id bigint PRIMARY KEY, v varchar(64) NOT NULL)`, i))
		for start := 1; start <= chaosInitialRows; start += 5000 {
			src.exec(fmt.Sprintf(`INSERT INTO t%d (id, v) %s`, i, seriesSQL(kind, start, start+4999)))
		}
	}
	prefix := "chaos" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pipeline.yaml")
	cfg := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
%s  snapshot: initial
  snapshot_chunk_size: 2000
  heartbeat_interval: 1s
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
`, prefix, filepath.Join(dir, "state"), src.sourceYAML(), brokers[0], prefix)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() *testharness.Proc {
		return testharness.StartProcess(t, bin, "run", "-c", cfgPath, "--stage", "capture")
	}

	// The writer runs while plume is killed and restarted. Phase A runs
	// during the initial snapshot (its changes may be folded into snapshot
	// rows, so only the final state and uniqueness check them). Phase B
	// starts once a snapshot has completed: every one of its transactions
	// must appear in Kafka whole, and it makes at least chaosMinChanges.
	type txnRec struct {
		txid string
		rows int64
	}
	var (
		phaseB        []txnRec
		changesB      int64
		snapshotDone  atomic.Bool
		nextID        = int64(chaosInitialRows + 1)
		writerDone    = make(chan struct{})
		stopWriter    = make(chan struct{})
		writerRng     = rand.New(rand.NewPCG(rng.Uint64(), 11))
		writerStarted = time.Now()
	)
	var writerErr atomic.Value
	go func() {
		defer close(writerDone)
		defer func() {
			// A database error (or the test ending) stops the writer; the
			// test reports it instead of crashing the binary.
			if r := recover(); r != nil {
				writerErr.Store(fmt.Sprint(r))
			}
		}()
		rng := writerRng // the writer's own
		deadline := time.Now().Add(8 * time.Minute)
		for n := 0; changesB < chaosMinChanges && time.Now().Before(deadline); n++ {
			select {
			case <-stopWriter:
				return
			default:
			}
			inB := snapshotDone.Load()
			// Pace the writer (about 50 transactions/s) so phase B spans
			// the kills and phase A does not bury the snapshot.
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			var stmts []string
			tbl := fmt.Sprintf("t%d", rng.IntN(chaosTables))
			switch k := rng.IntN(10); {
			case n%400 == 399: // a large transaction
				stmts = append(stmts, fmt.Sprintf(`INSERT INTO %s (id, v) %s`, tbl, seriesSQL(kind, int(nextID), int(nextID)+4999)))
				nextID += 5000
			case k < 4: // multi-row insert
				m := 1 + rng.IntN(20)
				vals := make([]string, m)
				for j := range vals {
					vals[j] = fmt.Sprintf("(%d, 'i%d')", nextID, n)
					nextID++
				}
				stmts = append(stmts, fmt.Sprintf(`INSERT INTO %s (id, v) VALUES %s`, tbl, strings.Join(vals, ",")))
			case k < 7: // multi-row update
				lo := 1 + rng.Int64N(nextID)
				stmts = append(stmts, fmt.Sprintf(`UPDATE %s SET v = 'u%d' WHERE id BETWEEN %d AND %d`, tbl, n, lo, lo+int64(rng.IntN(40))))
			case k < 9: // multi-row delete
				lo := 1 + rng.Int64N(nextID)
				stmts = append(stmts, fmt.Sprintf(`DELETE FROM %s WHERE id BETWEEN %d AND %d`, tbl, lo, lo+int64(rng.IntN(8))))
			default: // a transaction over several tables
				for j := 0; j < chaosTables; j++ {
					stmts = append(stmts, fmt.Sprintf(`INSERT INTO t%d (id, v) VALUES (%d, 'm%d')`, j, nextID, n))
					stmts = append(stmts, fmt.Sprintf(`UPDATE t%d SET v = 'm%d' WHERE id = %d`, j, n, 1+rng.Int64N(nextID)))
				}
				nextID++
			}
			txid, affected := src.txn(stmts)
			if inB && affected > 0 {
				phaseB = append(phaseB, txnRec{txid, affected})
				changesB += affected
			}
		}
	}()

	// Kill plume at random moments: the first during the initial snapshot,
	// the others while phase B streams.
	proc := start()
	for !strings.Contains(proc.Output(), "msg=snapshot ") && !strings.Contains(proc.Output(), "snapshot starting") {
		if proc.Exited() || time.Since(writerStarted) > time.Minute {
			t.Fatalf("the snapshot did not start:\n%s", tail(proc.Output(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
	if strings.Contains(proc.Output(), "snapshot done") {
		t.Fatalf("the snapshot finished before the first kill; make it larger")
	}
	kill := func() {
		if proc.Exited() {
			t.Fatalf("plume exited by itself:\n%s", tail(proc.Output(), 30))
		}
		if err := proc.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = proc.Wait()
		proc = start()
	}
	kill()
	if !proc.WaitOutput("snapshot done", 6*time.Minute) {
		t.Fatalf("the resumed snapshot did not finish:\n%s", tail(proc.Output(), 30))
	}
	snapshotDone.Store(true)
	for k := 1; k < chaosKills; k++ {
		time.Sleep(time.Duration(2000+rng.IntN(6000)) * time.Millisecond)
		kill()
	}
	select {
	case <-writerDone:
	case <-time.After(9 * time.Minute):
		close(stopWriter)
		<-writerDone
	}
	if e, _ := writerErr.Load().(string); e != "" {
		t.Fatalf("writer stopped: %s", e)
	}
	if changesB < chaosMinChanges {
		t.Fatalf("writer made only %d changes after the snapshot", changesB)
	}
	t.Logf("writer: %d changes in %d transactions after the snapshot (%v in all)", changesB, len(phaseB), time.Since(writerStarted).Round(time.Second))

	// Wait until every change is in Kafka (the final state replays), then
	// stop plume cleanly.
	topics := make([]string, chaosTables)
	for i := range topics {
		topics[i] = fmt.Sprintf("%s.%s.t%d", prefix, topicDB(kind, src), i)
	}
	reader := newChaosReader(t, brokers, topics)
	var got *chaosRead
	deadline := time.Now().Add(5 * time.Minute)
	for {
		got = reader.poll(t)
		if caughtUp(src, got, topics) || time.Now().After(deadline) {
			break
		}
		if proc.Exited() {
			t.Fatalf("plume exited:\n%s", tail(proc.Output(), 30))
		}
		time.Sleep(2 * time.Second)
	}
	if err := proc.Stop(); err != nil {
		t.Errorf("clean stop: %v", err)
	}

	// Exactly once: no id twice, and every phase-B transaction whole, with
	// no gap in its row indexes.
	dups := 0
	for id, n := range got.ids {
		if n > 1 {
			dups++
			if dups < 10 {
				t.Errorf("change %s is in Kafka %d times", id, n)
			}
		}
	}
	var streamedB int64
	for _, tx := range phaseB {
		n := got.perTxn[tx.txid]
		streamedB += int64(n)
		if int64(n) != tx.rows {
			t.Errorf("transaction %s: %d rows in Kafka, want %d", tx.txid, n, tx.rows)
		} else if gaps := got.indexGaps(tx.txid); gaps != "" {
			t.Errorf("transaction %s: %s", tx.txid, gaps)
		}
	}
	if streamedB != changesB {
		t.Errorf("phase B: %d changes in Kafka, want %d", streamedB, changesB)
	}
	if got.reads < int64(chaosTables*chaosInitialRows) {
		t.Errorf("snapshot rows in Kafka: %d, want at least %d", got.reads, chaosTables*chaosInitialRows)
	}
	// Per-key order.
	if got.orderViolations > 0 {
		t.Errorf("per-key order violated %d times", got.orderViolations)
	}
	// The replayed state equals the source.
	for i, topic := range topics {
		want := src.state(fmt.Sprintf("t%d", i))
		have := got.state[topic]
		if diff := diffStates(want, have); diff != "" {
			t.Errorf("table t%d replayed from %s differs from the source: %s", i, topic, diff)
		}
	}
	t.Logf("verified %d changes (%d snapshot rows), %d phase-B transactions, %d kills", len(got.ids), got.reads, len(phaseB), chaosKills)
}

func topicDB(kind string, src chaosDB) string {
	if kind == "postgres" {
		return "public"
	}
	return src.(*myChaos).db
}

func seriesSQL(kind string, from, to int) string {
	if kind == "postgres" {
		return fmt.Sprintf(`SELECT g, 'v'||g FROM generate_series(%d, %d) g`, from, to)
	}
	return fmt.Sprintf(`SELECT seq, CONCAT('v', seq) FROM seq_%d_to_%d`, from, to)
}

type chaosRead struct {
	ids             map[string]int
	perTxn          map[string]int
	indexes         map[string][]int64 // txid -> row indexes seen
	reads           int64
	orderViolations int
	state           map[string]map[string]string // topic -> id -> v
}

// chaosReader consumes the topics with read_committed from the start,
// once, replaying them as it goes; poll reads until nothing more arrives.
type chaosReader struct {
	cl   *kgo.Client
	r    *chaosRead
	last map[string]string // topic/key -> last stream position seen
}

func newChaosReader(t *testing.T, brokers []string, topics []string) *chaosReader {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &chaosReader{cl: cl, last: map[string]string{}, r: &chaosRead{ids: map[string]int{}, perTxn: map[string]int{},
		indexes: map[string][]int64{}, state: map[string]map[string]string{}}}
}

func (c *chaosReader) poll(t *testing.T) *chaosRead {
	t.Helper()
	r := c.r
	deadline := time.Now().Add(3 * time.Minute)
	for empty := 0; empty < 2 && time.Now().Before(deadline); {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		fs := c.cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			empty++
			continue
		}
		empty = 0
		fs.EachRecord(func(rec *kgo.Record) {
			rx, err := event.Decode(rec)
			if err != nil {
				t.Fatalf("decode %s@%d: %v", rec.Topic, rec.Offset, err)
			}
			if rx == nil {
				return // tombstone
			}
			r.ids[rx.ID]++
			if len(r.ids)%10 == 0 {
				checkWithSDK(t, rec)
			}
			var env struct {
				Before, After map[string]any
				Op            string
			}
			if err := json.Unmarshal(rx.Data, &env); err != nil {
				t.Fatal(err)
			}
			if env.Op == "r" {
				r.reads++
			} else {
				txid := rx.Extensions["txid"]
				r.perTxn[txid]++
				pos := rx.ID
				_, idx := splitID(pos)
				r.indexes[txid] = append(r.indexes[txid], idx)
				kk := rec.Topic + "/" + string(rec.Key)
				if prev, ok := c.last[kk]; ok && !positionLess(prev, pos) {
					r.orderViolations++
				}
				c.last[kk] = pos
			}
			st := r.state[rec.Topic]
			if st == nil {
				st = map[string]string{}
				r.state[rec.Topic] = st
			}
			switch env.Op {
			case "c", "u", "r":
				st[fmt.Sprint(env.After["id"])] = fmt.Sprint(env.After["v"])
			case "d":
				delete(st, fmt.Sprint(env.Before["id"]))
			}
		})
	}
	return r
}

// indexGaps reports a transaction whose row indexes are not exactly
// 0..n-1 (a lost or repeated row).
func (r *chaosRead) indexGaps(txid string) string {
	idx := append([]int64(nil), r.indexes[txid]...)
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	for i, x := range idx {
		if x != int64(i) {
			return fmt.Sprintf("row indexes %v... are not 0..%d", head64(idx), len(idx)-1)
		}
	}
	return ""
}

func head64(s []int64) []int64 {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

// caughtUp reports whether the replayed topics equal the source tables.
func caughtUp(src chaosDB, got *chaosRead, topics []string) bool {
	for i, topic := range topics {
		if diffStates(src.state(fmt.Sprintf("t%d", i)), got.state[topic]) != "" {
			return false
		}
	}
	return true
}

// positionLess orders stream change ids: "<pos>/<index>", where pos is
// "lsn:X/Y" (PostgreSQL) or "gtid:D-S-N" (MariaDB).
func positionLess(a, b string) bool {
	pa, ia := splitID(a)
	pb, ib := splitID(b)
	if pa != pb {
		return pa < pb
	}
	return ia < ib
}

func splitID(id string) (pos uint64, idx int64) {
	i := strings.LastIndexByte(id, '/')
	idx, _ = strconv.ParseInt(id[i+1:], 10, 64)
	p := id[:i]
	switch {
	case strings.HasPrefix(p, "lsn:"):
		hi, lo, _ := strings.Cut(strings.TrimPrefix(p, "lsn:"), "/")
		h, _ := strconv.ParseUint(hi, 16, 32)
		l, _ := strconv.ParseUint(lo, 16, 32)
		pos = h<<32 | l
	case strings.HasPrefix(p, "gtid:"):
		parts := strings.Split(strings.TrimPrefix(p, "gtid:"), "-")
		pos, _ = strconv.ParseUint(parts[len(parts)-1], 10, 64)
	}
	return pos, idx
}

func diffStates(want, have map[string]string) string {
	var missing, extra, wrong []string
	for k, v := range want {
		h, ok := have[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case h != v:
			wrong = append(wrong, fmt.Sprintf("%s: %q != %q", k, h, v))
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra)+len(wrong) == 0 {
		return ""
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(wrong)
	return fmt.Sprintf("%d missing %v, %d extra %v, %d wrong %v", len(missing), head(missing), len(extra), head(extra), len(wrong), head(wrong))
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// PostgreSQL.

type pgChaos struct {
	conn *pgx.Conn
	dsn  string
}

func (p *pgChaos) sourceYAML() string {
	return fmt.Sprintf("  type: postgres\n  dsn: %q\n  tables: [\"public.t*\"]\n", p.dsn)
}

func (p *pgChaos) exec(sql string) int64 {
	tag, err := p.conn.Exec(context.Background(), sql)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", sql, err))
	}
	return tag.RowsAffected()
}

func (p *pgChaos) txn(stmts []string) (string, int64) {
	ctx := context.Background()
	tx, err := p.conn.Begin(ctx)
	if err != nil {
		panic(err)
	}
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint % 4294967296`).Scan(&xid); err != nil {
		panic(err)
	}
	var n int64
	for _, s := range stmts {
		tag, err := tx.Exec(ctx, s)
		if err != nil {
			panic(fmt.Sprintf("%s: %v", s, err))
		}
		n += tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		panic(err)
	}
	return strconv.FormatInt(xid, 10), n
}

func (p *pgChaos) state(table string) map[string]string {
	rows, err := p.conn.Query(context.Background(), `SELECT id::text, v FROM `+table)
	if err != nil {
		panic(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, v string
		if err := rows.Scan(&id, &v); err != nil {
			panic(err)
		}
		out[id] = v
	}
	return out
}

func (p *pgChaos) close() { p.conn.Close(context.Background()) }

// MariaDB. The writer uses go-sql-driver/mysql, whose affected-row count
// is the rows changed (go-mysql's client asks for CLIENT_FOUND_ROWS, which
// counts rows matched, including those an UPDATE left unchanged and that
// therefore never reach the binlog).

type myChaos struct {
	conn *sql.Conn
	db   string
	dsn  string
}

func newMyChaos(t *testing.T, dsn, db string) *myChaos {
	pool, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	conn, err := pool.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &myChaos{conn: conn, db: db, dsn: dsn}
}

func (m *myChaos) sourceYAML() string {
	return fmt.Sprintf("  type: mysql\n  dsn: %q\n  tables: [\"%s.t*\"]\n", m.dsn, m.db)
}

func (m *myChaos) exec(q string) int64 {
	res, err := m.conn.ExecContext(context.Background(), q)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", q, err))
	}
	n, _ := res.RowsAffected()
	return n
}

func (m *myChaos) txn(stmts []string) (string, int64) {
	m.exec("BEGIN")
	var n int64
	for _, s := range stmts {
		n += m.exec(s)
	}
	m.exec("COMMIT")
	var gtid string
	if err := m.conn.QueryRowContext(context.Background(), "SELECT @@last_gtid").Scan(&gtid); err != nil {
		panic(err)
	}
	return gtid, n
}

func (m *myChaos) state(table string) map[string]string {
	rows, err := m.conn.QueryContext(context.Background(), `SELECT CAST(id AS CHAR), v FROM `+table)
	if err != nil {
		panic(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, v string
		if err := rows.Scan(&id, &v); err != nil {
			panic(err)
		}
		out[id] = v
	}
	return out
}

func (m *myChaos) close() { m.conn.Close() }

// checkWithSDK parses a record with sdk-go's Kafka binding, an
// implementation Plume did not write, and validates the event.
func checkWithSDK(t *testing.T, rec *kgo.Record) {
	cm := &sarama.ConsumerMessage{Topic: rec.Topic, Key: rec.Key, Value: rec.Value}
	for _, h := range rec.Headers {
		cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value})
	}
	ev, err := binding.ToEvent(context.Background(), kafka_sarama.NewMessageFromConsumerMessage(cm))
	if err != nil {
		t.Fatalf("sdk-go cannot read %s@%d: %v", rec.Topic, rec.Offset, err)
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("sdk-go rejects %s@%d: %v", rec.Topic, rec.Offset, err)
	}
}
