package mysql

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// The replication connection: one go-mysql BinlogSyncer per connection,
// started from the streamer's transaction boundary. go-mysql's own retry is
// off because it may resume inside a transaction; reconnects here always
// start at a boundary (and skip rows of a half-read transaction that were
// already emitted, see streamer.resume).

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

// connect starts a binlog dump from the current boundary.
func (st *streamer) connect(ctx context.Context) error {
	st.disconnect()
	s := st.s
	host, port, err := s.dsn.hostPort()
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", s.dsn, err)
	}
	dialer := &net.Dialer{Timeout: s.dsn.DialTimeout, KeepAlive: 15 * time.Second}
	cfg := replication.BinlogSyncerConfig{
		ServerID:                s.cfg.ServerID,
		Flavor:                  st.info.Flavor,
		Host:                    host,
		Port:                    port,
		User:                    s.dsn.User,
		Password:                s.dsn.Password,
		Localhost:               "plume-" + s.cfg.Pipeline,
		TLSConfig:               s.tlsConfig(),
		ParseTime:               false,
		TimestampStringLocation: time.UTC,
		HeartbeatPeriod:         st.heartbeat(),
		DisableRetrySync:        true, // reconnects are ours: only at boundaries
		Logger:                  slog.New(debugLevel{s.log.Handler()}),
		Dialer:                  dialer.DialContext,
		EventCacheCount:         64,
		RowsEventDecodeFunc:     (&rowsDecoder{st: st}).decode,
	}
	if s.dsn.Net == "unix" {
		cfg.Host, cfg.Port = s.dsn.Addr, 0
	}
	syncer := replication.NewBinlogSyncer(cfg)
	var bs *replication.BinlogStreamer
	if st.useGTID() {
		bs, err = syncer.StartSyncGTID(st.gtid.set.Clone())
	} else {
		bs, err = syncer.StartSync(gomysql.Position{Name: st.pos.File, Pos: st.pos.Pos})
	}
	if err != nil {
		syncer.Close()
		return err
	}
	st.syncer = syncer
	st.cur = st.pos
	pctx, cancel := context.WithCancel(ctx)
	st.stopPump = cancel
	st.events = make(chan streamItem, 16)
	go pump(pctx, bs, st.events)
	st.lastRecv = time.Now()
	s.log.Info("mysql: streaming", "from", st.pos.String(), "gtid", st.gtid.String(), "by_gtid", st.useGTID())
	return nil
}

func pump(ctx context.Context, bs *replication.BinlogStreamer, ch chan<- streamItem) {
	for {
		ev, err := bs.GetEvent(ctx)
		if err != nil {
			if ctx.Err() == nil {
				select {
				case ch <- streamItem{err: err}:
				case <-ctx.Done():
				}
			}
			return
		}
		select {
		case ch <- streamItem{ev: ev}:
		case <-ctx.Done():
			return
		}
	}
}

func (st *streamer) disconnect() {
	if st.stopPump != nil {
		st.stopPump()
		st.stopPump = nil
	}
	if st.syncer != nil {
		st.syncer.Close()
		st.syncer = nil
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
// that connection's go-mysql parser goroutine only (BinlogSyncer.onStream
// parses events one at a time), so its scratch needs no lock.
type rowsDecoder struct {
	st *streamer
	tm replication.TableMapEvent // scratch: the table map without signedness
}

// decode skips the row data of tables that are not captured, and decodes the
// others without go-mysql's signedness lookup: go-mysql builds a fresh map of
// the table's unsigned columns for every row it decodes
// (TableMapEvent.UnsignedMap in RowsEvent.decodeImage), ~180 bytes and a map
// fill per row, a quarter of a 100-byte row's allocations. Rows are decoded
// against a copy of the table map without the signedness bitmap, so every
// integer arrives signed in its column's width, and colType.fromBinlog
// reinterprets the unsigned ones (the schema, built from the original table
// map, knows which). re.Table is restored before the event leaves the parser
// goroutine; the original table map is never written.
func (d *rowsDecoder) decode(re *replication.RowsEvent, data []byte) error {
	pos, err := re.DecodeHeader(data)
	if err != nil {
		return err
	}
	tm := re.Table
	if tm == nil {
		return re.DecodeData(pos, data)
	}
	if !d.st.s.filter.Match(string(tm.Schema), string(tm.Table)) {
		return nil
	}
	if len(tm.SignednessBitmap) == 0 {
		return re.DecodeData(pos, data)
	}
	d.tm = *tm
	d.tm.SignednessBitmap = nil
	re.Table = &d.tm
	err = re.DecodeData(pos, data)
	re.Table = tm
	return err
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

// debugLevel is the slog.Handler given to go-mysql: its records become
// Debug records. Every error it reports is also returned to the streamer,
// which logs or returns it with context, so go-mysql's own error lines
// (for example on every reconnect) would only be noise.
type debugLevel struct{ slog.Handler }

func (d debugLevel) Enabled(ctx context.Context, _ slog.Level) bool {
	return d.Handler.Enabled(ctx, slog.LevelDebug)
}

func (d debugLevel) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return d.Handler.Handle(ctx, r)
}
func (d debugLevel) WithAttrs(a []slog.Attr) slog.Handler { return debugLevel{d.Handler.WithAttrs(a)} }
func (d debugLevel) WithGroup(n string) slog.Handler      { return debugLevel{d.Handler.WithGroup(n)} }
