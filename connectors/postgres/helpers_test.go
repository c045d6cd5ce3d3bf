package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	testharness.Main(m)
}

// txn is one committed source transaction as the recorder saw it.
type txn struct {
	changes []*event.Change
	cp      []byte
}

// recorder is a test Emitter: it keeps committed transactions in memory
// and, if acking, acknowledges each checkpoint from another goroutine, in
// order, like capture does after a Kafka commit.
type recorder struct {
	mu      sync.Mutex
	pending []*event.Change
	txns    []txn
	changed chan struct{}

	ackq chan []byte
	// onEmit, if set, runs for every Emit (outside the lock).
	onEmit func(*event.Change)
	// failCommit, if set, makes Commit fail with it.
	failCommit error
	// progress records snapshot progress reports per table:
	// [chunks done at plan, chunks total, chunk reports, last reported].
	progress map[string]*[4]int
}

func (r *recorder) SnapshotPlan(table string, done, total int, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.progress == nil {
		r.progress = map[string]*[4]int{}
	}
	r.progress[table] = &[4]int{done, total, 0, 0}
}

func (r *recorder) SnapshotChunk(table string, last bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.progress[table]
	if p == nil {
		p = &[4]int{-1, -1, 0, 0}
		r.progress[table] = p
	}
	p[2]++
	if last {
		p[3]++
	}
}

func newRecorder(src *Source, ack bool) *recorder {
	r := &recorder{changed: make(chan struct{}, 1)}
	if ack {
		r.ackq = make(chan []byte, 1<<16)
		go func() {
			for cp := range r.ackq {
				src.Ack(cp)
			}
		}()
	}
	return r
}

func (r *recorder) Emit(ctx context.Context, c *event.Change) error {
	if r.onEmit != nil {
		r.onEmit(c)
	}
	cc := *c // the source reuses c (capture.Emitter): keep a copy
	cc.SourceFields = slices.Clone(c.SourceFields)
	cc.Before, cc.After = event.CloneImage(c.Before), event.CloneImage(c.After)
	r.mu.Lock()
	r.pending = append(r.pending, &cc)
	r.mu.Unlock()
	return nil
}

func (r *recorder) Commit(ctx context.Context, cp []byte) error {
	r.mu.Lock()
	if r.failCommit != nil {
		r.mu.Unlock()
		return r.failCommit
	}
	r.txns = append(r.txns, txn{changes: r.pending, cp: append([]byte(nil), cp...)})
	r.pending = nil
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	if r.ackq != nil {
		r.ackq <- cp
	}
	return nil
}

// snapshot returns the committed transactions so far.
func (r *recorder) committed() []txn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]txn(nil), r.txns...)
}

// changes returns all committed changes in order.
func (r *recorder) changes() []*event.Change {
	var out []*event.Change
	for _, t := range r.committed() {
		out = append(out, t.changes...)
	}
	return out
}

// lastCP returns the last committed checkpoint.
func (r *recorder) lastCP() []byte {
	t := r.committed()
	if len(t) == 0 {
		return nil
	}
	return t[len(t)-1].cp
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running is a Source running in a goroutine.
type running struct {
	src  *Source
	rec  *recorder
	stop func() error
	done chan struct{}
	err  error
}

func startRun(t testing.TB, src *Source, from []byte, rec *recorder) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{src: src, rec: rec, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = src.Run(ctx, from, rec)
	}()
	var once sync.Once
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case <-r.done:
			case <-time.After(30 * time.Second):
				r.err = errors.New("Run did not return within 30s of cancellation")
			}
			src.Close()
		})
		if errors.Is(r.err, context.Canceled) {
			return nil
		}
		return r.err
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// failed returns Run's error if it returned.
func (r *running) failed() error {
	select {
	case <-r.done:
		if r.err == nil {
			return errors.New("Run returned nil")
		}
		return r.err
	default:
		return nil
	}
}

func testConfig(pg *testharness.PG, db, pipeline string, tables ...string) Config {
	return Config{
		Pipeline:          pipeline,
		DSN:               pg.DSN(db),
		Tables:            tables,
		HeartbeatInterval: 0,
	}
}

func newSource(t testing.TB, cfg Config) *Source {
	t.Helper()
	var log *slog.Logger
	if os.Getenv("PLUME_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	src, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	src.conn.attempts = 2
	src.conn.backoff = 100 * time.Millisecond
	return src
}

// slotLSN returns the slot's confirmed_flush_lsn (0 if the slot is missing).
func slotLSN(t testing.TB, pg *testharness.PG, db, slot string) pglogrepl.LSN {
	t.Helper()
	s := pg.QueryValue(t, db, `SELECT coalesce((SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1), '0/0')`, slot)
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitStreaming waits until the source's slot is active (its walsender runs).
func waitStreaming(t testing.TB, pg *testharness.PG, db string, r *running) {
	t.Helper()
	waitFor(t, 60*time.Second, "slot "+r.src.slot+" to become active", func() bool {
		if err := r.failed(); err != nil {
			t.Fatalf("Run failed: %v", err)
		}
		return pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, r.src.slot) == "1"
	})
}

// envelope renders a change's data as the capture pipeline would.
func envelope(c *event.Change) string { return string(event.AppendEnvelope(nil, "test", c)) }

// imageJSON renders an image as a JSON object keyed by column.
func imageJSON(t *event.Table, img []event.Value) string {
	if img == nil {
		return "null"
	}
	var b strings.Builder
	b.WriteByte('{')
	n := 0
	for i, v := range img {
		if _, ok := v.(event.Unchanged); ok {
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		b.Write(event.AppendJSONString(nil, t.Columns[i].Name))
		b.WriteByte(':')
		b.Write(event.AppendJSON(nil, v))
	}
	b.WriteByte('}')
	return b.String()
}

func describe(cs []*event.Change) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %s %s %s before=%s after=%s\n", c.ID(), c.Op.Code(), c.Table.QualifiedName(), imageJSON(c.Table, c.Before), imageJSON(c.Table, c.After))
	}
	return b.String()
}
