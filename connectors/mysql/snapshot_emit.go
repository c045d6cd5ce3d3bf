package mysql

import (
	"context"
	"fmt"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

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
				r.rows.setHead(ch)
			default:
				return nil
			}
		}
		ch := r.next
		select {
		case <-ch.ready:
		default:
			return nil // no watermarks yet
		}
		gone := false
		select {
		case <-ch.done:
			if ch.err != nil {
				return ch.err
			}
			gone = ch.gone
		default: // still reading
		}
		if !gone && st.pos.Compare(ch.high) < 0 {
			return nil // the stream has not reached the chunk's watermark yet
		}
		if err := st.emitChunk(ctx, ch); err != nil {
			return err
		}
		r.next = nil
		r.rows.setHead(nil)
	}
}

// partRows is the most rows of a chunk emitted in one source transaction:
// half the chunk, at most 1,000. Capture closes a Kafka transaction
// only between source transactions, so this keeps snapshot transactions
// near kafka.batch_max_events, as the stream's are, instead of a whole
// chunk (its records stay buffered until the transaction commits).
func partRows(chunkSize int) int64 {
	return int64(min(1000, max(1, chunkSize/2)))
}

// emitChunk emits one chunk's rows as they arrive from its worker, in
// source transactions of at most partRows rows (when the table's key allows
// resuming inside a chunk), and then commits the checkpoint that marks the
// chunk done. The stream does not move meanwhile: every row is emitted at
// the same position Q (package comment).
func (st *streamer) emitChunk(ctx context.Context, ch *chunk) error {
	state := st.snapState
	r := st.snap
	var n, part int64 // rows emitted of the chunk, of the open part
	var c *event.Change
	var fvs []gomysql.FieldValue
	split := ch.info != nil && ch.info.splittable()
	limit := partRows(st.s.cfg.SnapshotChunkSize)
	for {
		seg, err := r.rows.next(ctx, ch)
		if err != nil {
			return err
		}
		if seg == nil {
			break
		}
		if c == nil {
			pos := "snapshot:" + state.ID
			c = &event.Change{
				Op: event.OpRead, Table: ch.info.table, Commit: state.start(), Pos: pos, Snapshot: true,
				SourceFields: []event.Field{
					{Name: "file", Value: ch.high.File},
					{Name: "pos", Value: int64(ch.high.Pos)},
					{Name: "gtid", Value: nil},
					{Name: "server_id", Value: int64(st.info.ServerID)},
					{Name: "row", Value: nil},
				},
			}
			fvs = make([]gomysql.FieldValue, len(ch.info.table.Columns))
		}
		// The stream is paused while the chunk is emitted, so the keys it
		// recorded do not change meanwhile.
		tracked := r.tracker.tracking(ch.table)
		b := seg.buf
		for i := 0; i < seg.rows; i++ {
			if b, err = decodeRow(b, fvs); err != nil {
				r.rows.release(ch, seg)
				return err
			}
			row, err := ch.info.rowValues(fvs)
			if err != nil {
				r.rows.release(ch, seg)
				return fmt.Errorf("mysql: snapshot of %s: %w", ch.table, err)
			}
			if tracked && r.tracker.changedAfter(ch.table, keySubject(ch.info.table, row), ch.low) {
				state.Superseded++
				continue // the stream already emitted a newer state of this row
			}
			c.After, c.Index, c.TableIndex, c.TraceParent = row, n, n+1, ""
			c.SourceFields[4].Value = n
			if err := st.em.Emit(ctx, c); err != nil {
				r.rows.release(ch, seg)
				return err
			}
			n++
			part++
			if split && part >= limit {
				// A part ends: resume after this row's key.
				state.After = encodeKey(ch.info.rowKey(fvs))
				state.Rows += part
				part = 0
				if err := st.commit(ctx); err != nil {
					r.rows.release(ch, seg)
					return err
				}
			}
		}
		r.rows.release(ch, seg)
	}
	<-ch.done
	if ch.err != nil {
		return ch.err
	}
	if ch.reg != nil {
		r.tracker.release(ch.reg)
	}
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
	state.Rows += part
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
