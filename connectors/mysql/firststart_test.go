package mysql

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/testharness"
)

// syncEmitter is a recEmitter that also implements capture.Syncer and
// records how many changes had been emitted when Sync was called.
type syncEmitter struct {
	*recEmitter
	mu    sync.Mutex
	syncs []syncCall
}

type syncCall struct {
	cp      []byte
	emitted int64 // changes emitted before the call
	commits int   // commits before the call
}

var _ capture.Syncer = (*syncEmitter)(nil)

func (e *syncEmitter) Sync(ctx context.Context, cp []byte) error {
	e.recEmitter.mu.Lock()
	call := syncCall{cp: append([]byte(nil), cp...), emitted: e.count, commits: len(e.committed)}
	e.recEmitter.mu.Unlock()
	e.mu.Lock()
	e.syncs = append(e.syncs, call)
	e.mu.Unlock()
	return e.Commit(ctx, cp)
}

// The first start's checkpoint (position and scheduled snapshot) is synced
// before anything is emitted, with writes going on; a resumed start syncs
// nothing (its position is already committed).
func TestFirstStartSyncsItsPositionBeforeEmitting(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	fillTable(t, m, db, 300)
	stopChurn := churn(t, m, db, 300, 7, 2*time.Millisecond)
	defer stopChurn()
	time.Sleep(100 * time.Millisecond)

	cfg := testConfig(t, m, db)
	cfg.Snapshot = true
	src := newTestSource(t, cfg)
	em := &syncEmitter{recEmitter: &recEmitter{src: src}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, nil, em) }()
	r := &running{cancel: cancel, done: done}
	t.Cleanup(func() { r.stop(t) })
	waitFor(t, r, 30*time.Second, "the snapshot and some changes", func() bool {
		c, err := decodeCheckpoint(em.lastCP())
		return err == nil && c != nil && c.Snapshot == nil && countOps(em.changes(), true) > 0 && countOps(em.changes(), false) > 0
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	em.mu.Lock()
	syncs := append([]syncCall(nil), em.syncs...)
	em.mu.Unlock()
	if len(syncs) != 1 {
		t.Fatalf("%d Sync calls on a first start, want 1", len(syncs))
	}
	s := syncs[0]
	if s.emitted != 0 || s.commits != 0 {
		t.Fatalf("first start synced after %d changes and %d commits; want its position synced before anything else", s.emitted, s.commits)
	}
	cp, err := decodeCheckpoint(s.cp)
	if err != nil || cp == nil || cp.Snapshot == nil || cp.GTID == "" || len(cp.Snapshot.Tables) != 1 {
		t.Fatalf("synced checkpoint %s (%v): want the start position with the whole snapshot pending", s.cp, err)
	}

	// Resuming from the last checkpoint syncs nothing.
	em2 := &syncEmitter{recEmitter: &recEmitter{src: src}}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- src.Run(ctx2, em.lastCP(), em2) }()
	r2 := &running{cancel: cancel2, done: done2}
	t.Cleanup(func() { r2.stop(t) })
	waitFor(t, r2, 30*time.Second, "changes after resuming", func() bool { return countOps(em2.changes(), false) > 0 })
	if err := r2.stop(t); err != nil {
		t.Fatal(err)
	}
	if len(em2.syncs) != 0 {
		t.Fatalf("a resumed start called Sync %d times", len(em2.syncs))
	}
}
