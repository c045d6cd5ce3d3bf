package postgres

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestStreamTransaction checks a transaction's changes: ops, images, Pos,
// Index, TableIndex, TxID, commit time, the checkpoint at COMMIT, truncate,
// and that uncaptured tables are not emitted.
func TestStreamTransaction(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE items (id int PRIMARY KEY, name text, n bigint);
		CREATE TABLE other (id int PRIMARY KEY, v text);
		CREATE TABLE uncaptured (id int PRIMARY KEY)`)
	src := newSource(t, testConfig(pg, db, "stream-txn", "public.items", "public.oth*"))
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)

	conn := pg.Connect(t, db)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20)`,
		`INSERT INTO other VALUES (1, 'x')`,
		`INSERT INTO uncaptured VALUES (1)`,
		`UPDATE items SET name = 'uno' WHERE id = 1`,
		`UPDATE items SET id = 3 WHERE id = 2`,
		`DELETE FROM items WHERE id = 1`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, db, `TRUNCATE items, other`)

	waitFor(t, 30*time.Second, "two transactions", func() bool { return len(rec.committed()) >= 2 })
	txns := rec.committed()
	got := txns[0].changes
	if len(got) != 7 {
		t.Fatalf("first transaction: want 7 changes, got %d:\n%s", len(got), describe(got))
	}
	type want struct {
		op     event.Op
		table  string
		tindex int64
		before string
		after  string
	}
	wants := []want{
		{event.OpCreate, "public.items", 1, `null`, `{"id":1,"name":"one","n":10}`},
		{event.OpCreate, "public.items", 2, `null`, `{"id":2,"name":"two","n":20}`},
		{event.OpCreate, "public.other", 1, `null`, `{"id":1,"v":"x"}`},
		{event.OpUpdate, "public.items", 3, `null`, `{"id":1,"name":"uno","n":10}`},
		// Key change under REPLICA IDENTITY DEFAULT (a 'K' old tuple with
		// only the key column filled): a delete of the old key, then an
		// insert of the new one, consecutive rows.
		{event.OpDelete, "public.items", 4, `{"id":2,"name":null,"n":null}`, `null`},
		{event.OpCreate, "public.items", 5, `null`, `{"id":3,"name":"two","n":20}`},
		{event.OpDelete, "public.items", 6, `{"id":1,"name":null,"n":null}`, `null`},
	}
	lsn0 := got[0].Pos
	for i, w := range wants {
		c := got[i]
		if c.Op != w.op || c.Table.QualifiedName() != w.table || c.TableIndex != w.tindex ||
			imageJSON(c.Table, c.Before) != w.before || imageJSON(c.Table, c.After) != w.after {
			t.Errorf("change %d: got %s %s tindex=%d before=%s after=%s; want %s %s tindex=%d before=%s after=%s",
				i, c.Op.Code(), c.Table.QualifiedName(), c.TableIndex, imageJSON(c.Table, c.Before), imageJSON(c.Table, c.After),
				w.op.Code(), w.table, w.tindex, w.before, w.after)
		}
		// Index counts every change pgoutput sent (the uncaptured insert
		// is not sent: it is not in the publication).
		if c.Index != int64(i) {
			t.Errorf("change %d: Index %d", i, c.Index)
		}
		if c.Pos != lsn0 || !strings.HasPrefix(c.Pos, "lsn:") {
			t.Errorf("change %d: Pos %q, want %q", i, c.Pos, lsn0)
		}
		if c.TxID != strconv.FormatInt(xid, 10) {
			t.Errorf("change %d: TxID %q, want %d", i, c.TxID, xid)
		}
		if c.Commit.Before(before.Add(-5*time.Second)) || c.Commit.After(time.Now()) {
			t.Errorf("change %d: commit time %v not near %v", i, c.Commit, before)
		}
		if c.Table.Connector != "postgresql" || c.Table.Database != db {
			t.Errorf("change %d: table %+v", i, c.Table)
		}
		if c.Subject() == "" {
			t.Errorf("change %d: no subject", i)
		}
	}
	if k := got[0].Table.Key; len(k) != 1 || k[0] != 0 {
		t.Errorf("items key %v, want [0]", k)
	}
	// SourceFields: lsn is the commit LSN (BEGIN's FinalLSN) as a number.
	commitLSN, _ := pglogrepl.ParseLSN(strings.TrimPrefix(lsn0, "lsn:"))
	if sf := got[0].SourceFields; len(sf) != 1 || sf[0].Name != "lsn" || sf[0].Value != uint64(commitLSN) {
		t.Errorf("source fields %v, want lsn=%d", sf, uint64(commitLSN))
	}
	// The checkpoint is the commit's end LSN, past the commit LSN.
	cp, err := decodeCheckpoint(txns[0].cp)
	if err != nil {
		t.Fatal(err)
	}
	if cp.lsn <= commitLSN || cp.Snap != nil || cp.Slot != src.slot {
		t.Errorf("checkpoint %s: want LSN past %s", txns[0].cp, commitLSN)
	}
	// Envelope renders.
	env := envelope(got[3])
	if !strings.Contains(env, `"op":"u"`) || !strings.Contains(env, `"txId":"`+strconv.FormatInt(xid, 10)+`"`) {
		t.Errorf("envelope %s", env)
	}

	tr := txns[1].changes
	if len(tr) != 2 || tr[0].Op != event.OpTruncate || tr[1].Op != event.OpTruncate ||
		tr[0].Table.QualifiedName() == tr[1].Table.QualifiedName() || tr[0].Index != 0 || tr[1].Index != 1 {
		t.Fatalf("truncate transaction:\n%s", describe(tr))
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestStreamImagesToastAndSchemaChanges covers REPLICA IDENTITY FULL before
// images, unchanged TOAST values, key overrides for a table without a
// primary key, and relation versions across ALTER TABLE.
func TestStreamImagesToastAndSchemaChanges(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE full_t (id int PRIMARY KEY, v text);
		ALTER TABLE full_t REPLICA IDENTITY FULL;
		CREATE TABLE toast_t (id int PRIMARY KEY, big text, n int);
		ALTER TABLE toast_t ALTER COLUMN big SET STORAGE EXTERNAL;
		CREATE TABLE nopk (a text, b int, c text);
		ALTER TABLE nopk REPLICA IDENTITY FULL;
		CREATE TABLE nopk_all (a int, b text);
		ALTER TABLE nopk_all REPLICA IDENTITY FULL;
		CREATE TABLE evolve (id int PRIMARY KEY, a int, b text)`)
	cfg := testConfig(pg, db, "stream-images", "public.*")
	cfg.Keys = map[string][]string{"public.nopk": {"b", "a"}}
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)

	big := strings.Repeat("0123456789", 1000)
	pg.Exec(t, db, `INSERT INTO full_t VALUES (1, 'a'); UPDATE full_t SET v = 'b'; DELETE FROM full_t`)
	pg.Exec(t, db, `INSERT INTO toast_t VALUES (1, $1, 1)`, big)
	pg.Exec(t, db, `UPDATE toast_t SET n = 2`)
	pg.Exec(t, db, `INSERT INTO nopk VALUES ('x', 1, 'c'); UPDATE nopk SET c = 'd'; DELETE FROM nopk`)
	pg.Exec(t, db, `INSERT INTO nopk_all VALUES (1, 'q')`)
	pg.Exec(t, db, `INSERT INTO evolve VALUES (1, 1, 'x')`)
	pg.Exec(t, db, `ALTER TABLE evolve ADD COLUMN c numeric(5,2) DEFAULT 1.5`)
	pg.Exec(t, db, `INSERT INTO evolve VALUES (2, 2, 'y')`)
	pg.Exec(t, db, `ALTER TABLE evolve DROP COLUMN a`)
	pg.Exec(t, db, `ALTER TABLE evolve ALTER COLUMN b TYPE int USING length(b)`)
	pg.Exec(t, db, `INSERT INTO evolve VALUES (3, 7, 2.25)`)

	waitFor(t, 30*time.Second, "all changes", func() bool { return len(rec.changes()) >= 12 })
	var lines []string
	tables := map[*event.Table]bool{}
	for _, c := range rec.changes() {
		lines = append(lines, fmt.Sprintf("%s %s %s %s", c.Op.Code(), c.Table.Name, imageJSON(c.Table, c.Before), imageJSON(c.Table, c.After)))
		if c.Table.Name == "evolve" {
			tables[c.Table] = true
		}
	}
	want := []string{
		`c full_t null {"id":1,"v":"a"}`,
		`u full_t {"id":1,"v":"a"} {"id":1,"v":"b"}`,
		`d full_t {"id":1,"v":"b"} null`,
		`c toast_t null {"big":"` + big + `","id":1,"n":1}`,
		`u toast_t null {"id":1,"n":2}`, // big is unchanged TOAST
		`c nopk null {"a":"x","b":1,"c":"c"}`,
		`u nopk {"a":"x","b":1,"c":"c"} {"a":"x","b":1,"c":"d"}`,
		`d nopk {"a":"x","b":1,"c":"d"} null`,
		`c nopk_all null {"a":1,"b":"q"}`,
		`c evolve null {"id":1,"a":1,"b":"x"}`,
		`c evolve null {"id":2,"a":2,"b":"y","c":"1.50"}`,
		`c evolve null {"id":3,"b":7,"c":"2.25"}`,
	}
	// imageJSON keeps column order; fix the toast line accordingly.
	want[3] = `c toast_t null {"id":1,"big":"` + big + `","n":1}`
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	all := rec.changes()
	toastUpd := all[4]
	if _, ok := toastUpd.After[1].(event.Unchanged); !ok {
		t.Errorf("TOAST column after image: %#v, want event.Unchanged{}", toastUpd.After[1])
	}
	if env := envelope(toastUpd); !strings.Contains(env, `"unchanged":["big"]`) {
		t.Errorf("envelope lacks unchanged list: %s", env)
	}
	// Keys: override (b, a) for nopk; whole row for nopk_all.
	if s := all[5].Subject(); s != "b=1,a=x" {
		t.Errorf("nopk subject %q", s)
	}
	if s := all[8].Subject(); s != "a=1,b=q" {
		t.Errorf("nopk_all subject %q", s)
	}
	if len(tables) != 3 {
		t.Errorf("evolve: %d table versions, want 3", len(tables))
	}
	last := all[len(all)-1].Table
	if last.Columns[1].Type != "integer" || last.Columns[2].Type != "numeric(5,2)" {
		t.Errorf("evolve columns %+v", last.Columns)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestResumeSkipsCommittedTransactions restarts from an older and a newer
// checkpoint: transactions up to the checkpoint are not emitted again,
// later ones are, with identical ids.
func TestResumeSkipsCommittedTransactions(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	cfg := testConfig(pg, db, "resume-skip", "public.t")
	src := newSource(t, cfg)
	rec := newRecorder(src, false) // never ack: the slot keeps everything
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	for i := 1; i <= 3; i++ {
		pg.Exec(t, db, fmt.Sprintf(`INSERT INTO t VALUES (%d, 'v%d'), (%d, 'w')`, i, i, i+100))
	}
	waitFor(t, 30*time.Second, "3 transactions", func() bool { return len(rec.committed()) >= 3 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	first := rec.committed()

	// Resume after the first transaction: 2 and 3 come again, identically.
	src2 := newSource(t, cfg)
	rec2 := newRecorder(src2, false)
	r2 := startRun(t, src2, first[0].cp, rec2)
	waitFor(t, 30*time.Second, "2 replayed transactions", func() bool { return len(rec2.committed()) >= 2 })
	time.Sleep(300 * time.Millisecond)
	again := rec2.committed()
	if len(again) != 2 {
		t.Fatalf("replayed %d transactions, want 2", len(again))
	}
	for i := range again {
		a, b := again[i].changes, first[i+1].changes
		if len(a) != len(b) {
			t.Fatalf("txn %d: %d vs %d changes", i, len(a), len(b))
		}
		for j := range a {
			if a[j].ID() != b[j].ID() || envelope(a[j]) != envelope(b[j]) {
				t.Errorf("replayed change differs:\n %s %s\n %s %s", a[j].ID(), envelope(a[j]), b[j].ID(), envelope(b[j]))
			}
		}
		if string(again[i].cp) != string(first[i+1].cp) {
			t.Errorf("checkpoint differs: %s vs %s", again[i].cp, first[i+1].cp)
		}
	}
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}

	// Resume at the last checkpoint: nothing again, a new write arrives.
	src3 := newSource(t, cfg)
	rec3 := newRecorder(src3, true)
	r3 := startRun(t, src3, first[2].cp, rec3)
	waitStreaming(t, pg, db, r3)
	pg.Exec(t, db, `INSERT INTO t VALUES (50, 'new')`)
	waitFor(t, 30*time.Second, "new transaction", func() bool { return len(rec3.committed()) >= 1 })
	time.Sleep(200 * time.Millisecond)
	got := rec3.changes()
	if len(got) != 1 || imageJSON(got[0].Table, got[0].After) != `{"id":50,"v":"new"}` {
		t.Fatalf("after resume at the end:\n%s", describe(got))
	}
	if err := r3.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestConfirmedFlushFollowsAcks: the slot's confirmed_flush_lsn moves only
// to LSNs passed to Ack, never to the server's WAL end.
func TestConfirmedFlushFollowsAcks(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY)`)
	src := newSource(t, testConfig(pg, db, "acks", "public.t"))
	rec := newRecorder(src, false)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	start := slotLSN(t, pg, db, src.slot)
	pg.Exec(t, db, `INSERT INTO t VALUES (1)`)
	pg.Exec(t, db, `INSERT INTO t VALUES (2)`)
	waitFor(t, 30*time.Second, "2 transactions", func() bool { return len(rec.committed()) >= 2 })
	// The server asks for replies and gets status updates; without acks the
	// slot must not move.
	time.Sleep(2500 * time.Millisecond)
	if got := slotLSN(t, pg, db, src.slot); got != start {
		t.Fatalf("confirmed_flush_lsn moved to %s without an ack (start %s)", got, start)
	}
	txns := rec.committed()
	src.Ack(txns[0].cp)
	want, _ := lsnOf(txns[0].cp)
	waitFor(t, 10*time.Second, "confirmed_flush_lsn = first ack", func() bool { return slotLSN(t, pg, db, src.slot) == want })
	time.Sleep(1500 * time.Millisecond)
	if got := slotLSN(t, pg, db, src.slot); got != want {
		t.Fatalf("confirmed_flush_lsn %s, want exactly the acked %s", got, want)
	}
	// SlotLag is the distance from the current WAL position.
	lag, err := src.SlotLag(context.Background())
	if err != nil || lag <= 0 {
		t.Fatalf("SlotLag = %d, %v", lag, err)
	}
	src.Ack(txns[1].cp)
	want2, _ := lsnOf(txns[1].cp)
	waitFor(t, 10*time.Second, "confirmed_flush_lsn = second ack", func() bool { return slotLSN(t, pg, db, src.slot) == want2 })
	// An ack right before stopping is confirmed on the way out.
	pg.Exec(t, db, `INSERT INTO t VALUES (3)`)
	waitFor(t, 30*time.Second, "3 transactions", func() bool { return len(rec.committed()) >= 3 })
	third := rec.committed()[2].cp
	src.Ack(third)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	want3, _ := lsnOf(third)
	waitFor(t, 10*time.Second, "confirmed_flush_lsn = ack before stop", func() bool { return slotLSN(t, pg, db, src.slot) == want3 })
}

// TestHeartbeatAdvancesSlot: with only an uncaptured table written,
// heartbeats produce empty Commits whose acks move confirmed_flush_lsn past
// that WAL.
func TestHeartbeatAdvancesSlot(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE captured (id int PRIMARY KEY); CREATE TABLE busy (id int PRIMARY KEY, pad text)`)
	cfg := testConfig(pg, db, "heartbeat", "public.captured")
	cfg.HeartbeatInterval = 200 * time.Millisecond
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	pg.Exec(t, db, `INSERT INTO busy SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g`)
	walPos, err := pglogrepl.ParseLSN(pg.QueryValue(t, db, `SELECT pg_current_wal_lsn()::text`))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "confirmed_flush_lsn past the uncaptured write", func() bool {
		return slotLSN(t, pg, db, src.slot) >= walPos
	})
	for _, tx := range rec.committed() {
		if len(tx.changes) != 0 {
			t.Fatalf("heartbeat commit with changes:\n%s", describe(tx.changes))
		}
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// countingEmitter counts rows and samples the heap while a big transaction
// streams through.
type countingEmitter struct {
	rows, commits atomic.Int64
	maxHeap       atomic.Uint64
	firstRowAt    atomic.Int64
}

func (e *countingEmitter) Emit(ctx context.Context, c *event.Change) error {
	n := e.rows.Add(1)
	if n == 1 {
		e.firstRowAt.Store(time.Now().UnixNano())
	}
	if n%20000 == 0 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > e.maxHeap.Load() {
			e.maxHeap.Store(ms.HeapAlloc)
		}
	}
	return nil
}

func (e *countingEmitter) Commit(ctx context.Context, cp []byte) error {
	e.commits.Add(1)
	return nil
}

// TestLargeTransactionBoundedMemory streams a 300,000-row transaction: rows
// are emitted as they arrive, and the heap stays far below the size of the
// transaction.
func TestLargeTransactionBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large transaction")
	}
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE big (id int PRIMARY KEY, pad text)`)
	src := newSource(t, testConfig(pg, db, "bigtxn", "public.big"))
	em := &countingEmitter{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, nil, em) }()
	waitFor(t, 60*time.Second, "slot", func() bool {
		return pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, src.slot) == "1"
	})
	const rows = 300000
	// ~60 MB of row data in one transaction.
	pg.Exec(t, db, fmt.Sprintf(`INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, %d) g`, rows))
	waitFor(t, 120*time.Second, "all rows", func() bool { return em.commits.Load() >= 1 })
	cancel()
	<-done
	if em.rows.Load() != rows {
		t.Fatalf("emitted %d rows, want %d", em.rows.Load(), rows)
	}
	if h := em.maxHeap.Load(); h > 48<<20 {
		t.Fatalf("heap reached %d MB while streaming a %d-row transaction", h>>20, rows)
	}
	t.Logf("max heap while streaming: %d MB", em.maxHeap.Load()>>20)
}
