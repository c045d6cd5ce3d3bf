package capture

import (
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
)

func TestSnapshotProgressEstimates(t *testing.T) {
	var s Stats
	s.snapshotPlan("public.big", 4, 10, 1000) // resumed: 4 of 10 chunks done
	s.addTableEvents(map[TableOp]int64{{"public.big", event.OpRead}: 250, {"public.big", event.OpCreate}: 3})
	s.snapshotChunk("public.big", false)
	s.snapshotChunk("public.big", false)
	ps := s.Snapshots()
	if len(ps) != 1 {
		t.Fatalf("%d tables", len(ps))
	}
	p := ps[0]
	if p.ChunksDone != 6 || p.ChunksTotal != 10 || p.RowsRead != 250 || p.Done {
		t.Fatalf("progress %+v", p)
	}
	if r := p.RemainingRows(); r != 400 {
		t.Errorf("remaining rows %d, want 400 (4 of 10 chunks of 1000 rows)", r)
	}
	// 2 chunks in the elapsed time: 4 more take twice as long.
	if sec := p.RemainingSeconds(p.Started.Add(10 * time.Second)); sec < 19.9 || sec > 20.1 {
		t.Errorf("remaining seconds %v, want 20", sec)
	}
	// An estimate that ran short grows; the last chunk settles it.
	s.snapshotPlan("db.t", 0, 1, 0)
	s.snapshotChunk("db.t", false)
	if p := s.Snapshots()[0]; p.Table != "db.t" || p.ChunksTotal != 2 || p.RemainingRows() != -1 {
		t.Errorf("short estimate: %+v", p)
	}
	s.snapshotChunk("db.t", true)
	if p := s.Snapshots()[0]; !p.Done || p.ChunksTotal != 2 || p.RemainingRows() != 0 || p.RemainingSeconds(time.Now()) != 0 {
		t.Errorf("done: %+v", p)
	}
	if ev := s.TableEvents(); ev[TableOp{"public.big", event.OpCreate}] != 3 {
		t.Errorf("table events %v", ev)
	}
}
