package postgres

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestSnapshotChunks snapshots int, text, uuid, composite-keyed and keyless
// tables in several chunks with several workers, then streams from the
// slot's consistent point.
func TestSnapshotChunks(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE ints (id bigint PRIMARY KEY, v text);
		INSERT INTO ints SELECT g, 'v' || g FROM generate_series(1, 1050) g;
		CREATE TABLE texts (k varchar(20) PRIMARY KEY, n int);
		INSERT INTO texts SELECT chr(65 + g % 26) || g || CASE WHEN g % 7 = 0 THEN 'é' ELSE 'z' END, g FROM generate_series(1, 700) g;
		CREATE TABLE uuids (u uuid PRIMARY KEY);
		INSERT INTO uuids SELECT md5(g::text)::uuid FROM generate_series(1, 300) g;
		CREATE TABLE comp (a int, b text, c int, PRIMARY KEY (a, b));
		INSERT INTO comp SELECT g % 10, 'b' || g, g FROM generate_series(1, 500) g;
		CREATE TABLE keyless (x int, y text);
		ALTER TABLE keyless REPLICA IDENTITY FULL;
		INSERT INTO keyless SELECT g, 'y' FROM generate_series(1, 250) g;
		CREATE TABLE empty_t (id int PRIMARY KEY)`)
	cfg := testConfig(pg, db, "snap-chunks", "public.*")
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 100
	cfg.SnapshotWorkers = 3
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	start := time.Now()
	r := startRun(t, src, nil, rec)
	want := 1050 + 700 + 300 + 500 + 250
	waitFor(t, 60*time.Second, "snapshot", func() bool { return len(rec.changes()) >= want })
	waitStreaming(t, pg, db, r)
	pg.Exec(t, db, `INSERT INTO ints VALUES (5000, 'after')`)
	waitFor(t, 30*time.Second, "streamed insert", func() bool { return len(rec.changes()) >= want+1 })

	txns := rec.committed()
	var snapRows []*event.Change
	ids := map[string]bool{}
	chunkCommits := 0
	var p1 string
	for i, tx := range txns {
		cp, err := decodeCheckpoint(tx.cp)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// The plan commit: no rows, every chunk unread.
			if len(tx.changes) != 0 || cp.Snap == nil || cp.Snap.Done {
				t.Fatalf("first commit is not the plan: %s", tx.cp)
			}
			p1 = cp.Snap.ID
			if cp.LSN != p1 {
				t.Errorf("snapshot checkpoint LSN %s, stream start %s", cp.LSN, p1)
			}
			ints := cp.Snap.table("public.ints")
			if ints == nil || len(ints.Bounds) != 10 || len(ints.Read) != 11 || ints.Kinds[0] != kindInt {
				t.Errorf("ints plan: %+v", ints)
			}
			if kl := cp.Snap.table("public.keyless"); kl == nil || len(kl.Key) != 0 || len(kl.Read) != 1 {
				t.Errorf("keyless plan: %+v", kl)
			}
			if c := cp.Snap.table("public.comp"); c == nil || strings.Join(c.Kinds, ",") != "int,text" || len(c.Bounds) != 5 {
				t.Errorf("comp plan: %+v", c)
			}
			continue
		}
		for _, c := range tx.changes {
			if c.Snapshot {
				snapRows = append(snapRows, c)
				if ids[c.ID()] {
					t.Errorf("duplicate id %s", c.ID())
				}
				ids[c.ID()] = true
			}
		}
		if len(tx.changes) > 0 && tx.changes[0].Snapshot {
			chunkCommits++
			if cp.Snap == nil || cp.LSN != p1 {
				t.Errorf("chunk commit checkpoint %s", tx.cp)
			}
			// Rows of one commit are one chunk of one table.
			for _, c := range tx.changes {
				if c.Table != tx.changes[0].Table {
					t.Fatalf("commit mixes tables")
				}
			}
		}
	}
	if len(snapRows) != want {
		t.Fatalf("%d snapshot rows, want %d", len(snapRows), want)
	}
	// 11 + 8 (700 texts) + 3 (300 uuids: bounds 100,200,300 -> 4) ... count
	// from the plan instead of by hand.
	plan, _ := decodeCheckpoint(txns[0].cp)
	chunks := 0
	for _, tb := range plan.Snap.Tables {
		chunks += len(tb.Read)
	}
	nonEmpty := 0
	for _, tx := range txns {
		if len(tx.changes) > 0 && tx.changes[0].Snapshot {
			nonEmpty++
		}
	}
	// Every chunk has its own Commits (empty chunks commit no rows): one
	// per part of at most partRows rows (the keys here are unique). A
	// part's Commit splits its chunk at the part's last key (more bounds than
	// the plan); the chunk's last Commit merges the parts back.
	progress, split, most := 0, false, 0
	planBounds := map[string]int{}
	for _, tb := range plan.Snap.Tables {
		planBounds[tb.Table] = len(tb.Bounds)
	}
	var lastSnap *snapState
	for _, tx := range txns[1:] {
		cp, _ := decodeCheckpoint(tx.cp)
		if cp.Snap == nil {
			continue
		}
		progress++
		lastSnap = cp.Snap
		if len(tx.changes) > 0 && tx.changes[0].Snapshot && tx.changes[0].Table.Name != "keyless" { // keyless: one chunk, one part
			most = max(most, len(tx.changes))
		}
		for _, tb := range cp.Snap.Tables {
			split = split || len(tb.Bounds) > planBounds[tb.Table]
		}
	}
	if progress <= chunks+1 || !split || most > partRows(cfg.SnapshotChunkSize) {
		t.Errorf("%d snapshot progress commits of at most %d rows for %d chunks (split: %v), want more commits than chunks + 1, chunks split, at most %d rows each",
			progress, most, chunks, split, partRows(cfg.SnapshotChunkSize))
	}
	for _, tb := range lastSnap.Tables {
		if len(tb.Bounds) != planBounds[tb.Table] {
			t.Errorf("%s: %d bounds after the snapshot, the plan has %d (parts not merged back)", tb.Table, len(tb.Bounds), planBounds[tb.Table])
		}
		for i, r := range tb.Read {
			if r != 1 {
				t.Errorf("%s chunk %d: read mark %d after the snapshot, want 1", tb.Table, i, r)
			}
		}
	}
	// Progress reports (metrics): each table planned with all its chunks
	// unread, then one report per chunk, the last one saying done.
	rec.mu.Lock()
	for _, tb := range plan.Snap.Tables {
		p := rec.progress[tb.Table]
		if p == nil || p[0] != 0 || p[1] != len(tb.Read) || p[2] != len(tb.Read) || p[3] != 1 {
			t.Errorf("progress reports of %s: %v (plan done, total, chunks, last), want [0 %d %d 1]", tb.Table, p, len(tb.Read), len(tb.Read))
		}
	}
	rec.mu.Unlock()
	for _, c := range snapRows {
		if c.Op != event.OpRead || c.Pos != "snapshot:"+p1 || c.TxID != "" || c.Commit.Before(start.Add(-time.Second)) || c.Commit.After(time.Now()) {
			t.Fatalf("snapshot row %s: op %c pos %s commit %v", c.ID(), c.Op, c.Pos, c.Commit)
		}
		if c.Commit != snapRows[0].Commit {
			t.Fatalf("snapshot rows have different commit times")
		}
	}
	last := txns[len(txns)-1]
	if len(last.changes) != 1 || last.changes[0].Op != event.OpCreate || last.changes[0].Snapshot {
		t.Fatalf("streamed change:\n%s", describe(last.changes))
	}
	if cp, _ := decodeCheckpoint(last.cp); cp.Snap != nil {
		t.Errorf("checkpoint after the snapshot still carries it: %s", last.cp)
	}
	// Replayed state equals the tables.
	st := replayState{}
	for _, c := range rec.changes() {
		st.apply(t, toReplay(c))
	}
	compareState(t, st, dbState(t, pg, db, map[string][]string{"public.ints": {"id"}, "public.comp": {"a", "b"}}))
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotConcurrentWrites runs a multi-chunk, multi-worker snapshot
// while a writer inserts, updates (also keys) and deletes: the state
// replayed from the events equals the tables afterwards.
func TestSnapshotConcurrentWrites(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	createSnapshotTables(t, pg, db)
	cfg := testConfig(pg, db, "snap-concurrent", "public.ints", "public.texts", "public.marker")
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 200
	cfg.SnapshotWorkers = 3
	src := newSource(t, cfg)
	src.chunkHook = func() { time.Sleep(15 * time.Millisecond) }
	rec := newRecorder(src, true)
	w := startWriter(t, pg, db, 4000, 1)
	time.Sleep(100 * time.Millisecond)
	r := startRun(t, src, nil, rec)
	waitFor(t, 60*time.Second, "snapshot done", func() bool {
		cp, _ := decodeCheckpoint(rec.lastCP())
		return cp != nil && (cp.Snap == nil || cp.Snap.Done)
	})
	time.Sleep(300 * time.Millisecond) // some writes after the snapshot too
	w.finish(t)
	pg.Exec(t, db, `INSERT INTO marker VALUES (1)`)
	waitFor(t, 60*time.Second, "marker", func() bool {
		for _, c := range rec.changes() {
			if c.Table.Name == "marker" {
				return true
			}
		}
		return false
	})
	t.Logf("writer ran %d ops", w.ops)
	st := replayState{}
	var evs []replayEvent
	for _, c := range rec.changes() {
		e := toReplay(c)
		evs = append(evs, e)
		st.apply(t, e)
	}
	checkUniqueIDs(t, evs)
	compareState(t, st, dbState(t, pg, db, snapshotTables))
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotResumeAfterKill SIGKILLs the source (a child process) in the
// middle of a snapshot while a writer runs, writes more while it is down,
// and restarts it from the last committed checkpoint: the remaining chunks
// are read in a fresh snapshot, the stream catches up from the first
// snapshot's point with the catch-up rule, and the replayed state equals
// the tables with no event id twice.
func TestSnapshotResumeAfterKill(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	createSnapshotTables(t, pg, db)
	out := filepath.Join(t.TempDir(), "events.jsonl")
	cfg := testConfig(pg, db, "snap-kill", "public.ints", "public.texts", "public.marker")
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 100
	cfg.SnapshotWorkers = 2
	spec, _ := json.Marshal(helperConfig{Config: cfg, Out: out, Delay: 25 * time.Millisecond})
	child := func() *testharness.Proc {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
		return testharness.StartCommand(t, cmd)
	}

	// midChunk: the last committed line is a part of a chunk with more parts
	// to come, so a kill now leaves that chunk split at the part's last key
	// in the checkpoint (more bounds than the plan, the first line's), and
	// the resumed run must continue from inside it.
	midChunk := func(lines []fileLine) bool {
		if len(lines) < 2 {
			return false
		}
		plan, err1 := decodeCheckpoint(lines[0].CP)
		last, err2 := decodeCheckpoint(lines[len(lines)-1].CP)
		if err1 != nil || err2 != nil || plan.Snap == nil || last.Snap == nil {
			return false
		}
		for _, tb := range last.Snap.Tables {
			if p := plan.Snap.table(tb.Table); p != nil && len(tb.Bounds) > len(p.Bounds) {
				return true
			}
		}
		return false
	}

	w := startWriter(t, pg, db, 6000, 2)
	p := child()
	// The child sleeps 25 ms after every snapshot commit, so the last line
	// seen here is still the last one when the kill lands.
	waitFor(t, 60*time.Second, "15 committed chunks, the last one a part of a split chunk", func() bool {
		if p.Exited() {
			t.Fatalf("child exited: %s", p.Output())
		}
		lines, _ := readFileLines(out)
		return len(lines) >= 16 && midChunk(lines)
	})
	p.Kill()
	linesAtKill, _ := readFileLines(out)
	cpKill, err := decodeCheckpoint(linesAtKill[len(linesAtKill)-1].CP)
	if err != nil {
		t.Fatal(err)
	}
	if cpKill.Snap == nil || cpKill.Snap.Done {
		t.Fatalf("killed too late, snapshot already done: %s", linesAtKill[len(linesAtKill)-1].CP)
	}
	if !midChunk(linesAtKill) {
		t.Fatal("the kill landed after a chunk's last part; this test resumes from between two parts")
	}
	time.Sleep(300 * time.Millisecond) // the writer keeps writing while the source is down

	p2 := child()
	waitFor(t, 90*time.Second, "resumed snapshot done", func() bool {
		if p2.Exited() {
			t.Fatalf("child exited: %s", p2.Output())
		}
		lines, _ := readFileLines(out)
		cp, err := decodeCheckpoint(lines[len(lines)-1].CP)
		return err == nil && (cp.Snap == nil || cp.Snap.Done)
	})
	time.Sleep(300 * time.Millisecond)
	finishAtMarker(t, pg, db, w, p2, out)
	lines, _ := readFileLines(out)
	evs := fileEvents(lines)
	t.Logf("writer ran %d ops; %d events in %d commits; killed after %d commits", w.ops, len(evs), len(lines), len(linesAtKill))

	// The resumed run read the rest in a second snapshot.
	var points []string
	for _, l := range lines {
		if cp, _ := decodeCheckpoint(l.CP); cp.Snap != nil {
			points = cp.Snap.Points
		}
	}
	if len(points) != 2 {
		t.Errorf("snapshot points %v, want the first snapshot's and the resumed one's", points)
	}
	checkUniqueIDs(t, evs)
	st := replayState{}
	for _, e := range evs {
		st.apply(t, e)
	}
	compareState(t, st, dbState(t, pg, db, snapshotTables))
	if t.Failed() {
		t.Logf("child output:\n%s", p2.Output())
	}
}

// TestResnapshotWhileStreaming re-snapshots two tables with DBLog
// watermarks while a writer changes them, restarts the source in the middle
// (the request and its progress are in the checkpoint), and checks that the
// state replayed from the re-snapshot rows and the stream equals the tables.
func TestResnapshotWhileStreaming(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	createSnapshotTables(t, pg, db)
	cfg := testConfig(pg, db, "resnap", "public.ints", "public.texts", "public.marker")
	cfg.SnapshotChunkSize = 150
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	if err := src.Resnapshot("public.nope"); err != nil { // logged and dropped by the stream
		t.Fatal(err)
	}
	w := startWriter(t, pg, db, 100000, 3)
	if err := src.Resnapshot("public.ints"); err != nil {
		t.Fatal(err)
	}
	if err := src.Resnapshot("texts"); err != nil {
		t.Fatal(err)
	}
	// Stop after a few chunks, restart from the last checkpoint.
	waitFor(t, 60*time.Second, "some re-snapshot chunks", func() bool {
		if err := r.failed(); err != nil {
			t.Fatal(err)
		}
		cp, _ := decodeCheckpoint(rec.lastCP())
		if cp == nil || len(cp.Resnap) != 2 || len(cp.Resnap[0].After) == 0 {
			return false
		}
		n, _ := strconv.Atoi(cp.Resnap[0].After[0])
		return n > 600
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	firstRun := rec.changes()
	cp := rec.lastCP()
	src2 := newSource(t, cfg)
	rec2 := newRecorder(src2, true)
	r2 := startRun(t, src2, cp, rec2)
	waitFor(t, 90*time.Second, "re-snapshots done", func() bool {
		if err := r2.failed(); err != nil {
			t.Fatal(err)
		}
		cp, _ := decodeCheckpoint(rec2.lastCP())
		return cp != nil && len(cp.Resnap) == 0
	})
	w.finish(t)
	pg.Exec(t, db, `INSERT INTO marker VALUES (1)`)
	waitFor(t, 60*time.Second, "marker", func() bool {
		for _, c := range rec2.changes() {
			if c.Table.Name == "marker" {
				return true
			}
		}
		return false
	})
	all := append(firstRun, rec2.changes()...)
	st := replayState{}
	reads := map[string]int{}
	for _, c := range all {
		st.upsert(t, toReplay(c))
		if c.Snapshot {
			reads[c.Table.QualifiedName()]++
		}
	}
	t.Logf("writer ran %d ops; %d events; re-snapshot rows %v", w.ops, len(all), reads)
	if reads["public.ints"] < 1000 || reads["public.texts"] < 500 {
		t.Errorf("too few re-snapshot rows: %v", reads)
	}
	compareState(t, st, dbState(t, pg, db, snapshotTables))
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
}

// finishAtMarker stops the writer, writes a row into table marker, waits
// until the child capture process has written the marker's event to out
// (so every change of the writer is there), and stops the child.
func finishAtMarker(t *testing.T, pg *testharness.PG, db string, w *writer, p *testharness.Proc, out string) {
	t.Helper()
	w.finish(t)
	pg.Exec(t, db, `INSERT INTO marker VALUES (1)`)
	waitFor(t, 60*time.Second, "marker", func() bool {
		if p.Exited() {
			t.Fatalf("child exited: %s", p.Output())
		}
		lines, _ := readFileLines(out)
		for _, e := range fileEvents(lines) {
			if e.Table == "public.marker" {
				return true
			}
		}
		return false
	})
	if err := p.Stop(); err != nil {
		t.Errorf("child stop: %v\n%s", err, p.Output())
	}
}
