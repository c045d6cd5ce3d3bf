package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeatLoop writes a non-transactional logical decoding message every
// heartbeat interval on a normal connection:
//
//	SELECT pg_logical_emit_message(false, 'plume_heartbeat', '')
//
// The message travels through the slot like any change; when it comes back
// outside a transaction the stream Commits an empty transaction whose
// checkpoint is the message's LSN. Once capture acknowledges it, the slot's
// confirmed_flush_lsn moves past WAL that only uncaptured tables wrote, so an
// idle pipeline on a busy cluster does not pin WAL. Failures are logged and
// retried at the next tick; they never stop the stream.
func (s *Source) heartbeatLoop(ctx context.Context) {
	if s.heartbeat <= 0 {
		return
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(s.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn == nil || conn.IsClosed() {
			c := s.conn
			c.attempts = 1
			var err error
			if conn, err = c.connect(ctx); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("heartbeat: connect failed", "err", err)
				}
				conn = nil
				continue
			}
		}
		hctx, cancel := context.WithTimeout(ctx, s.heartbeat+5*time.Second)
		_, err := conn.Exec(hctx, `SELECT pg_logical_emit_message(false, '`+heartbeatPrefix+`', '')`)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("heartbeat failed", "err", err)
			conn.Close(context.Background())
			conn = nil
		}
	}
}
