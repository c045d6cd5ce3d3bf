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
//     registration as newer is safe). If low is below the tracker's
//     position at registration the read is retried (the stream had passed
//     events the tracker did not record). Once the watermarks are known the
//     worker streams the chunk's rows, in key order, into byte-bounded
//     buffers (snapshot_rows.go) and commits.
//  3. The Run goroutine emits chunks in order, only between binlog
//     transactions, and only once its stream position Q has reached the
//     chunk's high watermark; it may start while the worker is still
//     reading, and then waits for the chunk's rows (the stream stays at Q
//     until the whole chunk is emitted). It drops every row whose key the
//     stream changed after low, and emits the rest as OpRead rows in source
//     transactions of at most partRows rows: each ends with a checkpoint
//     holding Q and, as the snapshot's resume point, the key of the part's
//     last row, or "chunk done" (its upper bound) after the chunk's last
//     part.
//
// Invariant: when a chunk is emitted at stream position Q, each of its
// emitted rows equals the row's state at Q. A row not changed in (low, Q] has
// the same state at Q as at the snapshot; a row changed in (low, Q] is
// dropped, and its latest state up to Q was already emitted by the stream
// (inserts and updates carry full after images; deletes remove it). Rows
// changed after Q follow the chunk in the stream. So replaying the emitted
// events in order, from any point on, converges on the table's contents, and
// every change is emitted once: the stream is never rewound. A part's
// checkpoint resumes the snapshot after the part's last key: the rows up to
// it are in Kafka, the rest of the chunk is read again as a new chunk with
// new watermarks, exactly as if the chunk had been cut there.
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

	// ready is closed once low, high and reg are set (the rows follow
	// through segs) or the read ended early; done once the read ended (err
	// and gone are set before).
	ready     chan struct{}
	done      chan struct{}
	readyShut bool // ready is closed (the worker's)
	low, high binlogPos
	reg       *registration
	err       error

	avail   chan struct{} // a segment was published or the read ended
	segs    []*segment    // rowBuffers.mu: published, not yet emitted
	pending int64         // rowBuffers.mu: bytes of the chunk's segments not yet released
	ended   bool          // rowBuffers.mu: no more segments
	wrote   bool          // a segment was published (the worker's)
}

func newChunk() *chunk {
	return &chunk{ready: make(chan struct{}), done: make(chan struct{}), avail: make(chan struct{}, 1)}
}

// goneChunk is a table that no longer exists: nothing to read.
func goneChunk(seq int64, table string) *chunk {
	ch := newChunk()
	ch.seq, ch.table, ch.last, ch.gone, ch.ended, ch.readyShut = seq, table, true, true, true, true
	close(ch.ready)
	close(ch.done)
	return ch
}

type snapshotRun struct {
	s       *Source
	st      *snapshotState // initial progress (the planner's copy)
	mode    string
	flavor  string
	tracker *dirtyTracker
	rows    *rowBuffers
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
	r.rows = newRowBuffers(rctx, snapshotBufferBytes, headBufferBytes)
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
			ch := goneChunk(seq, qn)
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
				ch := goneChunk(seq, qn)
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
			ch := newChunk()
			ch.seq, ch.table, ch.info, ch.lo, ch.hi, ch.last = seq, qn, info, lo, hi, hi == nil
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
		if err := r.session(wc); err != nil {
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

// testHookSnapshotOpened, if set (tests only), runs after a chunk's
// consistent snapshot opened, before its rows are read.
var testHookSnapshotOpened func()

// session prepares a worker connection: repeatable read, and a
// net_write_timeout long enough for a read that waits for the row budget
// (snapshot_rows.go). While a worker waits, the server blocks writing the
// result to the connection, and would drop it after net_write_timeout
// (default 60 s); the wait lasts until the Run goroutine has emitted the
// chunks before this one, which takes longer only while Kafka does not
// accept records.
func (r *snapshotRun) session(c *conn) error {
	if _, err := c.query(r.ctx, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		return err
	}
	_, err := c.query(r.ctx, "SET SESSION net_write_timeout = 3600")
	return err
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
			if c, err = r.s.dial(r.ctx); err == nil {
				err = r.session(c)
			}
			if err != nil {
				r.endRead(ch, err)
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
		if isNoSuchTable(err) && !ch.wrote {
			// Dropped meanwhile: the chunk is empty (the stream has the
			// DROP). Its registration, if any, is released at emission.
			ch.gone, err = true, nil
		}
		if err != nil {
			err = fmt.Errorf("mysql: snapshot of %s: %w", ch.table, err)
		}
		r.endRead(ch, err)
		if err != nil {
			return
		}
	}
}

// setReady publishes ch's watermarks and registration to the Run goroutine.
func (r *snapshotRun) setReady(ch *chunk) {
	ch.readyShut = true
	close(ch.ready)
	r.signal()
}

// endRead ends ch's read with err.
func (r *snapshotRun) endRead(ch *chunk, err error) {
	ch.err = err
	r.rows.end(ch)
	if !ch.readyShut {
		ch.readyShut = true
		close(ch.ready)
	}
	close(ch.done)
	r.signal()
}

func (r *snapshotRun) readLocked(c *conn, ch *chunk) error {
	r.mu.Lock()
	ch.low, ch.high = r.lockPos, r.lockPos
	r.mu.Unlock()
	r.setReady(ch)
	return r.selectChunk(c, ch)
}

// readWatermarked reads one chunk in its own consistent snapshot. Once the
// chunk is ready its registration belongs to the Run goroutine, which
// releases it when it has emitted the chunk (or the run ends).
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
		if testHookSnapshotOpened != nil {
			testHookSnapshotOpened()
		}
		ch.low, ch.high, ch.reg = low, high, reg
		r.setReady(ch)
		err = r.selectChunk(c, ch)
		if _, cerr := c.query(r.ctx, "COMMIT"); err == nil {
			err = cerr
		}
		return err
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
