package mysql

import (
	"context"
	"errors"
	"fmt"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// PurgedError reports that the server no longer has the binlog the pipeline
// must resume from (MySQL error 1236, or the checkpoint's file is older than
// the oldest binlog). Plume never skips ahead: changes in the purged range
// would be lost silently. The way out is a new snapshot (docs/mysql.md,
// "Purged binlog runbook").
type PurgedError struct {
	Addr      string
	Want      string // the position the pipeline needs: GTID set and/or file:pos
	Oldest    string // the oldest binlog file the server still has, "" if unknown
	ServerMsg string // the server's message, if it reported the error
}

func (e *PurgedError) Error() string {
	msg := fmt.Sprintf("mysql: the binlog position this pipeline must resume from (%s) is no longer available on %s", e.Want, e.Addr)
	if e.Oldest != "" {
		msg += "; the oldest binlog the server still has is " + e.Oldest
	}
	if e.ServerMsg != "" {
		msg += " (server: " + e.ServerMsg + ")"
	}
	return msg + ". Changes in the purged range cannot be read, so Plume stops instead of skipping them. " +
		"To recover, re-snapshot: reset the pipeline's stored checkpoint and restart it with snapshot: true " +
		"(docs/mysql.md, \"Purged binlog runbook\"); raise binlog_expire_logs_seconds / expire_logs_days to prevent it."
}

// isPurgedErr reports whether err is the server's "cannot read the binlog
// from this position" replication error.
func isPurgedErr(err error) (*gomysql.MyError, bool) {
	var me *gomysql.MyError
	if errors.As(err, &me) && me.Code == gomysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
		return me, true
	}
	return nil, false
}

func (s *Source) purgedError(ctx context.Context, cp *checkpoint, serverMsg string) error {
	want := ""
	if cp.GTID != "" {
		want = "gtid " + cp.GTID + ", "
	}
	want += "binlog " + cp.position().String()
	e := &PurgedError{Addr: s.dsn.Addr, Want: want, ServerMsg: serverMsg}
	if c, err := s.dialOnce(ctx); err == nil {
		defer c.Close()
		if files, err := binaryLogs(ctx, c); err == nil && len(files) > 0 {
			e.Oldest = files[0].Name
			if _, gtid, err := gtidAtStart(ctx, c, files[0].Name); err == nil && gtid != "" {
				e.Oldest += " (gtid " + gtid + ")"
			}
		}
	}
	return e
}

// gtidAtStart returns the GTID position at the start of a binlog file
// (MariaDB only; "" elsewhere).
func gtidAtStart(ctx context.Context, c *conn, file string) (binlogPos, string, error) {
	r, err := c.query(ctx, "SELECT BINLOG_GTID_POS(?, 4)", file)
	if err != nil {
		return binlogPos{}, "", err
	}
	rows := rowsOf(r)
	if len(rows) != 1 {
		return binlogPos{}, "", nil
	}
	return binlogPos{File: file, Pos: 4}, rows[0][0], nil
}

// checkAvailable fails early, before streaming, when a file/pos checkpoint
// points into a purged binlog. GTID checkpoints are checked by the server
// itself when the dump starts (error 1236).
func (s *Source) checkAvailable(ctx context.Context, c *conn, cp *checkpoint, info *serverInfo) error {
	if cp.GTID != "" && info.GTIDMode {
		return nil
	}
	files, err := binaryLogs(ctx, c)
	if err != nil || len(files) == 0 {
		return err
	}
	for _, f := range files {
		if f.Name == cp.File {
			return nil
		}
	}
	if (binlogPos{File: cp.File}).Compare(binlogPos{File: files[0].Name}) < 0 {
		return s.purgedError(ctx, cp, "")
	}
	return fmt.Errorf("mysql: checkpoint binlog file %s does not exist on %s (files %s .. %s): was the server's binlog reset?",
		cp.File, s.dsn.Addr, files[0].Name, files[len(files)-1].Name)
}
