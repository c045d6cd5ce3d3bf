package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/event"
)

// Ad-hoc re-snapshots while streaming, with DBLog watermarks.
//
// For each chunk of the table (SnapshotChunkSize rows in key order after
// the last key done), on a normal connection, between stream messages:
//
//  1. SELECT pg_logical_emit_message(false, 'plume_watermark', 'low:<id>')
//  2. SELECT the chunk (key order, LIMIT N) into memory
//  3. SELECT pg_logical_emit_message(false, 'plume_watermark', 'high:<id>')
//
// The stream then goes on. Every change of the table emitted between the
// low and the high watermark removes its key(s) from the chunk: the stream
// event is at least as new as the SELECT. When the high watermark arrives
// the remaining rows are emitted as snapshot reads and Committed with a
// checkpoint at the high watermark's LSN that records the chunk's last key,
// so a restart continues with the next chunk. Changes committed before the
// low watermark are visible to the SELECT; changes after the high one come
// later in the stream: per key, consumers see the SELECTed row and then only
// newer changes.
//
// Re-snapshot rows: Op read, Snapshot true, Pos "snapshot:<LSN of the first
// low watermark>" (so their ids differ from the initial snapshot's), Commit
// the time of the request. Only tables with a primary key or key override
// can be re-snapshotted (chunks need a key order).

const watermarkPrefix = "plume_watermark"

// resnapRequest asks the stream to re-snapshot one table.
type resnapRequest struct {
	table string
}

// resnapState is a queued or running re-snapshot, kept in the checkpoint.
type resnapState struct {
	Table   string    `json:"table"`
	ID      string    `json:"id,omitempty"`    // LSN of the first low watermark
	After   []string  `json:"after,omitempty"` // last key done (text), none yet if empty
	Started time.Time `json:"started"`
}

// resnapWindow is one chunk between its watermarks.
type resnapWindow struct {
	state *resnapState
	meta  *tableMeta
	id    string
	open  bool // low watermark seen
	rows  map[string]*event.Change
	order []string
	last  []string // key text of the chunk's last row
	full  bool     // the chunk had N rows: more may follow
}

// Resnapshot asks the running source to snapshot table ("schema.table", a
// captured table with a primary key or key override) again while it keeps
// streaming. The request is kept in the checkpoint: it survives restarts.
func (s *Source) Resnapshot(table string) error {
	if !s.running.Load() {
		return errors.New("postgres: Resnapshot needs a running source")
	}
	if !strings.Contains(table, ".") {
		table = "public." + table
	}
	select {
	case s.resnap <- resnapRequest{table: table}:
		return nil
	default:
		return errors.New("postgres: too many pending Resnapshot requests")
	}
}

// queueResnap validates a request against the captured tables and queues it.
func (st *streamer) queueResnap(req resnapRequest) {
	ok := false
	for _, r := range st.relsByName {
		if r.qualified() == req.table {
			ok = true
		}
	}
	if !ok {
		st.s.log.Error("Resnapshot: not a captured table", "table", req.table)
		return
	}
	for _, q := range st.pos.Resnap {
		if q.Table == req.table && q.ID == "" {
			return // already queued and not started
		}
	}
	st.pos.Resnap = append(st.pos.Resnap, &resnapState{Table: req.table, Started: time.Now().UTC().Truncate(time.Microsecond)})
	st.s.log.Info("re-snapshot queued", "table", req.table)
}

// nextChunk starts the next re-snapshot chunk when none is open.
func (st *streamer) nextChunk(ctx context.Context) error {
	for st.window == nil && len(st.pos.Resnap) > 0 && !st.inTxn {
		rs := st.pos.Resnap[0]
		tm, err := st.resnapMeta(ctx, rs.Table)
		var bad badResnap
		if errors.As(err, &bad) {
			st.s.log.Error("Resnapshot: dropping request", "table", rs.Table, "err", err)
			st.pos.Resnap = st.pos.Resnap[1:]
			continue
		}
		if err != nil {
			return err // transient: the request stays queued
		}
		return st.startChunk(ctx, rs, tm)
	}
	return nil
}

// badResnap is a request that can never run (dropped with an error log).
type badResnap struct{ msg string }

func (e badResnap) Error() string { return e.msg }

func (st *streamer) resnapMeta(ctx context.Context, table string) (*tableMeta, error) {
	var rel *relation
	for _, r := range st.relsByName {
		if r.qualified() == table {
			rel = r
		}
	}
	if rel == nil {
		return nil, badResnap{"not a captured table"}
	}
	tm, err := loadTableMeta(ctx, st.meta, st.s.reg, st.db, rel, st.s.cfg.Keys[table])
	if err != nil {
		if ctx.Err() == nil && !st.meta.IsClosed() && strings.Contains(err.Error(), "key override") {
			return nil, badResnap{err.Error()}
		}
		return nil, err
	}
	pk, err := primaryKey(ctx, st.meta, rel.oid)
	if err != nil {
		return nil, err
	}
	if len(pk) == 0 && len(st.s.cfg.Keys[table]) == 0 {
		return nil, badResnap{"table has no primary key or key override"}
	}
	return tm, nil
}

func (st *streamer) emitWatermark(ctx context.Context, kind, id string) (pglogrepl.LSN, error) {
	var s string
	if err := st.meta.QueryRow(ctx, `SELECT pg_logical_emit_message(false, '`+watermarkPrefix+`', $1)::text`, kind+":"+id).Scan(&s); err != nil {
		return 0, fmt.Errorf("postgres: writing %s watermark: %w", kind, err)
	}
	return pglogrepl.ParseLSN(s)
}

// startChunk writes the low watermark, reads the chunk and writes the high
// watermark.
func (st *streamer) startChunk(ctx context.Context, rs *resnapState, tm *tableMeta) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	low, err := st.emitWatermark(ctx, "low", id)
	if err != nil {
		return err
	}
	if rs.ID == "" {
		rs.ID = low.String()
	}
	t := tm.table
	cols := make([]string, 0, len(t.Columns)+len(t.Key))
	for _, c := range t.Columns {
		cols = append(cols, pgx.Identifier{c.Name}.Sanitize())
	}
	keys := make([]string, len(t.Key))
	params := make([]string, len(t.Key))
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	for i, k := range t.Key {
		keys[i] = pgx.Identifier{t.Columns[k].Name}.Sanitize()
		cols = append(cols, keys[i]+"::text AS plume_key_"+strconv.Itoa(i))
		params[i] = "$" + strconv.Itoa(i+1) + "::text::" + t.Columns[k].Type
	}
	sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + tm.rel.fromClause()
	if len(rs.After) == len(t.Key) {
		sql += " WHERE ROW(" + strings.Join(keys, ", ") + ") > ROW(" + strings.Join(params, ", ") + ")"
		for _, a := range rs.After {
			args = append(args, a)
		}
	}
	sql += " ORDER BY " + strings.Join(keys, ", ") + " LIMIT " + strconv.Itoa(st.s.cfg.SnapshotChunkSize)
	rows, err := st.meta.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("postgres: re-snapshot of %s: %w", rs.Table, err)
	}
	w := &resnapWindow{state: rs, meta: tm, id: id, rows: map[string]*event.Change{}}
	n := int64(0)
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]event.Value, len(t.Columns))
		for i := range t.Columns {
			if raw[i] == nil {
				continue
			}
			v, err := tm.decs[i](raw[i])
			if err != nil {
				rows.Close()
				return fmt.Errorf("postgres: re-snapshot of %s.%s: %w", rs.Table, t.Columns[i].Name, err)
			}
			vals[i] = v
		}
		w.last = w.last[:0]
		for _, b := range raw[len(t.Columns):] {
			w.last = append(w.last, string(b))
		}
		c := &event.Change{Op: event.OpRead, Table: t, After: vals, Commit: rs.Started,
			Pos: "snapshot:" + rs.ID, Index: n, TableIndex: n + 1, Snapshot: true,
			SourceFields: []event.Field{{Name: "lsn", Value: uint64(low)}}}
		n++
		subj := c.Subject()
		w.rows[subj] = c
		w.order = append(w.order, subj)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("postgres: re-snapshot of %s: %w", rs.Table, err)
	}
	w.full = n >= int64(st.s.cfg.SnapshotChunkSize)
	if _, err := st.emitWatermark(ctx, "high", id); err != nil {
		return err
	}
	st.window = w
	return nil
}

// watermark handles a watermark message of the open window.
func (st *streamer) watermark(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) error {
	w := st.window
	kind, id, _ := strings.Cut(string(m.Content), ":")
	if w == nil || id != w.id {
		return nil // a window of an earlier run
	}
	switch kind {
	case "low":
		w.open = true
		return nil
	case "high":
		if !w.open {
			return fmt.Errorf("postgres: re-snapshot high watermark %s before its low watermark", id)
		}
	default:
		return nil
	}
	st.window = nil
	for _, subj := range w.order {
		if c := w.rows[subj]; c != nil {
			if err := st.em.Emit(ctx, c); err != nil {
				return err
			}
		}
	}
	rs := w.state
	if w.full && len(w.last) > 0 {
		rs.After = append([]string(nil), w.last...)
	} else {
		st.pos.Resnap = st.pos.Resnap[1:]
		st.s.log.Info("re-snapshot done", "table", rs.Table)
	}
	st.pos.lsn = m.LSN // > pos.lsn: message() skips older ones
	st.dropFilterIfPassed()
	return st.em.Commit(ctx, st.pos.encode())
}

// streamChanged removes keys a stream event touched from the open window.
func (st *streamer) streamChanged(r *streamRel, op event.Op, before, after []event.Value) {
	w := st.window
	if w == nil || !w.open || r.table.QualifiedName() != w.state.Table {
		return
	}
	if op == event.OpTruncate {
		clear(w.rows)
		return
	}
	for _, img := range [][]event.Value{before, after} {
		if img == nil {
			continue
		}
		c := event.Change{Table: r.table, After: img}
		delete(w.rows, c.Subject())
	}
}
