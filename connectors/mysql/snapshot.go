package mysql

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/event"
)

// Snapshot algorithm (DBLog-style watermarks, with binlog positions as the
// watermarks; docs/mysql.md has the operator's version).
//
// The binlog stream runs from the checkpoint's position during the whole
// snapshot, and the Run goroutine interleaves two kinds of source
// transactions on the Emitter: binlog transactions, and snapshot chunks.
//
//  1. A planner walks the tables in order and cuts each into key ranges
//     (lo, hi] of about SnapshotChunkSize rows (hi found with ORDER BY key
//     LIMIT 1 OFFSET n-1; the last chunk is open-ended).
//  2. SnapshotWorkers workers read chunks in parallel. For each chunk a
//     worker registers with the dirty tracker (from now on the stream
//     records every key it sees change in that table), then opens a
//     consistent-snapshot transaction and takes its watermarks: on MariaDB
//     the exact binlog position of the snapshot (binlog_snapshot_file /
//     _position), so low = high; on MySQL high is SHOW MASTER STATUS after
//     START TRANSACTION WITH CONSISTENT SNAPSHOT and low is the stream's
//     position at registration (a transaction already in the binlog may not
//     be visible to the snapshot yet; treating everything since
//     registration as newer is safe). It reads the chunk's rows and
//     commits. If low is below the tracker's position at registration the
//     read is retried (the stream had passed events the tracker did not
//     record).
//  3. The Run goroutine emits chunks in order, only between binlog
//     transactions, and only once its stream position Q has reached the
//     chunk's high watermark. It drops every row whose key the stream
//     changed after low, emits the rest as OpRead rows, then commits a
//     checkpoint holding both Q and "chunk done" (its upper bound).
//
// Invariant: when a chunk is emitted at stream position Q, each of its
// emitted rows equals the row's state at Q. A row not changed in (low, Q] has
// the same state at Q as at the snapshot; a row changed in (low, Q] is
// dropped, and its latest state up to Q was already emitted by the stream
// (inserts and updates carry full after images; deletes remove it). Rows
// changed after Q follow the chunk in the stream. So replaying the emitted
// events in order, from any point on, converges on the table's contents, and
// every change is emitted once: the stream is never rewound.
//
// Lock mode takes FLUSH TABLES WITH READ LOCK just long enough to open one
// consistent-snapshot transaction per worker and read SHOW MASTER STATUS;
// every chunk is then read at that single position P. Tables are registered
// before the lock, and the stream holds at P while the snapshot runs, so
// there is nothing to reconcile.

type chunk struct {
	seq   int64
	table string
	info  *tableInfo
	lo    []any // exclusive lower bound, nil: from the start
	hi    []any // inclusive upper bound, nil: to the end
	last  bool  // the table's last chunk
	gone  bool  // the table no longer exists

	done      chan struct{}
	rows      [][]event.Value
	low, high binlogPos
	reg       *registration
	err       error
}

type snapshotRun struct {
	s       *Source
	st      *snapshotState // initial progress (the planner's copy)
	mode    string
	flavor  string
	tracker *dirtyTracker
	schema  *schemaCache
	em      capture.Emitter // for snapshot progress reports only

	ordered chan *chunk   // planner -> emitter, in emission order
	jobs    chan *chunk   // planner -> workers
	notify  chan struct{} // a chunk finished or the planner stopped
	next    *chunk        // the chunk the emitter waits for
	closed  bool          // ordered was closed

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	err     error
	lockPos binlogPos // lock mode: the position every chunk is read at
	locked  bool
	tblRegs map[string]*registration // lock mode: per-table registrations
}

// startSnapshot starts the planner and workers for st.snapState.
func (st *streamer) startSnapshot(ctx context.Context) error {
	state := st.snapState
	st.s.log.Info("mysql: snapshot starting", "id", state.ID, "mode", state.Mode, "tables", len(state.Tables), "stream_from", st.pos.String())
	rctx, cancel := context.WithCancel(ctx)
	r := &snapshotRun{
		s: st.s, st: state.clone(), mode: state.Mode, flavor: st.info.Flavor,
		tracker: newDirtyTracker(st.cur), em: st.em,
		schema:  newSchemaCache(st.s.filter, st.s.cfg.Keys, st.info.Collations, st.s.log),
		ordered: make(chan *chunk, st.s.cfg.SnapshotWorkers),
		jobs:    make(chan *chunk),
		notify:  make(chan struct{}, 1),
		ctx:     rctx, cancel: cancel,
		tblRegs: map[string]*registration{},
	}
	st.snap = r
	r.wg.Add(1)
	go r.plan()
	return nil
}

func (r *snapshotRun) signal() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *snapshotRun) fail(err error) {
	r.mu.Lock()
	if r.err == nil && r.ctx.Err() == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.signal()
}

func (r *snapshotRun) stop() {
	r.cancel()
	r.wg.Wait()
}

// holdStream reports whether the stream must pause at pos (lock mode, once
// it reached the snapshot position).
func (r *snapshotRun) holdStream(pos binlogPos) bool {
	if r.mode != SnapshotLock {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.locked && pos.Compare(r.lockPos) >= 0
}

func (r *snapshotRun) observe(table string, t *event.Table, before, after []event.Value, p binlogPos) {
	r.tracker.observe(table, t, before, after, p)
}

// plan cuts the tables into chunks and feeds the workers.
func (r *snapshotRun) plan() {
	defer r.wg.Done()
	defer r.signal()
	defer close(r.ordered)
	var workers sync.WaitGroup
	defer workers.Wait()
	defer close(r.jobs)

	c, err := r.s.dial(r.ctx)
	if err != nil {
		r.fail(err)
		return
	}
	defer c.Close()

	var conns []*conn
	if r.mode == SnapshotLock {
		if conns, err = r.lockSetup(c); err != nil {
			r.fail(err)
			return
		}
	}
	for i := 0; i < r.s.cfg.SnapshotWorkers; i++ {
		var wc *conn
		if conns != nil {
			wc = conns[i]
		}
		workers.Add(1)
		go func() {
			defer workers.Done()
			r.worker(wc)
		}()
	}

	after, err := decodeKey(r.st.After)
	if err != nil {
		r.fail(err)
		return
	}
	var seq int64
	for ti, qn := range r.st.Tables {
		info, err := r.schema.loadTable(r.ctx, c, qn)
		if errors.Is(err, errTableGone) {
			r.s.log.Warn("mysql: snapshot: table no longer exists, skipped", "table", qn)
			ch := &chunk{seq: seq, table: qn, last: true, gone: true, done: make(chan struct{})}
			close(ch.done)
			if !r.send(ch, false) {
				return
			}
			seq++
			continue
		}
		if err != nil {
			r.fail(err)
			return
		}
		var lo []any
		if ti == 0 {
			lo = after
		}
		r.reportPlan(c, info)
		for {
			hi, err := r.boundary(c, info, lo)
			if isNoSuchTable(err) {
				// Dropped while being copied: its DROP is in the stream.
				r.s.log.Warn("mysql: snapshot: table dropped during its snapshot", "table", qn)
				ch := &chunk{seq: seq, table: qn, last: true, gone: true, done: make(chan struct{})}
				close(ch.done)
				seq++
				if !r.send(ch, false) {
					return
				}
				break
			}
			if err != nil {
				r.fail(fmt.Errorf("mysql: snapshot of %s: %w", qn, err))
				return
			}
			ch := &chunk{seq: seq, table: qn, info: info, lo: lo, hi: hi, last: hi == nil, done: make(chan struct{})}
			seq++
			if !r.send(ch, true) {
				return
			}
			if hi == nil {
				break
			}
			lo = hi
		}
	}
}

// reportPlan reports a table's estimated size for the progress metrics:
// InnoDB's TABLE_ROWS estimate, in chunks of SnapshotChunkSize. A resumed
// table counts its chunks from the resume point.
func (r *snapshotRun) reportPlan(c *conn, info *tableInfo) {
	var rows int64
	_ = c.stream(r.ctx, "SELECT COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		[]any{info.table.Database, info.table.Name}, func(row []gomysql.FieldValue) error {
			if len(row) > 0 {
				if v, ok := row[0].Value().(uint64); ok {
					rows = int64(v)
				} else if v, ok := row[0].Value().(int64); ok {
					rows = v
				}
			}
			return nil
		})
	chunks := 1
	if len(info.keyCols) > 0 && rows > 0 {
		chunks = int((rows + int64(r.s.cfg.SnapshotChunkSize) - 1) / int64(r.s.cfg.SnapshotChunkSize))
	}
	capture.ReportSnapshotPlan(r.em, info.table.QualifiedName(), 0, chunks, rows)
}

func (r *snapshotRun) send(ch *chunk, work bool) bool {
	select {
	case r.ordered <- ch:
	case <-r.ctx.Done():
		return false
	}
	r.signal()
	if !work {
		return true
	}
	select {
	case r.jobs <- ch:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// lockSetup takes the global read lock, opens one consistent snapshot per
// worker at the same binlog position, and releases the lock.
func (r *snapshotRun) lockSetup(c *conn) ([]*conn, error) {
	for _, qn := range r.st.Tables {
		r.tblRegs[qn] = r.tracker.register(qn)
	}
	conns := make([]*conn, 0, r.s.cfg.SnapshotWorkers)
	fail := func(err error) ([]*conn, error) {
		for _, wc := range conns {
			wc.Close()
		}
		_, _ = c.query(r.ctx, "UNLOCK TABLES")
		return nil, err
	}
	for i := 0; i < r.s.cfg.SnapshotWorkers; i++ {
		wc, err := r.s.dial(r.ctx)
		if err != nil {
			return fail(err)
		}
		conns = append(conns, wc)
		if _, err := wc.query(r.ctx, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
			return fail(err)
		}
	}
	start := time.Now()
	if _, err := c.query(r.ctx, "FLUSH TABLES WITH READ LOCK"); err != nil {
		return fail(privilegeHint(fmt.Errorf("mysql: snapshot lock: %w", err), "RELOAD"))
	}
	for _, wc := range conns {
		if _, err := wc.query(r.ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
			return fail(err)
		}
	}
	pos, _, err := masterStatus(r.ctx, c, gomysql.MySQLFlavor)
	if err != nil {
		return fail(err)
	}
	if _, err := c.query(r.ctx, "UNLOCK TABLES"); err != nil {
		return fail(err)
	}
	r.s.log.Info("mysql: snapshot lock held", "duration", time.Since(start).Round(time.Millisecond), "position", pos.String())
	for _, reg := range r.tblRegs {
		r.tracker.setLow(reg, pos)
	}
	r.mu.Lock()
	r.lockPos, r.locked = pos, true
	r.mu.Unlock()
	r.signal()
	return conns, nil
}

func (r *snapshotRun) worker(lockConn *conn) {
	c := lockConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for ch := range r.jobs {
		if c == nil {
			var err error
			if c, err = r.s.dial(r.ctx); err != nil {
				ch.err = err
				close(ch.done)
				r.fail(err)
				return
			}
			if _, err := c.query(r.ctx, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
				ch.err = err
				close(ch.done)
				r.fail(err)
				return
			}
		}
		var err error
		if lockConn != nil {
			err = r.readLocked(c, ch)
		} else {
			err = r.readWatermarked(c, ch)
		}
		if isNoSuchTable(err) {
			// Dropped meanwhile: the chunk is empty (the stream has the DROP).
			if ch.reg != nil {
				r.tracker.release(ch.reg)
			}
			ch.rows, ch.reg, ch.gone, err = nil, nil, true, nil
		}
		if err != nil {
			ch.err = fmt.Errorf("mysql: snapshot of %s: %w", ch.table, err)
		}
		close(ch.done)
		r.signal()
		if err != nil {
			return
		}
	}
}

func (r *snapshotRun) readLocked(c *conn, ch *chunk) error {
	r.mu.Lock()
	ch.low, ch.high = r.lockPos, r.lockPos
	r.mu.Unlock()
	rows, err := r.selectChunk(c, ch)
	ch.rows = rows
	return err
}

// readWatermarked reads one chunk in its own consistent snapshot.
func (r *snapshotRun) readWatermarked(c *conn, ch *chunk) error {
	for attempt := 1; ; attempt++ {
		reg := r.tracker.register(ch.table)
		low, high, err := r.openSnapshot(c)
		if err != nil {
			r.tracker.release(reg)
			return err
		}
		if low.Compare(reg.start) < 0 {
			// The stream processed events after low before we registered:
			// they were not recorded. Read again at a later position.
			_, _ = c.query(r.ctx, "ROLLBACK")
			r.tracker.release(reg)
			if attempt >= 20 {
				return fmt.Errorf("snapshot position %s stays behind the stream position %s", low, reg.start)
			}
			time.Sleep(time.Duration(attempt) * 10 * time.Millisecond)
			continue
		}
		if r.flavor != gomysql.MariaDBFlavor {
			// MySQL's SHOW MASTER STATUS may count a transaction that is in
			// the binlog but not yet visible to the new snapshot. Treating
			// every change since registration as newer than the chunk is
			// safe (the stream emitted those changes) and closes that window.
			low = reg.start
		}
		r.tracker.setLow(reg, low)
		rows, err := r.selectChunk(c, ch)
		if _, cerr := c.query(r.ctx, "COMMIT"); err == nil {
			err = cerr
		}
		if err != nil {
			r.tracker.release(reg)
			return err
		}
		ch.rows, ch.low, ch.high, ch.reg = rows, low, high, reg
		return nil
	}
}

// openSnapshot starts a consistent-snapshot transaction and returns its low
// and high watermarks.
func (r *snapshotRun) openSnapshot(c *conn) (low, high binlogPos, err error) {
	if r.flavor == gomysql.MariaDBFlavor {
		if _, err = c.query(r.ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
			return
		}
		// MariaDB reports the binlog position that matches the snapshot
		// exactly (commits are ordered with the snapshot's creation).
		res, qerr := c.query(r.ctx, "SHOW STATUS LIKE 'binlog_snapshot_%'")
		if qerr != nil {
			return low, high, qerr
		}
		for _, row := range rowsOf(res) {
			switch strings.ToLower(row[0]) {
			case "binlog_snapshot_file":
				low.File = row[1]
			case "binlog_snapshot_position":
				p, _ := strconv.ParseUint(row[1], 10, 32)
				low.Pos = uint32(p)
			}
		}
		if low.File == "" {
			return low, high, errors.New("binlog_snapshot_file is empty: is binary logging on?")
		}
		return low, low, nil
	}
	if low, _, err = masterStatus(r.ctx, c, r.flavor); err != nil {
		return
	}
	if _, err = c.query(r.ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
		return
	}
	high, _, err = masterStatus(r.ctx, c, r.flavor)
	return
}

func isNoSuchTable(err error) bool {
	var me *gomysql.MyError
	return errors.As(err, &me) && me.Code == gomysql.ER_NO_SUCH_TABLE
}
