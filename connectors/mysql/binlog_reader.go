package mysql

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/event"
)

// streamer reads the binlog and emits row changes. All its fields are owned
// by the goroutine running Source.Run, except those guarded by pubMu.
//
// Transaction model. A transaction starts at a GTID event (MariaDB: unless
// flagged standalone; MySQL: followed by "BEGIN") or at a "BEGIN" query
// event, and ends at an XID event, a "COMMIT"/"ROLLBACK" query event, or -
// for a standalone statement such as DDL - at that statement's query event.
// Rows are emitted as they are decoded; memory stays bounded whatever the
// transaction size. At the end of a transaction that emitted rows, the
// Emitter's Commit receives the checkpoint of the position after it.
type streamer struct {
	s      *Source
	info   *serverInfo
	em     capture.Emitter
	schema *schemaCache

	// chg and fields are the one change being emitted: Emit does not keep
	// it (capture.Emitter), so every row reuses them instead of allocating.
	chg    event.Change
	fields [5]event.Field
	// imgBefore and imgAfter are the images of the direct row decoder
	// (directRows), reused for every row for the same reason.
	imgBefore, imgAfter []event.Value

	pos  binlogPos    // transaction boundary: after the last complete transaction
	gtid *gtidTracker // GTID set up to pos
	cur  binlogPos    // after the last event read (may be inside a transaction)
	txn  txnState

	// resume is set after a reconnect in the middle of a transaction: that
	// transaction is read again from its start, and its first rows (already
	// emitted into the still-open Emitter transaction) are skipped.
	resume *resumeState

	committed     binlogPos // pos of the last Emitter.Commit
	committedGTID string
	lastCommit    time.Time

	dump       *dumpConn
	free       chan *bytes.Buffer // packet buffers back to the dump's reader (dumpConn)
	events     chan streamItem
	stopReader context.CancelFunc
	lastRecv   time.Time
	reconnects int

	snapState *snapshotState // checkpointed snapshot progress, nil if none
	snap      *snapshotRun   // the running snapshot, nil if none

	pubMu  sync.Mutex
	pubPos binlogPos
}

type txnState struct {
	open       bool
	standalone bool // GTID seen, no BEGIN: the next query event is the whole transaction
	gtidEv     replication.Event
	gtid       string
	id         string    // TxID: GTID, or "file:pos" of the BEGIN
	begin      binlogPos // start of the GTID / BEGIN event
	ts         time.Time
	rows       int64 // rows of this transaction read so far (the next Index)
	skip       int64 // rows to skip after a mid-transaction reconnect
	emitted    int64
	perTable   map[string]int64
	// pos, gtidVal and fileVal are Change.Pos and the envelope's gtid and
	// file values, rendered once per transaction.
	pos     string
	gtidVal event.Value
	fileVal event.Value
	fileFor string
}

type resumeState struct {
	id   string
	rows int64
}

type streamItem struct {
	ev  *replication.BinlogEvent
	buf *bytes.Buffer // the packet ev's values point into, if pooled (dumpConn); released once ev is handled
	// rows is a rows event's row data, in buf, left undecoded for the
	// direct row decoder (rowsDecoder, rows.go); nil when go-mysql decoded
	// it into the event's Rows.
	rows []byte
	err  error
}

func newStreamer(s *Source, info *serverInfo, cp *checkpoint, em capture.Emitter) (*streamer, error) {
	g, err := newGTIDTracker(info.Flavor, cp.GTID)
	if err != nil {
		return nil, err
	}
	st := &streamer{
		s: s, info: info, em: em,
		schema:    newSchemaCache(s.filter, s.cfg.Keys, info.Collations, s.log),
		pos:       cp.position(),
		gtid:      g,
		snapState: cp.Snapshot,
	}
	st.cur = st.pos
	st.committed, st.committedGTID = st.pos, cp.GTID
	st.lastCommit = time.Now()
	st.publish()
	return st, nil
}

// position returns the boundary position (safe from other goroutines).
func (st *streamer) position() binlogPos {
	st.pubMu.Lock()
	defer st.pubMu.Unlock()
	return st.pubPos
}

func (st *streamer) publish() {
	st.pubMu.Lock()
	st.pubPos = st.pos
	st.pubMu.Unlock()
}

// checkpoint encodes the position after the last complete transaction and
// the snapshot progress.
func (st *streamer) checkpoint() []byte {
	cp := checkpoint{Flavor: st.info.Flavor, File: st.pos.File, Pos: st.pos.Pos, Snapshot: st.snapState.clone()}
	if st.info.GTIDMode {
		cp.GTID = st.gtid.String()
	}
	return cp.encode()
}

func (st *streamer) commit(ctx context.Context) error {
	if err := st.em.Commit(ctx, st.checkpoint()); err != nil {
		return err
	}
	st.committed, st.committedGTID = st.pos, st.gtid.String()
	st.lastCommit = time.Now()
	return nil
}

func (st *streamer) useGTID() bool { return st.info.GTIDMode && st.gtid.String() != "" }

// run is the main loop: binlog events, snapshot chunks, periodic progress.
func (st *streamer) run(ctx context.Context) error {
	if err := st.connectRetry(ctx); err != nil {
		return st.finish(ctx, err)
	}
	if st.snapState != nil {
		if err := st.startSnapshot(ctx); err != nil {
			return st.finish(ctx, err)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if !st.txn.open {
			if err := st.atBoundary(ctx); err != nil {
				return st.finish(ctx, err)
			}
		}
		evCh := st.events
		var notify <-chan struct{}
		if st.snap != nil {
			notify = st.snap.notify
			if !st.txn.open && st.snap.holdStream(st.pos) {
				evCh = nil // lock mode: the stream waits at the snapshot position
			}
		}
		select {
		case <-ctx.Done():
			return st.finish(ctx, ctx.Err())
		case it := <-evCh:
			if it.err != nil {
				if err := st.onStreamError(ctx, it.err); err != nil {
					return st.finish(ctx, err)
				}
				continue
			}
			err := st.handle(ctx, it.ev, it.rows)
			st.release(it) // nothing of the event is kept after handle (dumpConn)
			if err != nil {
				return st.finish(ctx, err)
			}
			st.lastRecv = time.Now() // after handle: time spent in Emit does not count
		case <-notify:
		case <-tick.C:
			if evCh != nil && len(st.events) == 0 && time.Since(st.lastRecv) > 3*st.heartbeat()+10*time.Second {
				// Neither events nor heartbeats: the connection is dead.
				if err := st.onStreamError(ctx, errors.New("no binlog events or heartbeats received")); err != nil {
					return st.finish(ctx, err)
				}
				continue
			}
			if hb := st.s.cfg.HeartbeatInterval; hb > 0 && !st.txn.open && st.pos != st.committed && time.Since(st.lastCommit) >= hb {
				// Only uncaptured tables changed: move the checkpoint anyway
				// so a restart does not re-read them.
				if err := st.commit(ctx); err != nil {
					return st.finish(ctx, err)
				}
			}
		}
	}
}

// finish maps the end of Run: nil when ctx was cancelled (a requested stop).
func (st *streamer) finish(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// handle processes one binlog event.
// handle applies one event. rows is a rows event's undecoded row data
// (streamItem.rows), nil for every other event.
func (st *streamer) handle(ctx context.Context, ev *replication.BinlogEvent, rows []byte) error {
	h := ev.Header
	if _, hb := ev.Event.(*replication.HeartbeatEvent); !hb {
		if h.LogPos > 0 && h.Flags&replication.LOG_EVENT_ARTIFICIAL_F == 0 {
			st.cur.Pos = h.LogPos
		}
		st.s.caughtUp.Store(false)
		st.reconnects = 0
		if st.snap != nil {
			st.snap.tracker.advance(st.cur)
		}
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		st.cur = binlogPos{File: string(e.NextLogName), Pos: uint32(e.Position)}
		if !st.txn.open && st.cur.Compare(st.pos) > 0 {
			st.pos = st.cur
			st.publish()
		}
	case *replication.MariadbGTIDEvent:
		return st.beginTxn(ev, gtidString(e), e.IsStandalone())
	case *replication.GTIDEvent:
		return st.beginTxn(ev, gtidString(e), true) // a BEGIN query follows for DML
	case *replication.GtidTaggedLogEvent:
		return st.beginTxn(ev, gtidString(e), true)
	case *replication.QueryEvent:
		return st.onQuery(ctx, ev, e)
	case *replication.TableMapEvent:
		_, err := st.schema.onTableMap(e)
		return err
	case *replication.RowsEvent:
		return st.onRows(ctx, ev, e, rows)
	case *replication.XIDEvent:
		if st.txn.open {
			return st.endTxn(ctx, h)
		}
	case *replication.HeartbeatEvent:
		return st.onHeartbeat(ctx, h, e)
	case *replication.TransactionPayloadEvent:
		for _, inner := range e.Events {
			if err := st.handle(ctx, inner, nil); err != nil {
				return err
			}
		}
	case *replication.FormatDescriptionEvent, *replication.MariadbGTIDListEvent,
		*replication.MariadbBinlogCheckPointEvent, *replication.PreviousGTIDsEvent:
		// Events between transactions (file headers, checkpoints) are
		// boundaries too: a dump may start after them.
		if !st.txn.open && h.LogPos > 0 && st.cur.Compare(st.pos) > 0 {
			st.pos = st.cur
			st.publish()
		}
	}
	return nil
}

func eventStart(h *replication.EventHeader) uint32 {
	if h.LogPos >= h.EventSize {
		return h.LogPos - h.EventSize
	}
	return h.LogPos
}

func (st *streamer) beginTxn(ev *replication.BinlogEvent, gtid string, standalone bool) error {
	if st.txn.open {
		st.s.log.Warn("mysql: transaction without end event", "txid", st.txn.id, "at", st.cur.String())
	}
	h := ev.Header
	begin := binlogPos{File: st.cur.File, Pos: eventStart(h)}
	st.txn = txnState{open: true, standalone: standalone, gtidEv: ev.Event, gtid: gtid, begin: begin,
		ts: time.Unix(int64(h.Timestamp), 0).UTC()}
	if g, ok := ev.Event.(*replication.GTIDEvent); ok && g.ImmediateCommitTimestamp > 0 {
		// MySQL >= 8.0.1 records the commit time in microseconds.
		st.txn.ts = time.UnixMicro(int64(g.ImmediateCommitTimestamp)).UTC()
	}
	st.txn.id = gtid
	if gtid == "" {
		st.txn.id = begin.String()
	}
	if st.resume != nil {
		r := st.resume
		st.resume = nil
		if r.id != st.txn.id {
			// The binlog is immutable, so this cannot happen unless the
			// server's history changed under us; the rows already emitted
			// belong to another transaction: fail, capture aborts them.
			return fmt.Errorf("mysql: after reconnecting, the binlog continues with transaction %s instead of %s (%d rows of it already emitted)", st.txn.id, r.id, r.rows)
		}
		// Those rows are in the Emitter's open transaction already: the
		// transaction's end must Commit even if nothing new is emitted.
		st.txn.skip, st.txn.emitted = r.rows, r.rows
	}
	return nil
}

func (st *streamer) onQuery(ctx context.Context, ev *replication.BinlogEvent, e *replication.QueryEvent) error {
	sql := strings.TrimSpace(string(e.Query))
	word := strings.ToUpper(firstWord(sql))
	switch {
	case word == "BEGIN" || (word == "START" && strings.EqualFold(sql, "START TRANSACTION")):
		if !st.txn.open {
			if err := st.beginTxn(ev, "", false); err != nil {
				return err
			}
		}
		st.txn.standalone = false
		return nil
	case word == "COMMIT" || (word == "ROLLBACK" && !strings.Contains(strings.ToUpper(sql), " TO ")):
		if st.txn.open {
			return st.endTxn(ctx, ev.Header)
		}
		return nil
	case word == "SAVEPOINT" || word == "ROLLBACK":
		return nil
	}
	if st.txn.open && !st.txn.standalone {
		// A statement inside a row-based transaction (e.g. logged as a
		// statement by MIXED format): it carries no row images.
		return nil
	}
	if !st.txn.open {
		if err := st.beginTxn(ev, "", true); err != nil {
			return err
		}
	}
	if err := st.onDDL(ctx, ev, e, sql); err != nil {
		return err
	}
	return st.endTxn(ctx, ev.Header)
}

func firstWord(s string) string {
	for i, r := range s {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '(' || r == ';' {
			return s[:i]
		}
	}
	return s
}

// onDDL handles a standalone statement. Schema changes need no work here:
// the next TABLE_MAP of a changed table carries its new shape. TRUNCATE of
// a captured table becomes an OpTruncate change.
func (st *streamer) onDDL(ctx context.Context, ev *replication.BinlogEvent, e *replication.QueryEvent, sql string) error {
	db, table, ok := truncateTarget(sql, string(e.Schema))
	if !ok {
		return nil
	}
	if !st.s.filter.Match(db, table) {
		return nil
	}
	t := st.schema.latest(db, table)
	if t == nil {
		t = &event.Table{Connector: connectorName, Database: db, Name: table}
	}
	ch := st.newChange(event.OpTruncate, t, nil, nil, ev.Header, 0)
	return st.emit(ctx, ch, db+"."+table)
}

func (st *streamer) endTxn(ctx context.Context, h *replication.EventHeader) error {
	st.pos = binlogPos{File: st.cur.File, Pos: h.LogPos}
	if st.txn.gtidEv != nil {
		if err := st.gtid.add(st.txn.gtidEv); err != nil {
			return err
		}
	}
	emitted := st.txn.emitted
	st.txn = txnState{}
	st.publish()
	if len(st.schema.byID) > 4096 {
		st.schema.byID = map[uint64]*tableMapEntry{}
	}
	if emitted > 0 {
		return st.commit(ctx)
	}
	return nil
}

func (st *streamer) onHeartbeat(ctx context.Context, h *replication.EventHeader, e *replication.HeartbeatEvent) error {
	if st.txn.open {
		return nil
	}
	st.s.caughtUp.Store(true)
	if e.Filename != "" && h.LogPos > 0 {
		// The server's dump thread has sent (or, by GTID, skipped as already
		// covered) everything before this position.
		hb := binlogPos{File: e.Filename, Pos: h.LogPos}
		if hb.Compare(st.pos) > 0 {
			st.pos, st.cur = hb, hb
			st.publish()
		}
	}
	if st.snap != nil {
		st.snap.tracker.advance(st.pos)
	}
	if st.pos != st.committed && st.s.cfg.HeartbeatInterval > 0 {
		return st.commit(ctx)
	}
	return nil
}

func (st *streamer) onRows(ctx context.Context, ev *replication.BinlogEvent, e *replication.RowsEvent, rows []byte) error {
	info, ok := st.schema.lookup(e.TableID)
	if !ok {
		return fmt.Errorf("mysql: rows event for table id %d without TABLE_MAP at %s", e.TableID, st.cur)
	}
	if info == nil {
		return nil // not captured
	}
	if !st.txn.open {
		if err := st.beginTxn(ev, "", false); err != nil {
			return err
		}
	}
	st.s.lastEventUnix.Store(int64(ev.Header.Timestamp))
	var op event.Op
	switch e.Type() {
	case replication.EnumRowsEventTypeInsert:
		op = event.OpCreate
	case replication.EnumRowsEventTypeUpdate:
		op = event.OpUpdate
	case replication.EnumRowsEventTypeDelete:
		op = event.OpDelete
	default:
		return fmt.Errorf("mysql: unknown rows event type at %s", st.cur)
	}
	qn := info.table.Database + "." + info.table.Name
	if rows != nil {
		if err := st.directRows(ctx, ev, e, info, op, qn, rows); err != nil {
			return fmt.Errorf("mysql: table %s at %s: %w", qn, st.cur, err)
		}
		return nil
	}
	step := 1
	if op == event.OpUpdate {
		step = 2
	}
	for i := 0; i+step <= len(e.Rows); i += step {
		var before, after []event.Value
		var err error
		switch op {
		case event.OpCreate:
			after, err = st.convertRow(info, e, i)
		case event.OpDelete:
			before, err = st.convertRow(info, e, i)
		case event.OpUpdate:
			if before, err = st.convertRow(info, e, i); err == nil {
				after, err = st.convertRow(info, e, i+1)
			}
		}
		if err != nil {
			return fmt.Errorf("mysql: table %s at %s: %w", qn, st.cur, err)
		}
		if err := st.emitRow(ctx, ev, info, qn, op, before, after, int64(i/step)); err != nil {
			return err
		}
	}
	return nil
}

// directRows decodes a rows event's row data with the direct row decoder
// (rows.go) and emits each row. The images are the streamer's own, reused
// for every row: capture.Emitter keeps no image, and nothing else here keeps
// one past emitRow.
func (st *streamer) directRows(ctx context.Context, ev *replication.BinlogEvent, e *replication.RowsEvent, info *tableInfo, op event.Op, qn string, rows []byte) error {
	n := len(info.cols)
	if !info.direct {
		// rowsDecoder and schemaCache.build judge the same table map.
		return fmt.Errorf("row data left undecoded for a table the direct decoder does not know")
	}
	if int(e.ColumnCount) != n {
		return fmt.Errorf("rows event has %d columns, TABLE_MAP %d", e.ColumnCount, n)
	}
	if cap(st.imgBefore) < n {
		st.imgBefore, st.imgAfter = make([]event.Value, n), make([]event.Value, n)
	}
	st.s.directEvents.Add(1)
	r := newRowImages(rows, info, e.ColumnBitmap1, e.ColumnBitmap2)
	for row := int64(0); r.more(); row++ {
		var before, after []event.Value
		var err error
		switch op {
		case event.OpCreate:
			after = st.imgAfter[:n]
			err = r.next(0, after)
		case event.OpDelete:
			before = st.imgBefore[:n]
			err = r.next(0, before)
		case event.OpUpdate:
			before, after = st.imgBefore[:n], st.imgAfter[:n]
			if err = r.next(0, before); err == nil {
				if !r.more() {
					err = errShortRow
				} else {
					err = r.next(1, after)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("row %d: %w", row, err)
		}
		if err := st.emitRow(ctx, ev, info, qn, op, before, after, row); err != nil {
			return err
		}
	}
	clear(st.imgBefore)
	clear(st.imgAfter)
	return nil
}

// emitRow emits one row of a rows event: row is its index in the event.
func (st *streamer) emitRow(ctx context.Context, ev *replication.BinlogEvent, info *tableInfo, qn string, op event.Op, before, after []event.Value, row int64) error {
	if st.snap != nil {
		st.snap.observe(qn, info.table, before, after, st.cur)
	}
	if op == event.OpUpdate && event.KeyChanged(info.table, before, after) {
		// A key change is a delete of the old key and an insert of the
		// new one (as Debezium does), each in its own key's partition;
		// the insert takes the next row index.
		if err := st.emit(ctx, st.newChange(event.OpDelete, info.table, before, nil, ev.Header, row), qn); err != nil {
			return err
		}
		return st.emit(ctx, st.newChange(event.OpCreate, info.table, nil, after, ev.Header, row), qn)
	}
	return st.emit(ctx, st.newChange(op, info.table, before, after, ev.Header, row), qn)
}

// emit numbers a change within its transaction and hands it to the Emitter
// (unless it was already emitted before a mid-transaction reconnect).
func (st *streamer) emit(ctx context.Context, ch *event.Change, qn string) error {
	if st.txn.perTable == nil {
		st.txn.perTable = make(map[string]int64, 1)
	}
	st.txn.perTable[qn]++
	ch.Index = st.txn.rows
	ch.TableIndex = st.txn.perTable[qn]
	st.txn.rows++
	if ch.Index < st.txn.skip {
		return nil
	}
	st.txn.emitted++
	return st.em.Emit(ctx, ch)
}

// convertRow converts row i of e to event values in place: the row's slice
// becomes the change's image. go-mysql decodes every rows event into fresh
// slices and never touches them again, onRows converts each row once, and
// nothing reads e.Rows after onRows, so the slice is the image's alone; a
// copy would be one more allocation per row.
func (st *streamer) convertRow(info *tableInfo, e *replication.RowsEvent, i int) ([]event.Value, error) {
	raw := e.Rows[i]
	if len(raw) != len(info.cols) {
		return nil, fmt.Errorf("row has %d columns, TABLE_MAP %d", len(raw), len(info.cols))
	}
	for j, v := range raw {
		x, err := info.cols[j].fromBinlog(v)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", info.table.Columns[j].Name, err)
		}
		raw[j] = x
	}
	if i < len(e.SkippedColumns) {
		// Only with binlog_row_image other than FULL (a session may set it).
		for _, j := range e.SkippedColumns[i] {
			raw[j] = event.Unchanged{}
		}
	}
	return raw, nil
}

func (st *streamer) newChange(op event.Op, t *event.Table, before, after []event.Value, h *replication.EventHeader, row int64) *event.Change {
	ch := &st.chg
	*ch = event.Change{
		Op: op, Table: t, Before: before, After: after,
		Commit: st.txn.ts,
		TxID:   st.txn.id,
	}
	tx := &st.txn
	if tx.pos == "" {
		if tx.gtid != "" {
			tx.pos, tx.gtidVal = "gtid:"+tx.gtid, tx.gtid
		} else {
			tx.pos = "binlog:" + tx.begin.String()
		}
	}
	if tx.fileVal == nil || tx.fileFor != st.cur.File {
		tx.fileVal, tx.fileFor = st.cur.File, st.cur.File
	}
	ch.Pos = tx.pos
	st.fields = [5]event.Field{
		{Name: "file", Value: tx.fileVal},
		{Name: "pos", Value: int64(eventStart(h))},
		{Name: "gtid", Value: tx.gtidVal},
		{Name: "server_id", Value: int64(h.ServerID)},
		{Name: "row", Value: row},
	}
	ch.SourceFields = st.fields[:]
	return ch
}
