package mysql

import (
	"context"
	"time"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/event"
)

// atBoundary runs between binlog transactions: it emits finished snapshot
// chunks whose watermark the stream has reached, and starts requested
// re-snapshots.
func (st *streamer) atBoundary(ctx context.Context) error {
	if st.snap == nil {
		tables := st.s.takeResnapshots()
		if len(tables) == 0 {
			return nil
		}
		st.snapState = newSnapshotState(st.s.cfg.SnapshotMode, tables, time.Now())
		return st.startSnapshot(ctx)
	}
	r := st.snap
	for {
		r.mu.Lock()
		err := r.err
		r.mu.Unlock()
		if err != nil {
			return err
		}
		if r.next == nil {
			if r.closed {
				return st.finishSnapshot(ctx)
			}
			select {
			case ch, ok := <-r.ordered:
				if !ok {
					r.closed = true
					continue
				}
				r.next = ch
			default:
				return nil
			}
		}
		ch := r.next
		select {
		case <-ch.done:
		default:
			return nil
		}
		if ch.err != nil {
			return ch.err
		}
		if !ch.gone && st.pos.Compare(ch.high) < 0 {
			return nil // the stream has not reached the chunk's watermark yet
		}
		if err := st.emitChunk(ctx, ch); err != nil {
			return err
		}
		r.next = nil
	}
}

// emitChunk emits one chunk as a source transaction of OpRead rows followed
// by the checkpoint that marks it done.
func (st *streamer) emitChunk(ctx context.Context, ch *chunk) error {
	state := st.snapState
	r := st.snap
	var n int64
	if !ch.gone {
		pos := "snapshot:" + state.ID
		start := state.start()
		for _, row := range ch.rows {
			key := keySubject(ch.info.table, row)
			if r.tracker.changedAfter(ch.table, key, ch.low) {
				state.Superseded++
				continue // the stream already emitted a newer state of this row
			}
			c := &event.Change{
				Op: event.OpRead, Table: ch.info.table, After: row,
				Commit: start, Pos: pos, Index: n, TableIndex: n + 1, Snapshot: true,
				SourceFields: []event.Field{
					{Name: "file", Value: ch.high.File},
					{Name: "pos", Value: int64(ch.high.Pos)},
					{Name: "gtid", Value: nil},
					{Name: "server_id", Value: int64(st.info.ServerID)},
					{Name: "row", Value: n},
				},
			}
			if err := st.em.Emit(ctx, c); err != nil {
				return err
			}
			n++
		}
	}
	if ch.reg != nil {
		r.tracker.release(ch.reg)
	}
	ch.rows = nil
	if ch.last {
		if reg := r.tblRegs[ch.table]; reg != nil {
			r.tracker.release(reg)
			delete(r.tblRegs, ch.table)
		}
		state.Tables = state.Tables[1:]
		state.After = nil
		st.s.log.Info("mysql: snapshot table done", "table", ch.table, "id", state.ID)
	} else {
		state.After = encodeKey(ch.hi)
	}
	state.Chunks++
	state.Rows += n
	if len(state.Tables) == 0 {
		st.s.log.Info("mysql: snapshot done", "id", state.ID, "chunks", state.Chunks, "rows", state.Rows, "superseded", state.Superseded)
		st.s.lastSnapshot.Store(state)
		st.snapState = nil
	}
	if err := st.commit(ctx); err != nil {
		return err
	}
	capture.ReportSnapshotChunk(st.em, ch.table, ch.last)
	return nil
}

func (st *streamer) finishSnapshot(ctx context.Context) error {
	st.snap.stop()
	st.snap = nil
	if st.snapState != nil {
		// Only reachable if the table list was empty.
		st.snapState = nil
		return st.commit(ctx)
	}
	return nil
}
