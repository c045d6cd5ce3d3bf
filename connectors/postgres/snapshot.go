package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/event"
)

// The snapshot.
//
//  1. Snapshot. On a first start the slot is created with EXPORT_SNAPSHOT;
//     its consistent point P1 is where the stream starts. When resuming (the
//     exported snapshot died with its connection), a TEMPORARY slot is
//     created with EXPORT_SNAPSHOT only to get a fresh snapshot S2 and its
//     consistent point P2 >= P1; the temporary slot disappears with its
//     connection. In both cases the replication connection stays idle until
//     every worker ran
//     BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
//     SET TRANSACTION SNAPSHOT '<name>'
//     and is closed right after.
//  2. Plan. Each table is cut into chunks by key ranges whose bounds are
//     every Nth key of an ordered key scan (N = SnapshotChunkSize), in an
//     order Go reproduces (keys.go). The plan is Committed (an empty
//     transaction) before any chunk, and never changes afterwards.
//  3. Read. SnapshotWorkers workers read chunks in parallel, each in its own
//     imported snapshot. A worker hands a chunk to the emitting goroutine
//     (Run's) once it read maxBufferedRows of it (or all of it), and streams
//     the rest through. The emitting goroutine emits one chunk at a time, in
//     parts of at most partRows rows, each its own source transaction
//     (capture closes a Kafka transaction only between source transactions,
//     so parts keep snapshot transactions as small as the stream's): a part
//     ends only between two rows with different keys, and its Commit splits
//     the chunk at the part's last key, marking the part before it read at
//     this snapshot's point. The chunk's last Commit marks its last part and
//     merges its parts back into the planned chunk (emitChunk).
//  4. Done. A final empty Commit marks the snapshot done; the stream then
//     starts at P1 and applies the catch-up rule (checkpoint.go) until it is
//     past every point a chunk was read at.

// exportedSnapshot is a snapshot exported by CREATE_REPLICATION_SLOT,
// alive while conn stays idle.
type exportedSnapshot struct {
	name  string
	point pglogrepl.LSN
	conn  *pgconn.PgConn
}

func newSnapState(p1 pglogrepl.LSN) *snapState {
	return &snapState{ID: p1.String(), Started: time.Now().UTC().Truncate(time.Microsecond)}
}

var snapshotNameRE = regexp.MustCompile(`^[0-9A-Za-z-]+$`)

// maxBufferedRows bounds the rows a worker holds for one chunk before it
// streams the rest through.
const maxBufferedRows = 500

// partRows is the most rows of a chunk emitted in one source transaction
// (more only while rows share a key): half the chunk, at most 1,000.
func partRows(chunkSize int) int {
	return min(1000, max(1, chunkSize/2))
}

// tempSnapshot creates a temporary slot to export a fresh snapshot.
func (s *Source) tempSnapshot(ctx context.Context) (*exportedSnapshot, error) {
	repl, err := s.conn.connectReplication(ctx)
	if err != nil {
		return nil, err
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "plume_tmp_" + hex.EncodeToString(rnd[:])
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication,
	})
	if err != nil {
		repl.Close(context.Background())
		return nil, fmt.Errorf("postgres: creating temporary slot for a snapshot (pipeline slot %q): %w", s.slot, err)
	}
	p, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		repl.Close(context.Background())
		return nil, err
	}
	s.log.Info("exported fresh snapshot", "temporary_slot", name, "consistent_point", p)
	return &exportedSnapshot{name: res.SnapshotName, point: p, conn: repl}, nil
}

// snapshot reads every unread chunk of cp.Snap and marks the snapshot done.
// exp is the slot's exported snapshot on a first start, nil when resuming.
func (s *Source) snapshot(ctx context.Context, em capture.Emitter, meta *pgx.Conn, db string, rels []*relation, cp *checkpoint, exp *exportedSnapshot) (err error) {
	st := cp.Snap
	if exp == nil {
		if exp, err = s.tempSnapshot(ctx); err != nil {
			return err
		}
	}
	workers, err := s.importSnapshot(ctx, exp)
	exp.conn.Close(context.Background()) // releases the exporter (and a temporary slot)
	if err != nil {
		return err
	}
	defer func() {
		for _, w := range workers {
			w.Close(context.Background()) // ends the read-only transaction
		}
	}()

	metas := map[string]*tableMeta{}
	for _, r := range rels {
		m, err := loadTableMeta(ctx, meta, s.reg, db, r, s.cfg.Keys[r.qualified()])
		if err != nil {
			return err
		}
		metas[r.qualified()] = m
	}
	changed, err := s.plan(ctx, workers[0], st, rels, metas)
	if err != nil {
		return err
	}
	if changed {
		if err := em.Commit(ctx, cp.encode()); err != nil {
			return err
		}
	}
	mark := st.addPoint(exp.point)

	// A task's query is rendered here, before any worker starts: the
	// emitting goroutine splits and merges a table's chunks (emitChunk) while
	// workers read.
	type task struct {
		tm    *tableMeta
		stb   *snapTable
		chunk int
		sql   string
		args  []any
		hi    []keyVal // upper bound; nil for the table's last chunk
	}
	var tasks []task
	for _, stb := range st.Tables {
		for c, r := range stb.Read {
			if r == 0 {
				sql, args := chunkQuery(metas[stb.Table], stb, c)
				var hi []keyVal
				if c < len(stb.bounds) {
					hi = stb.bounds[c]
				}
				tasks = append(tasks, task{metas[stb.Table], stb, c, sql, args, hi})
			}
		}
	}
	s.log.Info("snapshot", "tables", len(st.Tables), "chunks_to_read", len(tasks), "point", exp.point, "stream_start", st.ID)
	for _, stb := range st.Tables {
		// Chunks are cut every SnapshotChunkSize rows (row_number), so
		// chunks x size estimates the table's rows (the last chunk is
		// partial). A table in one chunk has no estimate.
		var rows int64
		if len(stb.Bounds) > 0 {
			rows = int64(stb.chunks()) * int64(s.cfg.SnapshotChunkSize)
		}
		capture.ReportSnapshotPlan(em, stb.Table, stb.chunks()-unread(stb), stb.chunks(), rows)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	taskc := make(chan task)
	outs := make(chan *chunkOut)
	errc := make(chan error, len(workers)+1)
	var wg sync.WaitGroup
	go func() {
		defer close(taskc)
		for _, t := range tasks {
			select {
			case taskc <- t:
			case <-ctx.Done():
				return
			}
		}
	}()
	for _, w := range workers {
		wg.Add(1)
		go func(conn *pgx.Conn) {
			defer wg.Done()
			for t := range taskc {
				out := &chunkOut{stb: t.stb, tm: t.tm, chunk: t.chunk, hi: t.hi}
				if err := s.readChunk(ctx, conn, st, out, t.sql, t.args, exp.point, outs); err != nil {
					errc <- err
					return
				}
			}
		}(w)
	}
	defer func() { cancel(); wg.Wait() }()

	for done := 0; done < len(tasks); done++ {
		var out *chunkOut
		select {
		case out = <-outs:
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := s.emitChunk(ctx, em, cp, out, mark); err != nil {
			return err
		}
		capture.ReportSnapshotChunk(em, out.stb.Table, unread(out.stb) == 0)
		if s.chunkHook != nil {
			s.chunkHook()
		}
	}
	st.Done = true
	if err := em.Commit(ctx, cp.encode()); err != nil {
		return err
	}
	s.log.Info("snapshot done", "stream_start", st.ID)
	return nil
}

// unread counts the chunks of t not read yet.
func unread(t *snapTable) int {
	n := 0
	for _, r := range t.Read {
		if r == 0 {
			n++
		}
	}
	return n
}

// importSnapshot opens one connection per worker, each in a repeatable-read
// transaction on the exported snapshot.
func (s *Source) importSnapshot(ctx context.Context, exp *exportedSnapshot) ([]*pgx.Conn, error) {
	if !snapshotNameRE.MatchString(exp.name) {
		return nil, fmt.Errorf("postgres: unexpected snapshot name %q", exp.name)
	}
	var conns []*pgx.Conn
	fail := func(err error) ([]*pgx.Conn, error) {
		for _, c := range conns {
			c.Close(context.Background())
		}
		return nil, err
	}
	for i := 0; i < s.cfg.SnapshotWorkers; i++ {
		c, err := s.conn.connect(ctx)
		if err != nil {
			return fail(err)
		}
		conns = append(conns, c)
		if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
			return fail(fmt.Errorf("postgres: snapshot transaction: %w", err))
		}
		if _, err := c.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+exp.name+"'"); err != nil {
			return fail(fmt.Errorf("postgres: importing snapshot %s (slot %q, point %s): %w", exp.name, s.slot, exp.point, err))
		}
	}
	return conns, nil
}

// plan makes st.Tables match rels: tables no longer configured are dropped,
// new ones get chunk bounds computed in conn's snapshot. It reports whether
// the plan changed.
func (s *Source) plan(ctx context.Context, conn *pgx.Conn, st *snapState, rels []*relation, metas map[string]*tableMeta) (bool, error) {
	changed := false
	want := map[string]bool{}
	for _, r := range rels {
		want[r.qualified()] = true
	}
	kept := st.Tables[:0]
	for _, t := range st.Tables {
		if want[t.Table] {
			kept = append(kept, t)
		} else {
			changed = true
		}
	}
	st.Tables = kept
	for _, r := range rels {
		tm := metas[r.qualified()]
		if old := st.table(r.qualified()); old != nil {
			if !sameKey(old, tm) {
				return false, fmt.Errorf("postgres: the key of %s changed during its snapshot (planned %v); reset the pipeline to snapshot again", r.qualified(), old.Key)
			}
			continue
		}
		t, err := s.chunkTable(ctx, conn, tm)
		if err != nil {
			return false, err
		}
		st.Tables = append(st.Tables, t)
		changed = true
	}
	return changed, nil
}

func sameKey(t *snapTable, tm *tableMeta) bool {
	if len(t.Key) != len(tm.chunkKey) {
		return false
	}
	for i, k := range tm.chunkKey {
		if tm.table.Columns[k].Name != t.Key[i] || tm.kinds[i] != t.Kinds[i] {
			return false
		}
	}
	return true
}

// keyExprs returns the key column expressions and the ORDER BY list.
func keyExprs(tm *tableMeta) []string {
	exprs := make([]string, len(tm.chunkKey))
	for i, k := range tm.chunkKey {
		e := pgx.Identifier{tm.table.Columns[k].Name}.Sanitize()
		if tm.kinds[i] == kindText {
			e += ` COLLATE "C"`
		}
		exprs[i] = e
	}
	return exprs
}

// chunkTable computes a table's chunk bounds: every Nth key in key order.
func (s *Source) chunkTable(ctx context.Context, conn *pgx.Conn, tm *tableMeta) (*snapTable, error) {
	t := &snapTable{Table: tm.rel.qualified()}
	if tm.chunkKey == nil {
		t.Read = make([]int, 1)
		return t, nil
	}
	for i, k := range tm.chunkKey {
		t.Key = append(t.Key, tm.table.Columns[k].Name)
		t.Kinds = append(t.Kinds, tm.kinds[i])
	}
	exprs := keyExprs(tm)
	cols := make([]string, len(tm.chunkKey))
	outs := make([]string, len(tm.chunkKey))
	for i, k := range tm.chunkKey {
		cols[i] = pgx.Identifier{tm.table.Columns[k].Name}.Sanitize()
		outs[i] = boundExpr(tm.kinds[i], fmt.Sprintf("k%d", i))
		cols[i] += fmt.Sprintf(" AS k%d", i)
	}
	sql := fmt.Sprintf(`SELECT %s FROM (SELECT %s, row_number() OVER (ORDER BY %s) AS rn FROM %s) s WHERE rn %% %d = 0 ORDER BY rn`,
		strings.Join(outs, ", "), strings.Join(cols, ", "), strings.Join(exprs, ", "), tm.rel.fromClause(), s.cfg.SnapshotChunkSize)
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("postgres: computing chunks of %s: %w", t.Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		b := make([]string, len(tm.chunkKey))
		ptrs := make([]any, len(b))
		for i := range b {
			ptrs[i] = &b[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		t.Bounds = append(t.Bounds, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: computing chunks of %s: %w", t.Table, err)
	}
	t.Read = make([]int, t.chunks())
	if err := t.parse(); err != nil {
		return nil, err
	}
	return t, nil
}

// chunkQuery builds the SELECT of one chunk and its arguments.
func chunkQuery(tm *tableMeta, t *snapTable, c int) (string, []any) {
	cols := make([]string, len(tm.table.Columns))
	for i, col := range tm.table.Columns {
		cols[i] = pgx.Identifier{col.Name}.Sanitize()
	}
	sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + tm.rel.fromClause()
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	if len(t.Key) == 0 {
		return sql, args
	}
	row := "ROW(" + strings.Join(keyExprs(tm), ", ") + ")"
	// Parameters are text, cast per kind (keys.go: paramExpr, paramText).
	param := func(b int) string {
		ps := make([]string, len(t.Bounds[b]))
		for i, v := range t.Bounds[b] {
			args = append(args, paramText(t.Kinds[i], v, t.bounds[b][i]))
			ps[i] = paramExpr(t.Kinds[i], "$"+strconv.Itoa(len(args)-1))
		}
		return "ROW(" + strings.Join(ps, ", ") + ")"
	}
	var conds []string
	if c > 0 {
		conds = append(conds, row+" > "+param(c-1))
	}
	if c < len(t.Bounds) {
		conds = append(conds, row+" <= "+param(c))
	}
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	// In key order, so that a chunk can be emitted in parts (emitChunk).
	sql += " ORDER BY " + strings.Join(keyExprs(tm), ", ")
	return sql, args
}

// chunkOut is a chunk handed from a worker to the emitting goroutine: its
// rows, and when it outgrew the buffer, a channel with the rest.
type chunkOut struct {
	stb   *snapTable
	tm    *tableMeta
	chunk int      // index in the plan when the run started (for messages)
	hi    []keyVal // upper bound; nil for the table's last chunk
	rows  []*event.Change
	more  chan []*event.Change // nil when rows is the whole chunk
	err   error                // set before more is closed
}

// each calls fn for every row of the chunk, in key order.
func (o *chunkOut) each(fn func(*event.Change) error) error {
	for _, c := range o.rows {
		if err := fn(c); err != nil {
			return err
		}
	}
	if o.more == nil {
		return nil
	}
	for batch := range o.more {
		for _, c := range batch {
			if err := fn(c); err != nil {
				// The worker stops at ctx cancellation.
				return err
			}
		}
	}
	return o.err
}

// emitChunk emits a chunk in parts and marks it read at mark.
//
// Invariant (checkpoint.go, 3): after every Commit, each key's chunk is
// marked read iff its row, if any, is in Kafka, and with the point of the
// snapshot it was read in. A part's Commit splits the chunk at the part's
// last key k: the first half, (lo, k], holds exactly the rows emitted so far
// (rows arrive in key order, and a part ends only where the next row's key
// compares greater, so no later row of this chunk has a key <= k) and is
// marked with mark; the second half is unread. After the last part the
// halves, all marked with mark, are merged back into the planned chunk,
// which keeps every key's mark. A crash leaves the split in the checkpoint;
// the resumed run reads only the unread half, in its own snapshot.
func (s *Source) emitChunk(ctx context.Context, em capture.Emitter, cp *checkpoint, out *chunkOut, mark int) error {
	t := out.stb
	c0 := len(t.bounds) // the chunk's index now: the chunk whose upper bound is hi
	if out.hi != nil {
		c0 = t.chunkOf(out.hi)
	}
	if c0 >= len(t.Read) || t.Read[c0] != 0 || (out.hi != nil && compareKey(t.Kinds, t.bounds[c0], out.hi) != 0) {
		return fmt.Errorf("postgres: snapshot of %s: chunk %d not found unread in the plan", t.Table, out.chunk)
	}
	limit := partRows(s.cfg.SnapshotChunkSize)
	splits, n := 0, 0
	split := len(t.Key) > 0 // the chunk can be split (the rows are in key order)
	var prev []keyVal       // key of the last row emitted, once the part is full
	var prevText []string
	err := out.each(func(c *event.Change) error {
		var key []keyVal
		var text []string
		if split && (prev != nil || n+1 >= limit) {
			var ok bool
			if key, text, ok = chunkKeyOf(out.tm, c.After); !ok {
				// Not expected for a chunk key; the rest of the chunk is
				// then one part.
				split, key, prev = false, nil, nil
			}
		}
		if prev != nil && compareKey(t.Kinds, prev, key) < 0 {
			// The part ends after prev: split the chunk there.
			t.Bounds = slices.Insert(t.Bounds, c0+splits, prevText)
			t.bounds = slices.Insert(t.bounds, c0+splits, prev)
			t.Read = slices.Insert(t.Read, c0+splits, mark)
			splits, n, prev = splits+1, 0, nil
			if err := em.Commit(ctx, cp.encode()); err != nil {
				return err
			}
		}
		if err := em.Emit(ctx, c); err != nil {
			return err
		}
		n++
		if n >= limit && key != nil {
			prev, prevText = key, text
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Merge the parts: every one is marked with mark.
	t.Bounds = slices.Delete(t.Bounds, c0, c0+splits)
	t.bounds = slices.Delete(t.bounds, c0, c0+splits)
	t.Read = slices.Delete(t.Read, c0, c0+splits)
	t.Read[c0] = mark
	return em.Commit(ctx, cp.encode())
}

// chunkKeyOf returns a row's chunk key, comparable and as bound text (the
// form boundExpr renders); ok is false if a key column has no comparable
// value or its text does not parse back to the same key.
func chunkKeyOf(tm *tableMeta, row []event.Value) ([]keyVal, []string, bool) {
	key := make([]keyVal, len(tm.chunkKey))
	text := make([]string, len(tm.chunkKey))
	for i, k := range tm.chunkKey {
		if k >= len(row) {
			return nil, nil, false
		}
		kind := tm.kinds[i]
		kv, ok := keyValOf(kind, row[k])
		if !ok {
			return nil, nil, false
		}
		var s string
		switch kind {
		case kindInt, kindOID:
			s = strconv.FormatInt(kv.i, 10)
		case kindBool:
			s = strconv.FormatBool(kv.i == 1)
		case kindText, kindUUID:
			s = kv.s
		case kindBytea:
			s = hex.EncodeToString([]byte(kv.s))
		case kindNumeric:
			d, _ := row[k].(event.Decimal)
			s = string(d) // numeric_out, as k::text
		case kindDate, kindTimestamp, kindTimestamptz:
			switch kv.i {
			case math.MinInt64:
				s = "-infinity"
			case math.MaxInt64:
				s = "infinity"
			default:
				s = strconv.FormatInt(kv.i, 10)
			}
		default:
			return nil, nil, false
		}
		back, err := parseKeyText(kind, s)
		if err != nil || compareKey([]string{kind}, []keyVal{back}, []keyVal{kv}) != 0 {
			return nil, nil, false
		}
		key[i], text[i] = back, s
	}
	return key, text, true
}

// readChunk reads a chunk (sql, args: chunkQuery's) in conn's snapshot and
// hands it to the emitting goroutine.
func (s *Source) readChunk(ctx context.Context, conn *pgx.Conn, st *snapState, out *chunkOut, sql string, args []any, point pglogrepl.LSN, outs chan<- *chunkOut) error {
	t, tm, c := out.stb, out.tm, out.chunk
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("postgres: snapshot of %s chunk %d: %w", t.Table, c, err)
	}
	defer rows.Close()
	pos := "snapshot:" + st.ID
	srcFields := []event.Field{{Name: "lsn", Value: uint64(point)}}
	var batch []*event.Change
	var n int64
	send := func(o *chunkOut) error {
		select {
		case outs <- o:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]event.Value, len(raw))
		for i, b := range raw {
			if b == nil {
				continue
			}
			v, err := tm.decs[i](b)
			if err != nil {
				return fmt.Errorf("postgres: snapshot of %s.%s (%s): %w", t.Table, tm.table.Columns[i].Name, tm.table.Columns[i].Type, err)
			}
			vals[i] = v
		}
		ch := &event.Change{
			Op: event.OpRead, Table: tm.table, After: vals, Commit: st.Started,
			Pos: pos, Index: n, TableIndex: n + 1, Snapshot: true, SourceFields: srcFields,
		}
		n++
		if out.more == nil {
			out.rows = append(out.rows, ch)
			if len(out.rows) >= maxBufferedRows {
				out.more = make(chan []*event.Change, 1)
				if err := send(out); err != nil {
					return err
				}
			}
			continue
		}
		batch = append(batch, ch)
		if len(batch) >= 512 {
			select {
			case out.more <- batch:
			case <-ctx.Done():
				return ctx.Err()
			}
			batch = nil
		}
	}
	err = rows.Err()
	if err != nil {
		err = fmt.Errorf("postgres: snapshot of %s chunk %d: %w", t.Table, c, err)
	}
	if out.more == nil {
		if err != nil {
			return err
		}
		return send(out)
	}
	if err == nil && len(batch) > 0 {
		select {
		case out.more <- batch:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	out.err = err
	close(out.more)
	if err != nil {
		return err
	}
	return nil
}
