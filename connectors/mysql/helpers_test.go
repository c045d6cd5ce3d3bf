package mysql

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// rec is a recorded change, reduced to what the tests compare.
type rec struct {
	ID, Op, Table, Subject, Pos, TxID string
	Index, TableIndex                 int64
	Snapshot                          bool
	Before, After                     map[string]string // column -> JSON text
	Change                            *event.Change
}

func imageJSON(t *event.Table, img []event.Value) map[string]string {
	if img == nil {
		return nil
	}
	m := make(map[string]string, len(img))
	for i, v := range img {
		if _, ok := v.(event.Unchanged); ok {
			continue
		}
		m[t.Columns[i].Name] = string(event.AppendJSON(nil, v))
	}
	return m
}

// txn is one committed source transaction.
type txn struct {
	Changes []rec
	CP      []byte
}

// recEmitter is a capture.Emitter that records changes and commits and acks
// every commit to the source right away (as if Kafka committed it).
type recEmitter struct {
	src  *Source
	keep bool // keep *event.Change in recs

	mu        sync.Mutex
	open      []rec
	committed []txn
	count     int64 // changes emitted in total (also uncommitted)
	// onEmit, if set, is called for every change (under no lock).
	onEmit func(*event.Change) error
	// progress records snapshot progress reports per table:
	// [planned total, chunk reports, last reports].
	progress map[string]*[3]int
}

func (e *recEmitter) SnapshotPlan(table string, _, total int, _ int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.progress == nil {
		e.progress = map[string]*[3]int{}
	}
	e.progress[table] = &[3]int{total, 0, 0}
}

func (e *recEmitter) SnapshotChunk(table string, last bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.progress[table]
	if p == nil {
		p = &[3]int{-1, 0, 0}
		e.progress[table] = p
	}
	p[1]++
	if last {
		p[2]++
	}
}

func (e *recEmitter) Emit(ctx context.Context, c *event.Change) error {
	if e.onEmit != nil {
		if err := e.onEmit(c); err != nil {
			return err
		}
	}
	r := rec{ID: c.ID(), Op: c.Op.String(), Table: c.Table.QualifiedName(), Subject: c.Subject(),
		Pos: c.Pos, TxID: c.TxID, Index: c.Index, TableIndex: c.TableIndex, Snapshot: c.Snapshot,
		Before: imageJSON(c.Table, c.Before), After: imageJSON(c.Table, c.After)}
	if e.keep { // the source reuses c (capture.Emitter): keep a copy
		cc := *c
		cc.SourceFields = slices.Clone(c.SourceFields)
		cc.Before, cc.After = event.CloneImage(c.Before), event.CloneImage(c.After)
		r.Change = &cc
	}
	e.mu.Lock()
	e.open = append(e.open, r)
	e.count++
	e.mu.Unlock()
	return ctx.Err()
}

func (e *recEmitter) Commit(ctx context.Context, cp []byte) error {
	e.mu.Lock()
	e.committed = append(e.committed, txn{Changes: e.open, CP: append([]byte(nil), cp...)})
	e.open = nil
	e.mu.Unlock()
	if e.src != nil {
		e.src.Ack(cp)
	}
	return ctx.Err()
}

// changes returns all committed changes in order.
func (e *recEmitter) changes() []rec {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []rec
	for _, t := range e.committed {
		out = append(out, t.Changes...)
	}
	return out
}

func (e *recEmitter) lastCP() []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.committed) == 0 {
		return nil
	}
	return e.committed[len(e.committed)-1].CP
}

func (e *recEmitter) commits() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.committed)
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("PLUME_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func testConfig(t testing.TB, m *testharness.MySQL, db string) Config {
	return Config{
		Pipeline:          t.Name(),
		DSN:               m.DSN(""),
		Tables:            []string{db + ".*"},
		HeartbeatInterval: time.Second,
		SnapshotChunkSize: 100,
	}
}

func newTestSource(t testing.TB, cfg Config) *Source {
	t.Helper()
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.connectAttempts = 3
	s.retryBackoff = 200 * time.Millisecond
	return s
}

// running is a Source.Run in a goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func startRun(t testing.TB, s *Source, from []byte, em *recEmitter) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	em.src = s
	go func() { r.done <- s.Run(ctx, from, em) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t testing.TB) error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of cancel")
	}
	return nil
}

// failed returns Run's error if it has returned.
func (r *running) failed() error {
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
			if err == nil {
				err = fmt.Errorf("Run returned nil")
			}
			return err
		}
	default:
	}
	return nil
}

// waitFor polls cond until it holds, failing after d or if Run failed.
func waitFor(t testing.TB, r *running, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if r != nil {
			if err := r.failed(); err != nil {
				t.Fatalf("waiting for %s: Run failed: %v", what, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countOps(recs []rec, snapshot bool) int {
	n := 0
	for _, r := range recs {
		if r.Snapshot == snapshot {
			n++
		}
	}
	return n
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sortStrings(s []string) { sort.Strings(s) }
