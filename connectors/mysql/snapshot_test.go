package mysql

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// replayer applies changes in order and checks, at every event, that the
// event agrees with the state the events before it describe: an update's or
// delete's before image equals the replayed row (when the row is known), an
// insert's key is absent, and a snapshot read equals the replayed row (when
// known). This is the snapshot invariant checked at every step.
type replayer struct {
	state map[string]map[string]string // subject -> row image
	ids   map[string]bool
	errs  []string
}

func newReplayer() *replayer {
	return &replayer{state: map[string]map[string]string{}, ids: map[string]bool{}}
}

func (p *replayer) apply(c rec) {
	if p.ids[c.ID] {
		p.errs = append(p.errs, "duplicate id "+c.ID)
	}
	p.ids[c.ID] = true
	cur, known := p.state[c.Subject]
	switch c.Op {
	case "read":
		if known && flat(cur) != flat(c.After) {
			p.errs = append(p.errs, fmt.Sprintf("read %s = %s, but the stream had %s", c.Subject, flat(c.After), flat(cur)))
		}
		p.state[c.Subject] = c.After
	case "insert":
		if known {
			p.errs = append(p.errs, fmt.Sprintf("insert %s, but the row exists: %s", c.Subject, flat(cur)))
		}
		p.state[c.Subject] = c.After
	case "update":
		bs := subjectOfImage(c.Before)
		if prev, ok := p.state[bs]; ok && flat(prev) != flat(c.Before) {
			p.errs = append(p.errs, fmt.Sprintf("update %s: before %s, replayed %s", bs, flat(c.Before), flat(prev)))
		}
		delete(p.state, bs)
		p.state[c.Subject] = c.After
	case "delete":
		if known && flat(cur) != flat(c.Before) {
			p.errs = append(p.errs, fmt.Sprintf("delete %s: before %s, replayed %s", c.Subject, flat(c.Before), flat(cur)))
		}
		delete(p.state, c.Subject)
	}
}

// subjectOfImage renders "id=N" for the single-column key tables of these tests.
func subjectOfImage(img map[string]string) string { return "id=" + img["id"] }

// tableState reads the table as JSON images keyed by subject, through the
// same conversion a snapshot uses.
func tableState(t *testing.T, s *Source, table string) map[string]map[string]string {
	t.Helper()
	ctx := context.Background()
	c, err := s.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := newSchemaCache(s.filter, s.cfg.Keys, defaultCollations, s.log)
	info, err := sc.loadTable(ctx, c, table)
	if err != nil {
		t.Fatal(err)
	}
	rows := selectRows(t, c, info)
	out := map[string]map[string]string{}
	for _, row := range rows {
		out[keySubject(info.table, row)] = imageJSON(info.table, row)
	}
	return out
}

// selectRows reads a whole table with a snapshot chunk's query and
// conversion.
func selectRows(t *testing.T, c *conn, info *tableInfo) [][]event.Value {
	t.Helper()
	q, args := chunkQuery(info, &chunk{info: info})
	var rows [][]event.Value
	err := c.stream(t.Context(), q, args, func(fvs []gomysql.FieldValue) error {
		// Through the snapshot's row buffer encoding, as emitted rows are.
		dec := make([]gomysql.FieldValue, len(fvs))
		if rest, err := decodeRow(appendRow(nil, fvs), dec); err != nil || len(rest) != 0 {
			return fmt.Errorf("row buffer round trip: %v (%d bytes left)", err, len(rest))
		}
		vals, err := info.rowValues(dec)
		rows = append(rows, vals)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func sameState(a, b map[string]map[string]string) (bool, string) {
	if len(a) != len(b) {
		return false, fmt.Sprintf("%d rows vs %d", len(a), len(b))
	}
	for k, v := range a {
		if flat(b[k]) != flat(v) {
			return false, fmt.Sprintf("row %s: %s vs %s", k, flat(v), flat(b[k]))
		}
	}
	return true, ""
}

// churn updates, deletes and inserts random rows of table s(id, v, n) until
// stopped, with bounded count and time.
func churn(t *testing.T, m *testharness.MySQL, db string, maxID int, seed int64, pause time.Duration) (stop func() int) {
	var wg sync.WaitGroup
	var n atomic.Int64
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := m.Connect(t, db)
		rng := rand.New(rand.NewSource(seed))
		deadline := time.Now().Add(60 * time.Second)
		next := maxID + 1
		for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
			select {
			case <-done:
				return
			default:
			}
			id := 1 + rng.Intn(next)
			var q string
			switch rng.Intn(4) {
			case 0, 1:
				q = fmt.Sprintf("UPDATE s SET v = CONCAT('u', %d), n = n + 1 WHERE id = %d", i, id)
			case 2:
				q = fmt.Sprintf("DELETE FROM s WHERE id = %d", id)
			case 3:
				q = fmt.Sprintf("INSERT INTO s (id, v, n) VALUES (%d, 'new', 0) ON DUPLICATE KEY UPDATE n = n + 100", next)
				next++
			}
			if _, err := c.Execute(q); err != nil {
				t.Errorf("churn: %v", err)
				return
			}
			n.Add(1)
			time.Sleep(pause)
		}
	}()
	return func() int { close(done); wg.Wait(); return int(n.Load()) }
}

func fillTable(t *testing.T, m *testharness.MySQL, db string, rows int) {
	m.Exec(t, db, "CREATE TABLE s (id int primary key, v varchar(40), n int)")
	m.Exec(t, db, fmt.Sprintf("INSERT INTO s SELECT seq, CONCAT('v', seq), 0 FROM seq_1_to_%d", rows))
}

// runSnapshotUnderWrites snapshots a table while it is written to. With
// slowReads each chunk's read waits a little after its snapshot opened, so
// the stream sees changes to the chunk's rows before the chunk is emitted,
// and must drop those rows from it (superseded).
func runSnapshotUnderWrites(t *testing.T, mode string, slowReads bool) {
	const rows = 3000
	if slowReads {
		testHookSnapshotOpened = func() { time.Sleep(20 * time.Millisecond) }
		t.Cleanup(func() { testHookSnapshotOpened = nil })
	}
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	fillTable(t, m, db, rows)
	cfg := testConfig(t, m, db)
	cfg.Snapshot = true
	cfg.SnapshotMode = mode
	cfg.SnapshotChunkSize = 100
	cfg.SnapshotWorkers = 2
	src := newTestSource(t, cfg)
	em := &recEmitter{}
	stopChurn := churn(t, m, db, rows, 7, 0)
	r := startRun(t, src, nil, em)
	snapshotDone := func() bool {
		cp := em.lastCP()
		c, err := decodeCheckpoint(cp)
		return err == nil && c != nil && c.Snapshot == nil && countOps(em.changes(), true) > 0
	}
	waitFor(t, r, 60*time.Second, "snapshot to finish", snapshotDone)
	time.Sleep(300 * time.Millisecond) // some writes after the snapshot
	writes := stopChurn()
	want := tableState(t, src, db+".s")
	var p *replayer
	waitFor(t, r, 30*time.Second, "replayed state to equal the table", func() bool {
		p = newReplayer()
		for _, c := range em.changes() {
			p.apply(c)
		}
		ok, _ := sameState(p.state, want)
		return ok
	})
	for i, e := range p.errs {
		if i > 10 {
			break
		}
		t.Error(e)
	}
	reads := countOps(em.changes(), true)
	// Chunks are emitted in parts (source transactions) of at most
	// partRows rows.
	parts, most := 0, 0
	for _, tx := range em.committed {
		if len(tx.Changes) > 0 && tx.Changes[0].Snapshot {
			parts++
			most = max(most, len(tx.Changes))
		}
	}
	sup, chunks := int64(-1), 0
	if st := src.lastSnapshot.Load(); st != nil {
		sup, chunks = st.Superseded, int(st.Chunks)
	}
	t.Logf("mode %s: %d rows, %d concurrent writes, %d snapshot reads in %d chunks, %d parts of at most %d rows (%d rows superseded by the stream), %d stream changes",
		mode, rows, writes, reads, chunks, parts, most, sup, len(em.changes())-reads)
	if reads < rows/2 {
		t.Errorf("only %d snapshot reads", reads)
	}
	if slowReads && sup < 1 {
		t.Errorf("no row superseded by the stream")
	}
	if limit := int(partRows(cfg.SnapshotChunkSize)); most > limit || parts <= chunks {
		t.Errorf("%d chunks in %d parts of at most %d rows, want more parts than chunks, each of at most %d rows", chunks, parts, most, limit)
	}
	// Progress reports (metrics): planned from the table statistics, one
	// report per chunk, the last one saying done.
	em.mu.Lock()
	defer em.mu.Unlock()
	if p := em.progress[db+".s"]; p == nil || p[0] < 1 || p[1] < chunks || p[2] != 1 {
		t.Errorf("progress reports of %s.s: %v (planned chunks, chunk reports, last), want [>0 >=%d 1]", db, p, chunks)
	}
}

func TestSnapshotWatermarkUnderConcurrentWrites(t *testing.T) {
	runSnapshotUnderWrites(t, SnapshotWatermark, false)
}

func TestSnapshotWatermarkSupersededRows(t *testing.T) {
	runSnapshotUnderWrites(t, SnapshotWatermark, true)
}

func TestSnapshotLockModeUnderConcurrentWrites(t *testing.T) {
	runSnapshotUnderWrites(t, SnapshotLock, false)
}
