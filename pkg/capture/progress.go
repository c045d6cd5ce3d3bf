package capture

import (
	"sort"
	"sync"
	"time"

	"github.com/plumecdc/plume/pkg/event"
)

// TableOp names a captured table ("schema.table" or "db.table") and an
// operation, the key of the per-table event counters.
type TableOp struct {
	Table string
	Op    event.Op
}

// tableCounts are the committed events per table and operation, and the
// snapshot progress per table. They are written by capture and read by
// metrics and status at any time, so they sit behind a mutex; capture adds
// to them once per Kafka transaction, never per event.
type tableCounts struct {
	mu     sync.Mutex
	events map[TableOp]int64
	snaps  map[string]*SnapshotProgress
}

// TableEvents returns a copy of the events committed to Kafka per table and
// operation since the process started.
func (s *Stats) TableEvents() map[TableOp]int64 {
	s.tc.mu.Lock()
	defer s.tc.mu.Unlock()
	out := make(map[TableOp]int64, len(s.tc.events))
	for k, v := range s.tc.events {
		out[k] = v
	}
	return out
}

func (s *Stats) addTableEvents(m map[TableOp]int64) {
	if len(m) == 0 {
		return
	}
	s.tc.mu.Lock()
	defer s.tc.mu.Unlock()
	if s.tc.events == nil {
		s.tc.events = map[TableOp]int64{}
	}
	for k, v := range m {
		s.tc.events[k] += v
	}
}

// SnapshotProgress is one table's snapshot progress as its source reports
// it. Chunk counts describe the whole snapshot of the table, including
// chunks done before a restart when the source knows them (PostgreSQL
// does: its checkpoint lists them; MySQL/MariaDB resumes from a key and
// counts from there).
type SnapshotProgress struct {
	Table       string `json:"table"`
	ChunksDone  int    `json:"chunks_done"`
	ChunksTotal int    `json:"chunks_total"` // estimated where the source plans as it goes (MySQL)
	// RowsEstimate is the estimated number of rows of the whole table
	// (0: unknown).
	RowsEstimate int64 `json:"rows_estimate"`
	// RowsRead is the snapshot rows of the table committed to Kafka by this
	// process.
	RowsRead int64 `json:"rows_read"`
	Done     bool  `json:"done"`
	// Started is when this process began reporting the table; doneAtStart
	// the chunks already done then (for the rate).
	Started     time.Time `json:"started"`
	doneAtStart int
}

// RemainingRows estimates the rows still to read: the estimated rows of
// the chunks not yet done. -1 when unknown.
func (p SnapshotProgress) RemainingRows() int64 {
	switch {
	case p.Done:
		return 0
	case p.RowsEstimate <= 0 || p.ChunksTotal <= 0:
		return -1
	}
	left := max(p.ChunksTotal-p.ChunksDone, 0)
	return p.RowsEstimate * int64(left) / int64(p.ChunksTotal)
}

// RemainingSeconds estimates the time to finish the table from the chunk
// rate of this process. -1 when there is no rate yet.
func (p SnapshotProgress) RemainingSeconds(now time.Time) float64 {
	if p.Done {
		return 0
	}
	done := p.ChunksDone - p.doneAtStart
	el := now.Sub(p.Started).Seconds()
	if done <= 0 || el <= 0 || p.ChunksTotal <= 0 {
		return -1
	}
	return float64(max(p.ChunksTotal-p.ChunksDone, 0)) / (float64(done) / el)
}

// Snapshots returns the snapshot progress of every table reported since the
// process started, sorted by table, with RowsRead filled in.
func (s *Stats) Snapshots() []SnapshotProgress {
	s.tc.mu.Lock()
	defer s.tc.mu.Unlock()
	out := make([]SnapshotProgress, 0, len(s.tc.snaps))
	for _, p := range s.tc.snaps {
		c := *p
		c.RowsRead = s.tc.events[TableOp{p.Table, event.OpRead}]
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Table < out[j].Table })
	return out
}

// SnapshotReporter is implemented by the Emitter capture hands to a source.
// Sources report snapshot progress through ReportSnapshotPlan and
// ReportSnapshotChunk, from any goroutine. Progress is for metrics and
// status only; it never affects what is captured.
type SnapshotReporter interface {
	// SnapshotPlan announces a table's snapshot: chunks done already,
	// total chunks (estimated or exact) and estimated rows.
	SnapshotPlan(table string, chunksDone, chunksTotal int, rowsEstimate int64)
	// SnapshotChunk reports one more chunk of table emitted; last says the
	// table is complete.
	SnapshotChunk(table string, last bool)
}

// ReportSnapshotPlan calls em's SnapshotPlan if em is a SnapshotReporter.
func ReportSnapshotPlan(em Emitter, table string, chunksDone, chunksTotal int, rowsEstimate int64) {
	if r, ok := em.(SnapshotReporter); ok {
		r.SnapshotPlan(table, chunksDone, chunksTotal, rowsEstimate)
	}
}

// ReportSnapshotChunk calls em's SnapshotChunk if em is a SnapshotReporter.
func ReportSnapshotChunk(em Emitter, table string, last bool) {
	if r, ok := em.(SnapshotReporter); ok {
		r.SnapshotChunk(table, last)
	}
}

func (s *Stats) snapshotPlan(table string, done, total int, rows int64) {
	s.tc.mu.Lock()
	defer s.tc.mu.Unlock()
	if s.tc.snaps == nil {
		s.tc.snaps = map[string]*SnapshotProgress{}
	}
	s.tc.snaps[table] = &SnapshotProgress{Table: table, ChunksDone: done, ChunksTotal: max(total, done), RowsEstimate: rows,
		Done: total > 0 && done >= total, Started: time.Now(), doneAtStart: done}
}

func (s *Stats) snapshotChunk(table string, last bool) {
	s.tc.mu.Lock()
	defer s.tc.mu.Unlock()
	if s.tc.snaps == nil {
		s.tc.snaps = map[string]*SnapshotProgress{}
	}
	p := s.tc.snaps[table]
	if p == nil {
		p = &SnapshotProgress{Table: table, Started: time.Now()}
		s.tc.snaps[table] = p
	}
	p.ChunksDone++
	if last {
		p.Done = true
		p.ChunksTotal = p.ChunksDone
	} else if p.ChunksTotal <= p.ChunksDone {
		p.ChunksTotal = p.ChunksDone + 1 // an estimate ran short: at least one more
	}
}

func (p *producer) SnapshotPlan(table string, done, total int, rows int64) {
	p.stats.snapshotPlan(table, done, total, rows)
}

func (p *producer) SnapshotChunk(table string, last bool) { p.stats.snapshotChunk(table, last) }
