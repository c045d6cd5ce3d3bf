package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// A MariaDB capture killed before its first data commit must restart from
// the position its first start chose, not as a first start again.
//
// What happened (TestLakeFromMariaDB, real Apache Kafka): the first start
// picked its binlog position P0 and scheduled the snapshot, but the Kafka
// transaction carrying that checkpoint also carried the first changes, and
// their topic had just been created. Kafka answered the first produce to it
// with NOT_LEADER_FOR_PARTITION; franz-go retries only after its next
// metadata refresh, which MetadataMinAge (5s) holds back, so for about 5s
// nothing committed - not even P0. A SIGKILL in that window made the next
// start a first start: a second snapshot with the changes in between folded
// into it (snapshot: initial), or those changes lost (snapshot: never).
//
// The test reproduces the window deterministically: kfake answers every
// produce to the data topic with NOT_LEADER_FOR_PARTITION until plume has
// been killed (2s after its first start), while a writer runs single-row
// INSERT/UPDATE/DELETE statements from before plume starts. Afterwards the
// restart must have found the checkpoint, every statement after P0 must be
// in Kafka exactly once as a change event (matched by GTID), the snapshot
// must have been taken once, and replaying the topic must give the table.
func TestCaptureKilledBeforeFirstDataCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, snapshot := range []string{"initial", "never"} {
		t.Run("snapshot="+snapshot, func(t *testing.T) { runKilledBeforeFirstCommit(t, snapshot) })
	}
}

const (
	fcRows       = 300
	fcWriteTime  = 8 * time.Second
	fcMaxWrites  = 1200
	fcWriteSleep = 8 * time.Millisecond
)

// fcStmt is one writer statement that changed exactly one row.
type fcStmt struct {
	gtid string // MariaDB GTID "D-S-N"
	op   string // c, u, d
	id   int64
}

func runKilledBeforeFirstCommit(t *testing.T, snapshot string) {
	my := testharness.MariaDB(t)
	db := my.NewDatabase(t)
	bin := testharness.BuildPlume(t)
	my.Exec(t, db, `CREATE TABLE items (id bigint PRIMARY KEY, v varchar(64) NOT NULL)`)
	my.Exec(t, db, fmt.Sprintf(`INSERT INTO items SELECT seq, CONCAT('v', seq) FROM seq_1_to_%d`, fcRows))
	pool, err := sql.Open("mysql", my.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })

	kc := testharness.Kfake(t, kfake.NumBrokers(1))
	brokers := testharness.KfakeBrokers(kc)
	name := testharness.UniqueName(t)
	dataTopic := name + "." + db + ".items"
	// The state right after a topic is created on a real broker: produce
	// answers NOT_LEADER_FOR_PARTITION. Only the data topic: the checkpoint
	// topic works (as it does for the fence record on a real broker).
	stall := kc.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: dataTopic, Err: kerr.NotLeaderForPartition, Count: -1})
	defer stall.Remove()

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pipeline.yaml")
	cfg := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
  type: mysql
  dsn: %q
  tables: ["%s.items"]
  snapshot: %s
  heartbeat_interval: 1s
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
  topics: { partitions: 2 }
`, name, filepath.Join(dir, "state"), my.DSN(db), db, snapshot, brokers[0], name)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	// The writer: single-row statements from before plume starts, each
	// recorded with its GTID when it changed a row.
	var (
		mu    sync.Mutex
		stmts []fcStmt
	)
	writerErr := make(chan error, 1)
	go func() {
		writerErr <- func() error {
			conn, err := pool.Conn(context.Background())
			if err != nil {
				return err
			}
			defer conn.Close()
			rng := rand.New(rand.NewPCG(3, 5))
			live := make([]int64, 0, fcRows+fcMaxWrites)
			for i := int64(1); i <= fcRows; i++ {
				live = append(live, i)
			}
			next := int64(fcRows + 1)
			deadline := time.Now().Add(fcWriteTime)
			for n := 0; n < fcMaxWrites && time.Now().Before(deadline); n++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var s fcStmt
				var res sql.Result
				switch k := rng.IntN(10); {
				case k < 4 || len(live) < 10:
					s = fcStmt{op: "c", id: next}
					next++
					live = append(live, s.id)
					res, err = conn.ExecContext(ctx, `INSERT INTO items VALUES (?, ?)`, s.id, fmt.Sprint("c", n))
				case k < 8:
					s = fcStmt{op: "u", id: live[rng.IntN(len(live))]}
					res, err = conn.ExecContext(ctx, `UPDATE items SET v = ? WHERE id = ?`, fmt.Sprint("u", n), s.id)
				default:
					i := rng.IntN(len(live))
					s = fcStmt{op: "d", id: live[i]}
					live = append(live[:i], live[i+1:]...)
					res, err = conn.ExecContext(ctx, `DELETE FROM items WHERE id = ?`, s.id)
				}
				if err == nil {
					var a int64
					if a, err = res.RowsAffected(); err == nil && a != 1 {
						err = fmt.Errorf("statement %d (%s id %d) changed %d rows", n, s.op, s.id, a)
					}
				}
				if err == nil {
					err = conn.QueryRowContext(ctx, `SELECT @@last_gtid`).Scan(&s.gtid)
				}
				cancel()
				if err != nil {
					return err
				}
				mu.Lock()
				stmts = append(stmts, s)
				mu.Unlock()
				time.Sleep(fcWriteSleep)
			}
			return nil
		}()
	}()
	time.Sleep(200 * time.Millisecond) // the writer runs before plume starts

	proc := testharness.StartProcess(t, bin, "run", "-c", cfgPath, "--stage", "capture")
	if !proc.WaitOutput("mysql: first start", 60*time.Second) {
		t.Fatalf("plume did not start:\n%s", tail(proc.Output(), 30))
	}
	p0 := gtidSeq(t, regexp.MustCompile(`msg="mysql: first start".* gtid=(\S+)`).FindStringSubmatch(proc.Output()))
	// Within the window in which the data topic refuses writes.
	time.Sleep(2 * time.Second)
	if err := proc.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := proc.Output()
	if stall.Hits() == 0 {
		t.Fatalf("plume never produced to %s before the kill; the test did not reach the window it tests:\n%s", dataTopic, tail(killed, 30))
	}
	stall.Remove()

	proc = testharness.StartProcess(t, bin, "run", "-c", cfgPath, "--stage", "capture")
	if !proc.WaitOutput("capture position resolved", 60*time.Second) {
		t.Fatalf("plume did not restart:\n%s", tail(proc.Output(), 30))
	}
	if out := proc.Output(); !strings.Contains(out, "has_checkpoint=true") {
		t.Errorf("the restart found no committed checkpoint: the first start's position (GTID seq %d) was not durable when plume was killed 2s later.\nkilled run:\n%s\nrestart:\n%s",
			p0, tail(killed, 15), tail(out, 10))
	}
	if err := <-writerErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	mu.Lock()
	all := append([]fcStmt(nil), stmts...)
	mu.Unlock()
	want := map[string]fcStmt{} // GTID -> statement, those after P0
	for _, s := range all {
		if gtidSeq(t, []string{"", s.gtid}) > p0 {
			want[s.gtid] = s
		}
	}
	// The replay must equal the table; without a snapshot, only for the
	// keys changed after P0 (the others never reach Kafka).
	table := fcTable(t, pool)
	if snapshot == "never" {
		changed := map[int64]bool{}
		for _, s := range want {
			changed[s.id] = true
		}
		for k := range table {
			if !changed[k] {
				delete(table, k)
			}
		}
	}

	// Read the data topic until the replayed state equals the table.
	rd, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(dataTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	r := &fcRead{ids: map[string]int{}, txns: map[string][]string{}, reads: map[int64]int{}, snaps: map[string]bool{}, state: map[int64]string{}}
	// Until the replay equals the table, or nothing new arrived for 10s (a
	// lost change never arrives), at most 90s.
	deadline := time.Now().Add(90 * time.Second)
	for lastNew := time.Now(); !r.equal(table); {
		if time.Now().After(deadline) || time.Since(lastNew) > 10*time.Second {
			t.Errorf("the replayed topic differs from the table: %d keys replayed, %d in the table", len(r.state), len(table))
			break
		}
		if proc.Exited() {
			t.Fatalf("plume exited:\n%s", tail(proc.Output(), 30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := rd.PollFetches(ctx)
		cancel()
		if fs.NumRecords() > 0 {
			lastNew = time.Now()
		}
		fs.EachRecord(func(rec *kgo.Record) { r.add(t, rec) })
	}
	if err := proc.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}

	// Every change after P0 once, as a change event; none before P0.
	var missing, wrongOp []string
	for g, s := range want {
		ops := r.txns[g]
		switch {
		case len(ops) == 0:
			missing = append(missing, g)
		case len(ops) != 1 || ops[0] != fmt.Sprintf("%s/%d", s.op, s.id):
			wrongOp = append(wrongOp, fmt.Sprintf("%s: %v, want %s id %d", g, ops, s.op, s.id))
		}
	}
	var extra []string
	for g := range r.txns {
		if _, ok := want[g]; !ok {
			extra = append(extra, g)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("%d of %d statements after the first start's position are missing from Kafka (e.g. %v)", len(missing), len(want), head(missing))
	}
	if len(wrongOp) > 0 {
		t.Errorf("%d statements appear other than once with their row: %v", len(wrongOp), head(wrongOp))
	}
	if len(extra) > 0 {
		t.Errorf("%d transactions in Kafka that are not writer statements after the first start (e.g. %v)", len(extra), head(extra))
	}
	for id, n := range r.ids {
		if n != 1 {
			t.Errorf("event %s appears %d times", id, n)
		}
	}
	// The snapshot: once, one read per key.
	switch {
	case snapshot == "never" && len(r.reads) > 0:
		t.Errorf("snapshot: never, but %d snapshot rows", len(r.reads))
	case snapshot == "initial" && len(r.snaps) != 1:
		t.Errorf("want one snapshot, Kafka holds rows of %d: %v", len(r.snaps), r.snaps)
	}
	for id, n := range r.reads {
		if n != 1 {
			t.Errorf("key id=%d read %d times by snapshots", id, n)
		}
	}
	t.Logf("%d statements (%d after the first start), %d change events, %d snapshot rows, %d stall hits",
		len(all), len(want), len(r.txns), len(r.reads), stall.Hits())
}

// fcRead replays the data topic.
type fcRead struct {
	ids   map[string]int      // event id -> count
	txns  map[string][]string // txid -> "op/id" of its change events
	reads map[int64]int       // key -> snapshot rows
	snaps map[string]bool     // snapshot ids seen
	state map[int64]string
}

func (r *fcRead) add(t *testing.T, rec *kgo.Record) {
	rx, err := event.Decode(rec)
	if err != nil {
		t.Fatalf("decode %s@%d: %v", rec.Topic, rec.Offset, err)
	}
	if rx == nil {
		return // a tombstone
	}
	r.ids[rx.ID]++
	var env struct {
		Before, After map[string]any
		Op            string
	}
	if err := json.Unmarshal(rx.Data, &env); err != nil {
		t.Fatal(err)
	}
	img := env.After
	if env.Op == "d" {
		img = env.Before
	}
	id, err := strconv.ParseInt(fmt.Sprint(img["id"]), 10, 64)
	if err != nil {
		t.Fatalf("event %s: id %v", rx.ID, img["id"])
	}
	switch env.Op {
	case "r":
		r.reads[id]++
		r.snaps[strings.SplitN(rx.ID, "/", 2)[0]] = true
	default:
		txid := rx.Extensions["txid"]
		r.txns[txid] = append(r.txns[txid], fmt.Sprintf("%s/%d", env.Op, id))
	}
	if env.Op == "d" {
		delete(r.state, id)
	} else {
		r.state[id] = fmt.Sprint(env.After["v"])
	}
}

func (r *fcRead) equal(table map[int64]string) bool {
	if len(r.state) != len(table) {
		return false
	}
	for k, v := range table {
		if r.state[k] != v {
			return false
		}
	}
	return true
}

func fcTable(t *testing.T, pool *sql.DB) map[int64]string {
	rows, err := pool.Query(`SELECT id, v FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// gtidSeq returns the sequence number of the GTID in m[1] ("D-S-N").
func gtidSeq(t *testing.T, m []string) int64 {
	t.Helper()
	if len(m) < 2 {
		t.Fatalf("no GTID found")
	}
	parts := strings.Split(m[1], "-")
	n, err := strconv.ParseInt(parts[len(parts)-1], 10, 64)
	if err != nil || len(parts) != 3 {
		t.Fatalf("GTID %q: %v", m[1], err)
	}
	return n
}
