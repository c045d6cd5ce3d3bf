package mysql

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// fileEmitter is the child process's durable "Kafka": each Commit appends one
// JSON line holding the transaction's changes and the checkpoint, fsynced.
// A line torn by a crash is an aborted transaction.
type fileEmitter struct {
	f     *os.File
	open  []rec
	delay time.Duration
	mu    sync.Mutex
}

type fileTxn struct {
	Changes []rec  `json:"changes"`
	CP      string `json:"cp"`
}

func (e *fileEmitter) Emit(ctx context.Context, c *event.Change) error {
	e.open = append(e.open, rec{ID: c.ID(), Op: c.Op.String(), Table: c.Table.QualifiedName(), Subject: c.Subject(),
		Pos: c.Pos, Index: c.Index, Snapshot: c.Snapshot,
		Before: imageJSON(c.Table, c.Before), After: imageJSON(c.Table, c.After)})
	return nil
}

func (e *fileEmitter) Commit(ctx context.Context, cp []byte) error {
	snap := len(e.open) > 0 && e.open[0].Snapshot
	b, err := json.Marshal(fileTxn{Changes: e.open, CP: string(cp)})
	if err != nil {
		return err
	}
	e.open = nil
	if _, err := e.f.Write(append(b, '\n')); err != nil {
		return err
	}
	if err := e.f.Sync(); err != nil {
		return err
	}
	if snap {
		time.Sleep(e.delay) // slow the snapshot down so the kill lands in it
	}
	return nil
}

// readTxns reads the committed transactions of a child's output file.
func readTxns(t testing.TB, path string) []fileTxn {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []fileTxn
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var tx fileTxn
		if json.Unmarshal(sc.Bytes(), &tx) != nil {
			break // torn by a crash
		}
		out = append(out, tx)
	}
	return out
}

// TestSnapshotChildProcess is the child of TestSnapshotResumeAfterKill.
func TestSnapshotChildProcess(t *testing.T) {
	if os.Getenv("PLUME_MYSQL_CHILD") != "1" {
		t.Skip("helper process")
	}
	out := os.Getenv("PLUME_MYSQL_OUT")
	var from []byte
	if txs := readTxns(t, out); len(txs) > 0 {
		from = []byte(txs[len(txs)-1].CP)
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// Drop a torn last line so the next append starts a fresh line.
	if st, _ := f.Stat(); st.Size() > 0 {
		b, _ := os.ReadFile(out)
		if b[len(b)-1] != '\n' {
			i := len(b) - 1
			for i >= 0 && b[i] != '\n' {
				i--
			}
			_ = f.Truncate(int64(i + 1))
		}
	}
	delay, _ := time.ParseDuration(os.Getenv("PLUME_MYSQL_DELAY"))
	chunk, _ := strconv.Atoi(os.Getenv("PLUME_MYSQL_CHUNK"))
	cfg := Config{
		Pipeline: "kill-test", DSN: os.Getenv("PLUME_MYSQL_DSN"), Tables: []string{os.Getenv("PLUME_MYSQL_DB") + ".*"},
		Snapshot: true, SnapshotChunkSize: chunk, SnapshotWorkers: 2, HeartbeatInterval: time.Second,
	}
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("child starting from %s", from)
	err = s.Run(context.Background(), from, &fileEmitter{f: f, delay: delay})
	t.Fatalf("Run returned: %v", err)
}

func TestSnapshotResumeAfterKill(t *testing.T) {
	const rows = 3000
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	fillTable(t, m, db, rows)
	out := filepath.Join(t.TempDir(), "committed.jsonl")
	child := func() *testharness.Proc {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSnapshotChildProcess$", "-test.v")
		cmd.Env = append(os.Environ(), "PLUME_MYSQL_CHILD=1", "PLUME_MYSQL_OUT="+out,
			"PLUME_MYSQL_DSN="+m.DSN(""), "PLUME_MYSQL_DB="+db, "PLUME_MYSQL_DELAY=100ms", "PLUME_MYSQL_CHUNK=100")
		return testharness.StartCommand(t, cmd)
	}
	chunksDone := func() int {
		n := 0
		for _, tx := range readTxns(t, out) {
			if len(tx.Changes) > 0 && tx.Changes[0].Snapshot {
				n++
			}
		}
		return n
	}
	// midChunk: the last committed transaction is a part of a chunk that
	// has more parts to come (its checkpoint counts no more finished chunks
	// than the transaction before it), so a kill now leaves the resumed run
	// to continue inside a chunk, after the part's last key.
	midChunk := func() bool {
		txs := readTxns(t, out)
		if len(txs) < 2 {
			return false
		}
		last, prev := txs[len(txs)-1], txs[len(txs)-2]
		if len(last.Changes) == 0 || !last.Changes[0].Snapshot {
			return false
		}
		a, errA := decodeCheckpoint([]byte(last.CP))
		b, errB := decodeCheckpoint([]byte(prev.CP))
		return errA == nil && errB == nil && a.Snapshot != nil && b.Snapshot != nil && a.Snapshot.Chunks == b.Snapshot.Chunks
	}
	stopChurn := churn(t, m, db, rows, 11, 2*time.Millisecond)
	p1 := child()
	// The child sleeps 100 ms after every snapshot commit, so the state seen
	// here is still the last commit when the kill lands.
	waitFor(t, nil, 60*time.Second, "5 snapshot transactions from the first child, the last one mid-chunk", func() bool {
		if p1.Exited() {
			t.Fatalf("child exited: %s", p1.Output())
		}
		return chunksDone() >= 5 && midChunk()
	})
	_ = p1.Kill()
	if !midChunk() {
		t.Fatal("the kill landed after a chunk's last part; this test resumes from between two parts")
	}
	before := chunksDone()
	p2 := child()
	snapshotDone := func() bool {
		txs := readTxns(t, out)
		if len(txs) == 0 {
			return false
		}
		c, err := decodeCheckpoint([]byte(txs[len(txs)-1].CP))
		return err == nil && c.Snapshot == nil
	}
	waitFor(t, nil, 60*time.Second, "the second child to finish the snapshot", func() bool {
		if p2.Exited() {
			t.Fatalf("child exited: %s", p2.Output())
		}
		return snapshotDone()
	})
	writes := stopChurn()
	src := newTestSource(t, Config{Pipeline: "x", DSN: m.DSN(""), Tables: []string{db + ".*"}})
	want := tableState(t, src, db+".s")
	var p *replayer
	waitFor(t, nil, 30*time.Second, "replayed state to equal the table", func() bool {
		p = newReplayer()
		for _, tx := range readTxns(t, out) {
			for _, c := range tx.Changes {
				p.apply(c)
			}
		}
		ok, _ := sameState(p.state, want)
		return ok
	})
	_ = p2.Kill()
	for i, e := range p.errs {
		if i > 10 {
			break
		}
		t.Error(e)
	}
	snapIDs := map[string]bool{}
	reads := 0
	for _, tx := range readTxns(t, out) {
		for _, c := range tx.Changes {
			if c.Snapshot {
				snapIDs[c.Pos] = true
				reads++
			}
		}
	}
	if len(snapIDs) != 1 {
		t.Errorf("snapshot ids %v, want one id across the restart", snapIDs)
	}
	t.Logf("killed after %d chunks; %d chunks in total, %d reads, %d concurrent writes, no duplicate ids", before, chunksDone(), reads, writes)
}
