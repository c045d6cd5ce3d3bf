package mysql

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plumecdc/plume/pkg/capture"
)

// Source is a capture.Source for MySQL and MariaDB.
type Source struct {
	cfg    Config
	dsn    dsn
	log    *slog.Logger
	filter tableFilter

	// Connection retry policy (tests shorten it).
	connectAttempts int
	retryBackoff    time.Duration
	// noGTID makes the source resume by file/pos even when the server has
	// GTIDs (tests of the file/pos path on MariaDB).
	noGTID bool
	// noDirectRows leaves every rows event to go-mysql's decoder (tests
	// compare it with the direct row decoder, rows.go).
	noDirectRows bool
	// directEvents counts the rows events the direct row decoder decoded.
	directEvents atomic.Int64

	mu      sync.Mutex
	running bool
	resnap  []string // Resnapshot requests not yet picked up by Run

	// Lag metrics, written by Run's goroutines.
	lastEventUnix atomic.Int64 // header timestamp of the last row/commit event read
	caughtUp      atomic.Bool  // a heartbeat arrived with no transaction open
	lagBytes      atomic.Int64
	ackedMu       sync.Mutex
	acked         []byte
	lastSnapshot  atomic.Pointer[snapshotState] // the last completed snapshot run
}

var _ capture.Source = (*Source)(nil)

// New validates cfg and returns a Source. It does not connect; Run does.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d, err := parseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("connector", connectorName) // the caller's logger names the pipeline
	s := &Source{
		cfg: cfg, dsn: d, log: log, filter: newTableFilter(cfg.Tables),
		connectAttempts: 5, retryBackoff: time.Second,
	}
	s.lagBytes.Store(-1)
	return s, nil
}

// Run implements capture.Source: it resumes after from (or starts at the
// server's current position, with a snapshot first if configured) and emits
// changes until ctx ends or an error occurs.
func (s *Source) Run(ctx context.Context, from []byte, em capture.Emitter) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("mysql: Run is already running")
	}
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()

	cp, err := decodeCheckpoint(from)
	if err != nil {
		return err
	}
	c, err := s.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	info, err := s.inspect(ctx, c)
	if err != nil {
		return err
	}
	if cp != nil && cp.Flavor != "" && cp.Flavor != info.Flavor {
		return fmt.Errorf("mysql: checkpoint was written for a %s server but %s runs %s", cp.Flavor, s.dsn.Addr, info.Version)
	}
	first := cp == nil
	if first {
		pos, gtid, err := masterStatus(ctx, c, info.Flavor)
		if err != nil {
			return err
		}
		cp = &checkpoint{Flavor: info.Flavor, File: pos.File, Pos: pos.Pos}
		if info.GTIDMode {
			cp.GTID = gtid
		}
		if s.cfg.Snapshot {
			tables, err := listTables(ctx, c, s.filter)
			if err != nil {
				return err
			}
			cp.Snapshot = newSnapshotState(s.cfg.SnapshotMode, tables, time.Now())
		}
		s.log.Info("mysql: first start", "file", cp.File, "pos", cp.Pos, "gtid", cp.GTID, "snapshot", cp.Snapshot != nil)
	} else if err := s.checkAvailable(ctx, c, cp, info); err != nil {
		return err
	}
	st, err := newStreamer(s, info, cp, em)
	if err != nil {
		return err
	}
	defer st.close()
	if first {
		// Invariant: a first start's position P0 (and the snapshot it
		// schedules) is committed in Kafka before the binlog is read, so
		// every change after P0 reaches Kafka as a change event even if this
		// run dies before its next commit; a restart then finds the
		// checkpoint, streams from P0 and resumes the snapshot (same id)
		// instead of starting afresh at a later position.
		//
		// Why Sync and not Commit: Commit only ends a source transaction,
		// and the Kafka transaction holding it would also hold the first
		// changes and snapshot rows. Their topics are created on first use,
		// and a new topic's first produce can fail with
		// NOT_LEADER_FOR_PARTITION; the client retries only after its next
		// metadata refresh (kgo MetadataMinAge, 5s), so that transaction
		// - and with it P0 - could stay uncommitted for seconds. A SIGKILL
		// then made the restart a first start again: a second snapshot with
		// the changes in between folded into it or, without a snapshot,
		// those changes lost. Sync commits P0 alone, in a transaction that
		// touches only the checkpoint partition the fence was just written
		// to.
		if err := capture.Sync(ctx, em, st.checkpoint()); err != nil {
			return err
		}
	}
	lagCtx, stopLag := context.WithCancel(ctx)
	defer stopLag()
	go s.measureLag(lagCtx, st)
	return st.run(ctx)
}

// Ack implements capture.Source. MySQL keeps binlogs by time or size, not
// by consumer, so there is nothing to release at the server; the acked
// checkpoint is kept for observability.
func (s *Source) Ack(cp []byte) {
	s.ackedMu.Lock()
	s.acked = append(s.acked[:0], cp...)
	s.ackedMu.Unlock()
}

// Close implements capture.Source. Run closes its connections itself when it
// returns, so Close has nothing left to release.
func (s *Source) Close() error { return nil }

// Resnapshot asks a running (or the next) Run to snapshot table ("db.table")
// again while streaming continues. The new snapshot run gets its own id; its
// rows are OpRead events, reconciled with the binlog like the initial
// snapshot. It returns an error if the table is not captured.
func (s *Source) Resnapshot(table string) error {
	tp, err := parseTablePattern(table)
	if err != nil {
		return err
	}
	if strings.ContainsAny(table, "*?[") {
		return fmt.Errorf("mysql: Resnapshot takes one table, not a pattern: %q", table)
	}
	if !s.filter.Match(tp.db, tp.table) {
		return fmt.Errorf("mysql: table %s is not captured by pipeline %s", table, s.cfg.Pipeline)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.resnap {
		if t == table {
			return nil
		}
	}
	s.resnap = append(s.resnap, table)
	return nil
}

func (s *Source) takeResnapshots() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resnap
	s.resnap = nil
	return r
}

// Lag reports how far the stream is behind the server: seconds since the
// last event read was written (0 once a heartbeat shows the stream is at the
// end of the binlog; binlog timestamps have one-second precision), and bytes
// of binlog between the stream's position and the server's end (measured
// every HeartbeatInterval, at most every 10s; -1 before the first
// measurement).
func (s *Source) Lag() (seconds float64, bytes int64) {
	bytes = s.lagBytes.Load()
	if s.caughtUp.Load() {
		return 0, bytes
	}
	ts := s.lastEventUnix.Load()
	if ts == 0 {
		return 0, bytes
	}
	return math.Max(0, time.Since(time.Unix(ts, 0)).Seconds()), bytes
}

// measureLag periodically compares the stream position with the server's
// binlog files.
func (s *Source) measureLag(ctx context.Context, st *streamer) {
	every := 10 * time.Second
	if hb := s.cfg.HeartbeatInterval; hb > 0 && hb < every {
		every = hb
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var c *conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if c == nil {
			var err error
			if c, err = s.dialOnce(ctx); err != nil {
				c = nil
				continue
			}
		}
		files, err := binaryLogs(ctx, c)
		if err != nil {
			c.Close()
			c = nil
			continue
		}
		pos := st.position()
		var behind int64
		seen := false
		for _, f := range files {
			switch cmp := (binlogPos{File: f.Name}).Compare(binlogPos{File: pos.File}); {
			case cmp == 0:
				seen = true
				behind += max(0, f.Size-int64(pos.Pos))
			case cmp > 0:
				behind += f.Size
			}
		}
		if seen {
			s.lagBytes.Store(behind)
		}
	}
}
