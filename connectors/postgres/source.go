// Package postgres is Plume's PostgreSQL source: a capture.Source reading
// committed row changes through logical replication (pgoutput, protocol
// version 2) after an optional consistent, chunked, parallel and resumable
// initial snapshot.
//
// Files by topic: source.go (configuration and the Run sequence),
// conn.go (connections), schema.go (catalog, publication, slot checks),
// replication.go (the stream), heartbeat.go, snapshot.go, keys.go (key
// ordering for chunks), checkpoint.go (the checkpoint and its invariants),
// types.go and timefmt.go (value decoding), drop.go, resnapshot.go.
// docs/postgres.md describes the behaviour, docs/types-postgres.md the value
// mapping.
package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/capture"
)

// Config configures a PostgreSQL source.
type Config struct {
	Pipeline string // pipeline name; slot and publication names derive from it
	DSN      string // postgres://user:pw@host:port/db?sslmode=...
	// Tables are "schema.table" patterns; each part may use the glob
	// characters * ? and [..]. A pattern without a dot means schema public.
	Tables            []string
	Snapshot          bool // initial snapshot on first start
	SnapshotWorkers   int  // parallel chunk readers, default 2
	SnapshotChunkSize int  // rows per chunk, default 10000
	// HeartbeatInterval is the heartbeat period; 0 turns heartbeats off.
	// The configuration default is DefaultHeartbeatInterval (10s): the
	// config loader must fill it when the setting is absent.
	HeartbeatInterval time.Duration
	// Keys overrides the key columns of a table ("schema.table" -> columns),
	// for tables without a primary key.
	Keys map[string][]string
	// Slot and Publication default to plume_<pipeline> ('-' and other
	// characters not allowed in a slot name become '_').
	Slot, Publication string
	// TLS, when set, is used for every connection instead of the DSN's
	// sslmode handling (no plaintext fallback).
	TLS *tls.Config
}

// Defaults.
const (
	DefaultSnapshotWorkers   = 2
	DefaultSnapshotChunkSize = 10000
	DefaultHeartbeatInterval = 10 * time.Second
	statusInterval           = 10 * time.Second
	heartbeatPrefix          = "plume_heartbeat"
)

// Source is a capture.Source on pgoutput logical replication.
type Source struct {
	cfg  Config
	log  *slog.Logger
	conn connector
	slot string
	pub  string
	reg  *typeRegistry

	acked     atomic.Uint64 // highest LSN passed to Ack
	ackSignal chan struct{}

	// Tunables, fixed after New (tests shorten them).
	statusEvery time.Duration
	heartbeat   time.Duration
	// chunkHook, if set, runs in the emitting goroutine after each snapshot
	// chunk's Commit (tests slow snapshots down with it).
	chunkHook func()

	running atomic.Bool
	resnap  chan resnapRequest

	mu      sync.Mutex
	lagConn *pgx.Conn
	closed  bool
}

var _ capture.Source = (*Source)(nil)

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// DefaultName derives the slot and publication name from a pipeline name:
// "plume_" + the name lower-cased, every character outside [a-z0-9_]
// replaced by '_' (so '-' becomes '_'). A result longer than PostgreSQL's
// 63-byte limit keeps its first 54 bytes followed by '_' and the 8 hex
// digits of the FNV-32a hash of the whole result (docs/config.md).
func DefaultName(pipeline string) string {
	var b strings.Builder
	b.WriteString("plume_")
	for _, r := range strings.ToLower(pipeline) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		h := fnv.New32a()
		h.Write([]byte(s))
		s = fmt.Sprintf("%s_%08x", s[:54], h.Sum32())
	}
	return s
}

// withDefaults fills defaults and validates names.
func (c Config) withDefaults() (Config, error) {
	if c.DSN == "" {
		return c, errors.New("postgres: DSN is required")
	}
	if c.Slot == "" || c.Publication == "" {
		if c.Pipeline == "" {
			return c, errors.New("postgres: pipeline name (or explicit slot and publication names) required")
		}
	}
	if c.Slot == "" {
		c.Slot = DefaultName(c.Pipeline)
	}
	if c.Publication == "" {
		c.Publication = DefaultName(c.Pipeline)
	}
	if !slotNameRE.MatchString(c.Slot) {
		return c, fmt.Errorf("postgres: invalid slot name %q: use lower-case letters, digits and underscores, at most 63", c.Slot)
	}
	if len(c.Publication) > 63 || c.Publication == "" {
		return c, fmt.Errorf("postgres: invalid publication name %q", c.Publication)
	}
	if c.SnapshotWorkers <= 0 {
		c.SnapshotWorkers = DefaultSnapshotWorkers
	}
	if c.SnapshotChunkSize <= 0 {
		c.SnapshotChunkSize = DefaultSnapshotChunkSize
	}
	return c, nil
}

// New validates cfg and returns a source. It does not connect.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(cfg.Tables) == 0 {
		return nil, errors.New("postgres: no tables configured")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	hb := cfg.HeartbeatInterval
	if hb < 0 {
		hb = 0
	}
	s := &Source{
		cfg:         cfg,
		log:         log.With("source", "postgres", "slot", cfg.Slot),
		conn:        connector{dsn: cfg.DSN, tls: cfg.TLS},
		slot:        cfg.Slot,
		pub:         cfg.Publication,
		reg:         newTypeRegistry(),
		ackSignal:   make(chan struct{}, 1),
		statusEvery: statusInterval,
		heartbeat:   hb,
		resnap:      make(chan resnapRequest, 16),
	}
	return s, nil
}

// SlotName and PublicationName return the names the source uses.
func (s *Source) SlotName() string        { return s.slot }
func (s *Source) PublicationName() string { return s.pub }

// Ack records that the transaction whose Commit carried cp, and all before
// it, are durable downstream. The LSN in cp is the only position ever
// confirmed to PostgreSQL (see the status loop in replication.go).
func (s *Source) Ack(cp []byte) {
	lsn, err := lsnOf(cp)
	if err != nil {
		s.log.Error("ignoring unparsable ack", "err", err)
		return
	}
	for {
		cur := s.acked.Load()
		if uint64(lsn) <= cur {
			return
		}
		if s.acked.CompareAndSwap(cur, uint64(lsn)) {
			break
		}
	}
	select {
	case s.ackSignal <- struct{}{}:
	default:
	}
}

// Close releases the source's connections.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.lagConn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.lagConn.Close(ctx)
		s.lagConn = nil
	}
	return nil
}

// SlotLag returns the bytes of WAL between pg_current_wal_lsn() and the
// slot's confirmed_flush_lsn.
func (s *Source) SlotLag(ctx context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errors.New("postgres: source closed")
	}
	for attempt := 0; ; attempt++ {
		if s.lagConn == nil || s.lagConn.IsClosed() {
			c := s.conn
			c.attempts = 1
			conn, err := c.connect(ctx)
			if err != nil {
				return 0, err
			}
			s.lagConn = conn
		}
		var lag *int64
		err := s.lagConn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8
			FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, s.slot).Scan(&lag)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("postgres: replication slot %q does not exist", s.slot)
		}
		if err != nil {
			if attempt == 0 && s.lagConn.IsClosed() {
				continue // stale connection: one retry on a fresh one
			}
			return 0, fmt.Errorf("postgres: slot lag of %q: %w", s.slot, err)
		}
		if lag == nil {
			return 0, nil
		}
		return *lag, nil
	}
}

// Run snapshots (when due) and then streams changes; see capture.Source.
//
// Sequence: check wal_level, resolve the configured tables, create or check
// the publication, then by checkpoint and slot state:
//
//	no checkpoint, no slot    create the slot; with Snapshot, export its
//	                          snapshot and read every table in it
//	no checkpoint, slot       (a first run that died before its first
//	                          Commit) stream from the slot's
//	                          confirmed_flush_lsn; with Snapshot, read the
//	                          tables in fresh snapshots (catch-up rule)
//	checkpoint, no slot       error: the slot's WAL is gone
//	checkpoint, slot          check the LSN is still available; finish an
//	                          interrupted snapshot; stream from the LSN
func (s *Source) Run(ctx context.Context, from []byte, em capture.Emitter) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("postgres: Run is already running")
	}
	defer s.running.Store(false)

	cp, err := decodeCheckpoint(from)
	if err != nil {
		return err
	}
	if cp != nil && cp.Slot != "" && cp.Slot != s.slot {
		return fmt.Errorf("postgres: checkpoint belongs to slot %q at LSN %s, but slot %q is configured", cp.Slot, cp.LSN, s.slot)
	}
	meta, err := s.conn.connect(ctx)
	if err != nil {
		return err
	}
	defer meta.Close(context.Background())

	if err := checkWALLevel(ctx, meta, s.slot); err != nil {
		return err
	}
	var db string
	if err := meta.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	rels, warns, err := resolveTables(ctx, meta, s.cfg.Tables)
	if err != nil {
		return err
	}
	for _, w := range warns {
		s.log.Warn(w)
	}
	at := "none (first start)"
	if cp != nil {
		at = cp.LSN
	}
	exec := func(ctx context.Context, sql string) error { _, err := meta.Exec(ctx, sql); return err }
	created, err := ensurePublication(ctx, meta, exec, s.pub, s.slot, rels, at)
	if err != nil {
		return err
	}
	if created {
		s.log.Info("created publication", "publication", s.pub, "tables", len(rels))
	}
	slot, err := readSlot(ctx, meta, s.slot)
	if err != nil {
		return err
	}
	if slot.exists {
		if err := s.checkSlot(slot, db, cp); err != nil {
			return err
		}
	}

	switch {
	case cp == nil && !slot.exists:
		cp, err = s.firstStart(ctx, em, meta, db, rels)
		if err != nil {
			return err
		}
	case cp == nil:
		s.log.Warn("replication slot exists but there is no checkpoint: resuming from the slot's confirmed_flush_lsn",
			"confirmed_flush_lsn", slot.confirmedFlush)
		cp = &checkpoint{Slot: s.slot, lsn: slot.confirmedFlush}
		if s.cfg.Snapshot {
			cp.Snap = newSnapState(slot.confirmedFlush)
			if err := s.snapshot(ctx, em, meta, db, rels, cp, nil); err != nil {
				return err
			}
		}
	case !slot.exists:
		return fmt.Errorf("postgres: replication slot %q does not exist, but the checkpoint resumes at LSN %s: the changes since then are lost to this pipeline; reset the pipeline to take a new snapshot (drop its checkpoint and start with snapshot enabled)", s.slot, cp.LSN)
	default:
		if cp.Snap != nil && !cp.Snap.Done {
			s.log.Info("resuming interrupted snapshot", "stream_start", cp.Snap.ID)
			if err := s.snapshot(ctx, em, meta, db, rels, cp, nil); err != nil {
				return err
			}
		}
	}
	return s.stream(ctx, em, meta, db, rels, cp)
}

// checkSlot verifies an existing slot can serve the checkpoint.
func (s *Source) checkSlot(slot slotState, db string, cp *checkpoint) error {
	at := "none"
	if cp != nil {
		at = cp.LSN
	}
	if !slot.logical || slot.plugin != "pgoutput" {
		return fmt.Errorf("postgres: replication slot %q exists but is not a logical pgoutput slot (plugin %q); checkpoint LSN %s", s.slot, slot.plugin, at)
	}
	if slot.database != db {
		return fmt.Errorf("postgres: replication slot %q belongs to database %q, not %q; checkpoint LSN %s", s.slot, slot.database, db, at)
	}
	if slot.walStatus == "lost" {
		return fmt.Errorf("postgres: replication slot %q has lost required WAL (wal_status lost, max_slot_wal_keep_size exceeded); checkpoint LSN %s; drop the slot and reset the pipeline", s.slot, at)
	}
	if cp == nil {
		return nil
	}
	if cp.lsn < slot.confirmedFlush {
		return fmt.Errorf("postgres: checkpoint LSN %s of slot %q is before the slot's confirmed_flush_lsn %s (restart_lsn %s): the changes in between were released and cannot be read again; reset the pipeline to take a new snapshot",
			cp.LSN, s.slot, slot.confirmedFlush, slot.restart)
	}
	if cp.Snap != nil && cp.Snap.ID != "" {
		p1, err := pglogrepl.ParseLSN(cp.Snap.ID)
		if err == nil && !cp.Snap.Done && p1 < slot.confirmedFlush {
			return fmt.Errorf("postgres: snapshot stream start %s of slot %q is before the slot's confirmed_flush_lsn %s", cp.Snap.ID, s.slot, slot.confirmedFlush)
		}
	}
	return nil
}

// firstStart creates the slot and, with Snapshot, takes the initial
// snapshot in the slot's exported snapshot. It returns the checkpoint to
// stream from.
func (s *Source) firstStart(ctx context.Context, em capture.Emitter, meta *pgx.Conn, db string, rels []*relation) (*checkpoint, error) {
	repl, err := s.conn.connectReplication(ctx)
	if err != nil {
		return nil, err
	}
	action := "NOEXPORT_SNAPSHOT"
	if s.cfg.Snapshot {
		action = "EXPORT_SNAPSHOT"
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, s.slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{SnapshotAction: action, Mode: pglogrepl.LogicalReplication})
	if err != nil {
		repl.Close(context.Background())
		return nil, fmt.Errorf("postgres: creating replication slot %q: %w", s.slot, err)
	}
	p1, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		repl.Close(context.Background())
		return nil, fmt.Errorf("postgres: slot %q consistent point %q: %w", s.slot, res.ConsistentPoint, err)
	}
	s.log.Info("created replication slot", "consistent_point", p1, "snapshot", res.SnapshotName)
	cp := &checkpoint{Slot: s.slot, lsn: p1}
	if !s.cfg.Snapshot {
		repl.Close(context.Background())
		return cp, nil
	}
	cp.Snap = newSnapState(p1)
	// The exported snapshot lives until repl runs another command or
	// disconnects; snapshot() closes repl once every worker imported it.
	exp := &exportedSnapshot{name: res.SnapshotName, point: p1, conn: repl}
	if err := s.snapshot(ctx, em, meta, db, rels, cp, exp); err != nil {
		return nil, err
	}
	return cp, nil
}
