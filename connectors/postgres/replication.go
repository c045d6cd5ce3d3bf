package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/event"
)

// The stream. pgoutput (proto_version 2, streaming off, messages on) sends
// each committed transaction at its commit, in commit order: BEGIN, the
// Relation messages it needs, the row changes, COMMIT. Rows are emitted as
// they arrive: nothing of a transaction is buffered here, so a transaction
// of any size takes bounded memory. Because streaming of in-progress
// transactions is off, PostgreSQL itself keeps a large transaction until its
// commit, spilling it to disk beyond logical_decoding_work_mem.
//
// Three goroutines share the replication connection:
//   - the reader receives CopyData, answers nothing itself, and hands WAL
//     data to the main loop through a bounded channel;
//   - the status loop sends standby status updates confirming the LSN last
//     passed to Ack (never the server's WAL end): every 10 s, when the
//     server asks for a reply, and within a second of an Ack;
//   - the main loop (Run's goroutine) decodes messages and calls the
//     Emitter. It may block in Emit for as long as the Emitter applies
//     backpressure; the status loop keeps the connection alive meanwhile.

// streamRel is one version of a relation as the stream defines it.
type streamRel struct {
	table    *event.Table
	decs     []decoder
	captured bool
	// Catch-up filter (nil when the relation is not in the snapshot state).
	snap   *snapTable
	snapIx []int // column index of each snap.Key column in this version
}

type streamer struct {
	s        *Source
	em       capture.Emitter
	meta     *pgx.Conn
	db       string
	captured map[uint32]bool
	// relsByName are the captured tables (for Resnapshot).
	relsByName []*relation
	rels       map[uint32]*streamRel
	typNames   map[[2]uint32]string

	// rows is the storage of the row message being applied (parseRowMessage),
	// chg the change being emitted (Emit keeps neither).
	rows rowScratch
	chg  event.Change

	// pos is the current checkpoint: lsn advances at each commit and
	// heartbeat; Snap is the catch-up filter state while its window is open.
	pos *checkpoint

	// Transaction state.
	inTxn      bool
	skip       bool
	finalLSN   pglogrepl.LSN
	commitTime time.Time
	txID       string
	txPos      string
	index      int64
	tableIdx   map[uint32]int64
	lsnField   []event.Field

	window *resnapWindow // open re-snapshot chunk
}

func (s *Source) stream(ctx context.Context, em capture.Emitter, meta *pgx.Conn, db string, rels []*relation, cp *checkpoint) error {
	st := &streamer{
		s: s, em: em, meta: meta, db: db,
		captured:   map[uint32]bool{},
		relsByName: rels,
		rels:       map[uint32]*streamRel{},
		typNames:   map[[2]uint32]string{},
		pos:        cp,
		tableIdx:   map[uint32]int64{},
	}
	for _, r := range rels {
		st.captured[r.oid] = true
	}
	st.dropFilterIfPassed()

	repl, err := s.startReplication(ctx, cp.lsn)
	if err != nil {
		return err
	}
	closeRepl := func() { repl.Close(context.Background()) }
	s.log.Info("streaming", "lsn", cp.lsn, "publication", s.pub)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writeMu sync.Mutex
	defer func() {
		cancel()
		wg.Wait()
		// Confirm the last ack on the way out (best effort): the reader's
		// cancelled receive has cleared the connection's deadline again.
		if lsn := s.acked.Load(); lsn != 0 {
			_ = pglogrepl.SendStandbyStatusUpdate(context.Background(), repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(lsn)})
		}
		closeRepl()
	}()
	msgs := make(chan *msgBatch, readAhead)
	free := make(chan *msgBatch, readAhead+2)
	errc := make(chan error, 3)
	replyReq := make(chan struct{}, 1)

	wg.Add(3)
	go func() { defer wg.Done(); s.readLoop(ctx, repl, msgs, free, replyReq, errc) }()
	go func() { defer wg.Done(); s.statusLoop(ctx, repl, &writeMu, replyReq, errc) }()
	go func() { defer wg.Done(); s.heartbeatLoop(ctx) }()

	if err := st.nextChunk(ctx); err != nil { // a re-snapshot in the checkpoint
		return err
	}
	for {
		if ctx.Err() != nil { // select picks ready cases at random
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		case req := <-s.resnap:
			st.queueResnap(req)
			if err := st.nextChunk(ctx); err != nil {
				return err
			}
		case batch := <-msgs:
			for _, data := range batch.msgs {
				err := st.handle(ctx, data)
				if err == nil && st.window == nil && len(st.pos.Resnap) > 0 {
					err = st.nextChunk(ctx)
				}
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return err
				}
			}
			// Every message of the batch is handled and nothing keeps
			// one (msgBatch): its arena may take the next messages.
			batch.recycle(free)
		}
	}
}

// slotBusyWait bounds how long START_REPLICATION waits for a slot still
// held by another walsender: the one of a previous run exits shortly after
// its client closed, or after wal_sender_timeout if the client vanished.
const slotBusyWait = 75 * time.Second

// startReplication opens the replication connection and starts streaming
// at lsn, waiting for the slot while another walsender still holds it.
func (s *Source) startReplication(ctx context.Context, lsn pglogrepl.LSN) (*pgconn.PgConn, error) {
	args := []string{
		"proto_version '2'",
		"publication_names " + quoteLiteral(s.pub),
		"messages 'true'",
	}
	deadline := time.Now().Add(slotBusyWait)
	for {
		repl, err := s.conn.connectReplication(ctx)
		if err != nil {
			return nil, err
		}
		err = pglogrepl.StartReplication(ctx, repl, s.slot, lsn, pglogrepl.StartReplicationOptions{
			Mode: pglogrepl.LogicalReplication, PluginArgs: args,
		})
		if err == nil {
			return repl, nil
		}
		repl.Close(context.Background())
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55006" && time.Now().Before(deadline) { // object_in_use
			s.log.Info("replication slot is still in use, waiting", "err", pe.Message)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		return nil, fmt.Errorf("postgres: starting replication on slot %q at LSN %s: %w", s.slot, lsn, err)
	}
}

// readLoop receives replication messages until ctx ends or the connection
// fails.
//
// Messages are handed over in batches, not one by one, to spare a goroutine
// hand-off per row. A batch is sent at every message that can end a unit of
// work (commit, a logical decoding message, a relation or type message),
// at 256 messages or 1 MiB, and when a keepalive shows the server is idle,
// so nothing waits in a batch while the server has nothing more to send.
// The channel holds readAhead batches: the bound on what is read ahead.
// Batches come from free, where the stream puts them back once handled.
func (s *Source) readLoop(ctx context.Context, repl *pgconn.PgConn, msgs chan<- *msgBatch, free chan *msgBatch, replyReq chan<- struct{}, errc chan<- error) {
	batch := nextBatch(free)
	flush := func() bool {
		if len(batch.msgs) == 0 {
			return true
		}
		select {
		case msgs <- batch:
		case <-ctx.Done():
			return false
		}
		batch = nextBatch(free)
		return true
	}
	// Receive without a context: pgconn would set up (and allocate) a
	// context watcher per message. Cancellation instead sets a past read
	// deadline, which ends the blocked receive with a timeout (pgconn keeps
	// the connection open on timeouts); the deadline is cleared on the way
	// out so the final status update can still be written.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = repl.Conn().SetReadDeadline(time.Now())
	})
	defer func() {
		if !stop() {
			<-fired
			_ = repl.Conn().SetReadDeadline(time.Time{})
		}
	}()
	for {
		msg, err := repl.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() == nil {
				errc <- fmt.Errorf("postgres: replication connection of slot %q: %w", s.slot, err)
			}
			return
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					errc <- fmt.Errorf("postgres: keepalive: %w", err)
					return
				}
				if ka.ReplyRequested {
					select {
					case replyReq <- struct{}{}:
					default:
					}
				}
				if !flush() {
					return
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					errc <- fmt.Errorf("postgres: XLogData: %w", err)
					return
				}
				data := batch.add(xld.WALData) // a copy: m.Data is reused by the next receive
				if len(data) == 0 || endsUnit(data[0]) || len(batch.msgs) >= 256 || batch.size >= 1<<20 {
					if !flush() {
						return
					}
				}
			}
		case *pgproto3.ErrorResponse:
			errc <- fmt.Errorf("postgres: replication on slot %q: %w", s.slot, pgconn.ErrorResponseToPgError(m))
			return
		case *pgproto3.CopyDone:
			errc <- fmt.Errorf("postgres: server ended replication on slot %q", s.slot)
			return
		}
	}
}

// endsUnit reports whether a pgoutput message type may be the last the
// server sends for a while: commit, logical decoding message, relation and
// type (sent before the changes that need them, and possibly alone), origin,
// truncate, and the streaming-mode stop, commit and abort.
func endsUnit(t byte) bool {
	switch t {
	case 'C', 'M', 'R', 'Y', 'O', 'T', 'E', 'c', 'A':
		return true
	}
	return false
}

// statusLoop confirms the acknowledged LSN to the server.
func (s *Source) statusLoop(ctx context.Context, repl *pgconn.PgConn, writeMu *sync.Mutex, replyReq <-chan struct{}, errc chan<- error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var sent uint64
	last := time.Now()
	send := func() bool {
		lsn := s.acked.Load()
		writeMu.Lock()
		err := pglogrepl.SendStandbyStatusUpdate(ctx, repl, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pglogrepl.LSN(lsn),
			WALFlushPosition: pglogrepl.LSN(lsn),
			WALApplyPosition: pglogrepl.LSN(lsn),
		})
		writeMu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				errc <- fmt.Errorf("postgres: sending standby status on slot %q: %w", s.slot, err)
			}
			return false
		}
		sent, last = lsn, time.Now()
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return // stream() confirms the last ack after the loops stopped
		case <-replyReq:
			if !send() {
				return
			}
		case <-s.ackSignal:
			// Coalesced by the ticker: at most one update per second.
		case <-tick.C:
			if s.acked.Load() != sent || time.Since(last) >= s.statusEvery {
				if !send() {
					return
				}
			}
		}
	}
}

// handle decodes and applies one pgoutput message.
func (st *streamer) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	var msg pglogrepl.Message
	var err error
	switch data[0] {
	case 'I', 'U', 'D':
		msg, err = parseRowMessage(data, &st.rows)
	default:
		msg, err = pglogrepl.Parse(data)
	}
	if err != nil {
		return fmt.Errorf("postgres: decoding pgoutput message %q: %w", data[0], err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		st.begin(m)
	case *pglogrepl.CommitMessage:
		return st.commit(ctx, m)
	case *pglogrepl.RelationMessage:
		return st.relation(ctx, m)
	case *pglogrepl.InsertMessage:
		return st.insert(ctx, m)
	case *pglogrepl.UpdateMessage:
		return st.update(ctx, m)
	case *pglogrepl.DeleteMessage:
		return st.delete(ctx, m)
	case *pglogrepl.TruncateMessage:
		return st.truncate(ctx, m)
	case *pglogrepl.LogicalDecodingMessage:
		return st.message(ctx, m)
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
		// Types are resolved through the catalog; origins are not used.
	}
	return nil
}

func (st *streamer) begin(m *pglogrepl.BeginMessage) {
	st.inTxn = true
	// Invariant 1 (checkpoint.go): a transaction whose commit LSN is below
	// the checkpoint LSN ended at or before it and is already emitted.
	st.skip = m.FinalLSN < st.pos.lsn
	st.finalLSN = m.FinalLSN
	st.commitTime = m.CommitTime.UTC().Truncate(time.Microsecond)
	st.txID = strconv.FormatUint(uint64(m.Xid), 10)
	st.txPos = "lsn:" + m.FinalLSN.String()
	st.index = 0
	clear(st.tableIdx)
	st.lsnField = []event.Field{{Name: "lsn", Value: uint64(m.FinalLSN)}}
}

func (st *streamer) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	if !st.inTxn {
		return fmt.Errorf("postgres: COMMIT at %s without BEGIN", m.CommitLSN)
	}
	st.inTxn = false
	if st.skip {
		return nil
	}
	st.pos.lsn = m.TransactionEndLSN
	st.dropFilterIfPassed()
	return st.em.Commit(ctx, st.pos.encode())
}

// message handles logical decoding messages: heartbeats advance the
// position with an empty Commit.
func (st *streamer) message(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) error {
	if m.Transactional || st.inTxn || m.LSN <= st.pos.lsn {
		return nil // not ours, or replayed from before the checkpoint
	}
	switch m.Prefix {
	case heartbeatPrefix:
		st.pos.lsn = m.LSN
		st.dropFilterIfPassed()
		return st.em.Commit(ctx, st.pos.encode())
	case watermarkPrefix:
		return st.watermark(ctx, m)
	}
	return nil
}

// dropFilterIfPassed ends the snapshot catch-up window once the position is
// past every chunk's read point (invariant 4).
func (st *streamer) dropFilterIfPassed() {
	sn := st.pos.Snap
	if sn == nil || !sn.Done {
		return
	}
	if st.pos.lsn >= sn.maxPoint() {
		st.pos.Snap = nil
		for _, r := range st.rels {
			r.snap, r.snapIx = nil, nil
		}
	}
}

// relation defines a new version of a relation: a new *event.Table with the
// columns as sent (added, dropped and retyped columns take effect here).
func (st *streamer) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	qn := m.Namespace + "." + m.RelationName
	r := &streamRel{captured: st.captured[m.RelationID]}
	t := &event.Table{Connector: "postgresql", Database: st.db, Schema: m.Namespace, Name: m.RelationName}
	names := make([]string, len(m.Columns))
	for i, c := range m.Columns {
		names[i] = c.Name
		pt, err := st.s.reg.resolve(ctx, st.meta, c.DataType)
		if err != nil {
			return err
		}
		dec := pt.dec
		if isDecodeString(dec) {
			dec = aliasString
		}
		r.decs = append(r.decs, dec)
		tn, err := st.typeName(ctx, c.DataType, c.TypeModifier)
		if err != nil {
			return err
		}
		t.Columns = append(t.Columns, event.Column{Name: c.Name, Type: tn})
	}
	pk, err := primaryKey(ctx, st.meta, m.RelationID)
	if err != nil {
		return err
	}
	key, err := keyIndices(qn, names, st.s.cfg.Keys[qn], pk)
	if err != nil {
		if !r.captured {
			key = nil
		} else {
			return err
		}
	}
	t.Key = key
	r.table = t
	if sn := st.pos.Snap; sn != nil && r.captured {
		if stb := sn.table(qn); stb != nil {
			r.snap = stb
			for _, k := range stb.Key {
				ix := -1
				for i, n := range names {
					if n == k {
						ix = i
					}
				}
				r.snapIx = append(r.snapIx, ix)
			}
		}
	}
	st.rels[m.RelationID] = r
	return nil
}

func (st *streamer) typeName(ctx context.Context, oid uint32, mod int32) (string, error) {
	k := [2]uint32{oid, uint32(mod)}
	if n, ok := st.typNames[k]; ok {
		return n, nil
	}
	var n string
	if err := st.meta.QueryRow(ctx, `SELECT format_type($1::oid, $2::int4)`, oid, mod).Scan(&n); err != nil {
		return "", fmt.Errorf("postgres: type name of %d: %w", oid, err)
	}
	st.typNames[k] = n
	return n, nil
}

func (st *streamer) rel(id uint32) (*streamRel, error) {
	r := st.rels[id]
	if r == nil {
		return nil, fmt.Errorf("postgres: change for relation %d before its Relation message", id)
	}
	return r, nil
}

// decodeTuple converts a pgoutput tuple: 'n' NULL -> nil, 'u' unchanged
// TOAST -> event.Unchanged{}, 't' text -> the column's decoder.
func (st *streamer) decodeTuple(r *streamRel, td *pglogrepl.TupleData) ([]event.Value, error) {
	if td == nil {
		return nil, nil
	}
	if len(td.Columns) != len(r.decs) {
		return nil, fmt.Errorf("postgres: %s: tuple has %d columns, relation %d", r.table.QualifiedName(), len(td.Columns), len(r.decs))
	}
	vals := make([]event.Value, len(td.Columns))
	for i, c := range td.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
		case pglogrepl.TupleDataTypeToast:
			vals[i] = event.Unchanged{}
		case pglogrepl.TupleDataTypeText:
			v, err := r.decs[i](c.Data)
			if err != nil {
				return nil, fmt.Errorf("postgres: %s.%s (%s): %w", r.table.QualifiedName(), r.table.Columns[i].Name, r.table.Columns[i].Type, err)
			}
			vals[i] = v
		default:
			return nil, fmt.Errorf("postgres: %s.%s: unexpected tuple data kind %q", r.table.QualifiedName(), r.table.Columns[i].Name, c.DataType)
		}
	}
	return vals, nil
}

// next numbers a change of relation id within the transaction. Every
// change pgoutput sends is counted, emitted or not, so Index (and the event
// id) depends only on the WAL.
func (st *streamer) next(id uint32) (index, tableIndex int64) {
	index = st.index
	st.index++
	st.tableIdx[id]++
	return index, st.tableIdx[id]
}

func (st *streamer) emit(ctx context.Context, op event.Op, r *streamRel, index, tindex int64, before, after []event.Value) error {
	c := &st.chg // Emit does not keep it (capture.Emitter)
	*c = event.Change{
		Op:           op,
		Table:        r.table,
		Before:       before,
		After:        after,
		Commit:       st.commitTime,
		TxID:         st.txID,
		Pos:          st.txPos,
		Index:        index,
		TableIndex:   tindex,
		SourceFields: st.lsnField,
	}
	if err := st.em.Emit(ctx, c); err != nil {
		return err
	}
	st.streamChanged(r, op, before, after)
	return nil
}

// row numbers the next row change of relation rel in the transaction and
// returns its relation; ok is false when the change is not emitted (a
// transaction being skipped, an uncaptured relation) or err is set. Every
// change pgoutput sends takes an index, captured or not.
func (st *streamer) row(rel uint32) (r *streamRel, i, ti int64, ok bool, err error) {
	if st.skip {
		return nil, 0, 0, false, nil
	}
	if r, err = st.rel(rel); err != nil {
		return nil, 0, 0, false, err
	}
	i, ti = st.next(rel)
	return r, i, ti, r.captured, nil
}

func (st *streamer) insert(ctx context.Context, m *pglogrepl.InsertMessage) error {
	r, i, ti, ok, err := st.row(m.RelationID)
	if !ok {
		return err
	}
	after, err := st.decodeTuple(r, m.Tuple)
	if err != nil {
		return err
	}
	if !st.keep(r, after) {
		return nil
	}
	return st.emit(ctx, event.OpCreate, r, i, ti, nil, after)
}

func (st *streamer) update(ctx context.Context, m *pglogrepl.UpdateMessage) error {
	r, i, ti, ok, err := st.row(m.RelationID)
	if !ok {
		return err
	}
	after, err := st.decodeTuple(r, m.NewTuple)
	if err != nil {
		return err
	}
	// 'O' (REPLICA IDENTITY FULL): the whole old row. 'K': only the replica
	// identity columns are filled, the others are NULL. Neither: the key
	// did not change and the identity is not FULL; before stays nil.
	before, err := st.decodeTuple(r, m.OldTuple)
	if err != nil {
		return err
	}
	if r.snap != nil {
		keepNew := st.keep(r, after)
		keepOld := keepNew
		if before != nil {
			if _, ok := st.chunkOf(r, before); ok {
				keepOld = st.keep(r, before)
			}
		}
		switch {
		case keepNew && keepOld:
			return st.emitUpdate(ctx, r, m.RelationID, i, ti, before, after)
		case keepNew:
			// The key changed; the new key's chunk was read before this
			// change, the old key's chunk after it (it holds neither the
			// old row nor a delete, but whatever that key holds later):
			// only the new key's row is news. A delete of the old key
			// here would remove a row its chunk emitted.
			return st.emit(ctx, event.OpCreate, r, i, ti, nil, after)
		case keepOld:
			// The new key's chunk was read after this change (it holds the
			// new row) but the old key's chunk before it (it holds the old
			// row): only the removal of the old key is news.
			return st.emit(ctx, event.OpDelete, r, i, ti, before, nil)
		default:
			return nil
		}
	}
	return st.emitUpdate(ctx, r, m.RelationID, i, ti, before, after)
}

// emitUpdate emits an update, or, when it changed the row's key, a delete
// of the old key and an insert of the new one (as Debezium does): each
// lands in its own key's partition, in order with that key's other
// changes. The insert takes the next row index of the transaction, so ids
// stay "<position>/<index>" and deterministic.
func (st *streamer) emitUpdate(ctx context.Context, r *streamRel, rel uint32, i, ti int64, before, after []event.Value) error {
	if !event.KeyChanged(r.table, before, after) {
		return st.emit(ctx, event.OpUpdate, r, i, ti, before, after)
	}
	if err := st.emit(ctx, event.OpDelete, r, i, ti, before, nil); err != nil {
		return err
	}
	i, ti = st.next(rel)
	return st.emit(ctx, event.OpCreate, r, i, ti, nil, after)
}

func (st *streamer) delete(ctx context.Context, m *pglogrepl.DeleteMessage) error {
	r, i, ti, ok, err := st.row(m.RelationID)
	if !ok {
		return err
	}
	before, err := st.decodeTuple(r, m.OldTuple)
	if err != nil {
		return err
	}
	if !st.keep(r, before) {
		return nil
	}
	return st.emit(ctx, event.OpDelete, r, i, ti, before, nil)
}

func (st *streamer) truncate(ctx context.Context, m *pglogrepl.TruncateMessage) error {
	if st.skip {
		return nil
	}
	for _, id := range m.RelationIDs {
		r, err := st.rel(id)
		if err != nil {
			return err
		}
		i, ti := st.next(id)
		if !r.captured {
			continue
		}
		if r.snap != nil && !st.truncateKept(r) {
			continue
		}
		if err := st.emit(ctx, event.OpTruncate, r, i, ti, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// chunkOf finds the snapshot chunk of a row image's key.
func (st *streamer) chunkOf(r *streamRel, img []event.Value) (int, bool) {
	t := r.snap
	if len(t.Key) == 0 {
		return 0, true
	}
	key := make([]keyVal, len(t.Key))
	for j, ix := range r.snapIx {
		if ix < 0 || img == nil {
			return 0, false
		}
		kv, ok := keyValOf(t.Kinds[j], img[ix])
		if !ok {
			return 0, false
		}
		key[j] = kv
	}
	return t.chunkOf(key), true
}

// keep applies the catch-up rule (checkpoint.go, invariant 4) to a change
// of the current transaction touching the row image img: emit iff the
// commit LSN is at or after the point the row's chunk was read at. A row
// whose chunk cannot be determined is emitted (a duplicate is harmless, a
// loss is not).
func (st *streamer) keep(r *streamRel, img []event.Value) bool {
	if r.snap == nil {
		return true
	}
	c, ok := st.chunkOf(r, img)
	if !ok || c >= len(r.snap.Read) {
		return true
	}
	mark := r.snap.Read[c]
	if mark == 0 {
		return true
	}
	return st.finalLSN >= st.pos.Snap.points[mark-1]
}

// truncateKept decides a TRUNCATE inside the catch-up window. Chunks read
// after it already reflect it; if any chunk was read before it, the
// truncate is emitted and every chunk of the table is re-marked as read at
// this transaction, so all later changes of the table are emitted: after a
// truncate the table's state is exactly what follows it.
func (st *streamer) truncateKept(r *streamRel) bool {
	sn := st.pos.Snap
	older := false
	for _, mark := range r.snap.Read {
		if mark != 0 && sn.points[mark-1] <= st.finalLSN {
			older = true
		}
	}
	if !older {
		return false
	}
	k := sn.addPoint(st.finalLSN)
	for c := range r.snap.Read {
		r.snap.Read[c] = k
	}
	return true
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
