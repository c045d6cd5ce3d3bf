package mysql

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// The replication connection: one dump connection (dumpConn) per connect,
// started from the streamer's transaction boundary. It does not reconnect by
// itself: reconnects here always start at a boundary (and skip rows of a
// half-read transaction that were already emitted, see streamer.resume).

// heartbeat is the replication heartbeat period asked of the server.
func (st *streamer) heartbeat() time.Duration {
	hb := st.s.cfg.HeartbeatInterval
	if hb <= 0 {
		hb = keepaliveHeartbeat
	}
	if st.snapState != nil && hb > time.Second {
		// Snapshot chunks wait for the stream to pass their watermark; on an
		// idle server only heartbeats move the stream's position.
		hb = time.Second
	}
	return hb
}

// eventQueue is how many parsed events wait between the dump connection's
// reader and the streamer (each holds at most one packet).
const eventQueue = 64

// connect starts a binlog dump from the current boundary.
func (st *streamer) connect(ctx context.Context) error {
	st.disconnect()
	s := st.s
	_, port, err := s.dsn.hostPort()
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", s.dsn, err)
	}
	dialer := &net.Dialer{Timeout: s.dsn.DialTimeout, KeepAlive: 15 * time.Second}
	cfg := dumpConfig{
		addr:      s.dsn.Addr,
		port:      port,
		user:      s.dsn.User,
		password:  s.dsn.Password,
		tls:       s.tlsConfig(),
		dialer:    dialer.DialContext,
		serverID:  s.cfg.ServerID,
		flavor:    st.info.Flavor,
		hostname:  "plume-" + s.cfg.Pipeline,
		heartbeat: st.heartbeat(),
		rows:      &rowsDecoder{filter: s.filter, noDirect: s.noDirectRows},
	}
	var gset gomysql.GTIDSet
	if st.useGTID() {
		gset = st.gtid.set.Clone()
	}
	if st.free == nil {
		st.free = make(chan *bytes.Buffer, eventQueue+2)
	}
	d, err := openDump(ctx, cfg, st.pos, gset, st.free)
	if err != nil {
		return err
	}
	st.dump = d
	st.cur = st.pos
	pctx, cancel := context.WithCancel(ctx)
	st.stopReader = cancel
	st.events = make(chan streamItem, eventQueue)
	go d.run(pctx, st.events)
	st.lastRecv = time.Now()
	s.log.Info("mysql: streaming", "from", st.pos.String(), "gtid", st.gtid.String(), "by_gtid", st.useGTID())
	return nil
}

// release hands a handled event's packet buffer back to the reader.
func (st *streamer) release(it streamItem) { releasePacket(st.free, it.buf) }

func (st *streamer) disconnect() {
	if st.stopReader != nil {
		st.stopReader()
		st.stopReader = nil
	}
	if st.dump != nil {
		st.dump.close()
		st.dump = nil
	}
}

func (st *streamer) close() {
	st.disconnect()
	if st.snap != nil {
		st.snap.stop()
		st.snap = nil
	}
}

// rowsDecoder is one binlog connection's RowsEventDecodeFunc. It runs on
// that connection's reader goroutine only (dumpConn.run parses events one
// at a time), so its state needs no lock.
type rowsDecoder struct {
	filter tableFilter
	// noDirect turns the direct row decoder off (tests compare the two).
	noDirect bool

	tm replication.TableMapEvent // scratch: the table map without signedness

	// allow is set by dumpConn.run before each Parse: the event is a plain
	// rows event in a pooled packet, which the streamer may decode itself.
	allow bool
	// deferred is the row data of the event just parsed, left undecoded
	// for the streamer (take).
	deferred []byte
	// lastTM and lastDirect cache directTable for the last table map.
	lastTM     *replication.TableMapEvent
	lastDirect bool
}

// decode skips the row data of tables that are not captured. A captured
// table's row data is left to the streamer's direct decoder (rows.go) when
// the event allows it (allow) and the decoder knows every column's type;
// re.Rows then stays empty and take returns the data.
//
// Otherwise go-mysql decodes it, without its signedness lookup: go-mysql
// builds a fresh map of the table's unsigned columns for every row it
// decodes (TableMapEvent.UnsignedMap in RowsEvent.decodeImage), ~180 bytes
// and a map fill per row. Rows are decoded against a copy of the table map
// without the signedness bitmap, so every integer arrives signed in its
// column's width, and colType.fromBinlog reinterprets the unsigned ones (the
// schema, built from the original table map, knows which). re.Table is
// restored before the event leaves the parser goroutine; the original table
// map is never written, and only its fields that stay fixed after parsing
// are read.
func (d *rowsDecoder) decode(re *replication.RowsEvent, data []byte) error {
	pos, err := re.DecodeHeader(data)
	if err != nil {
		return err
	}
	tm := re.Table
	if tm == nil {
		return re.DecodeData(pos, data)
	}
	if !d.filter.Match(string(tm.Schema), string(tm.Table)) {
		return nil
	}
	if d.allow && !d.noDirect && d.directTable(tm) {
		d.deferred = data[pos:]
		return nil
	}
	if len(tm.SignednessBitmap) == 0 {
		return re.DecodeData(pos, data)
	}
	// Only the fields rows decoding reads (types, metadata, count; names for
	// its error text), which the parser set when it read the table map. The
	// whole struct must not be copied: the streamer fills the table map's
	// lazily computed caches (EnumStrValueMap and the like, schemaCache.build)
	// on its own goroutine, so reading them here would be a data race.
	d.tm = replication.TableMapEvent{TableID: tm.TableID, Schema: tm.Schema, Table: tm.Table,
		ColumnCount: tm.ColumnCount, ColumnType: tm.ColumnType, ColumnMeta: tm.ColumnMeta}
	re.Table = &d.tm
	err = re.DecodeData(pos, data)
	re.Table = tm
	return err
}

// directTable reports whether the direct decoder knows every column type of
// tm: the test schemaCache.build applies (tableInfo.direct), on the same
// table map.
func (d *rowsDecoder) directTable(tm *replication.TableMapEvent) bool {
	if tm == d.lastTM {
		return d.lastDirect
	}
	direct := len(tm.ColumnType) == int(tm.ColumnCount) && len(tm.ColumnMeta) == int(tm.ColumnCount)
	for i := 0; direct && i < len(tm.ColumnType); i++ {
		direct = directType(tm.ColumnType[i], tm.ColumnMeta[i]).direct
	}
	d.lastTM, d.lastDirect = tm, direct
	return direct
}

// take returns the row data the last Parse left undecoded (nil if none) and
// resets it.
func (d *rowsDecoder) take() []byte {
	b := d.deferred
	d.deferred = nil
	return b
}

func (st *streamer) connectRetry(ctx context.Context) error {
	backoff := st.s.retryBackoff
	for attempt := 1; ; attempt++ {
		err := st.connect(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var me *gomysql.MyError
		if isAuthError(err) || errors.As(err, &me) || attempt >= st.s.connectAttempts {
			// A server error (bad GTID position, missing privilege) will not
			// go away by retrying.
			return fmt.Errorf("mysql: cannot start binlog replication from %s: %w", st.s.dsn, redactErr(err, st.s.dsn.Password))
		}
		st.s.log.Warn("mysql: binlog connect failed, retrying", "addr", st.s.dsn.Addr, "attempt", attempt, "err", redact(err, st.s.dsn.Password))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// onStreamError handles a failed binlog connection: purged positions stop
// the pipeline; other errors reconnect from the last boundary, at most
// connectAttempts times in a row.
func (st *streamer) onStreamError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if me, ok := isPurgedErr(err); ok {
		cp := &checkpoint{File: st.pos.File, Pos: st.pos.Pos}
		if st.useGTID() {
			cp.GTID = st.gtid.String()
		}
		return st.s.purgedError(ctx, cp, me.Message)
	}
	var me *gomysql.MyError
	if errors.As(err, &me) {
		// Any other error the server reports for the dump is not transient.
		return fmt.Errorf("mysql: binlog replication from %s failed at %s: %w", st.s.dsn.Addr, st.pos, err)
	}
	st.reconnects++
	if st.reconnects > st.s.connectAttempts {
		return fmt.Errorf("mysql: lost the binlog connection to %s %d times in a row: %w", st.s.dsn, st.reconnects-1, redactErr(err, st.s.dsn.Password))
	}
	if st.txn.open {
		if st.txn.rows > 0 {
			st.resume = &resumeState{id: st.txn.id, rows: st.txn.rows}
		}
		st.txn = txnState{}
	}
	st.s.log.Warn("mysql: binlog connection lost, reconnecting", "addr", st.s.dsn.Addr, "at", st.pos.String(), "err", redact(err, st.s.dsn.Password))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(st.s.retryBackoff):
	}
	return st.connectRetry(ctx)
}
