package sql

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/plumecdc/plume/pkg/target"
)

// closeTimeout bounds rollbacks and closes that run after ctx is done.
const closeTimeout = 10 * time.Second

// Target keeps one table of a PostgreSQL or MySQL/MariaDB database in sync
// with the messages routed to it. It implements target.Target.
type Target struct {
	set      *settings
	pipeline string
	name     string
	log      *slog.Logger
	db       backend

	info  *tableInfo // the target table, loaded at Open
	soft  *column    // delete: soft:<column>
	stale bool       // reload info before the next batch

	// beforeCommit, when set (tests), runs just before COMMIT.
	beforeCommit func(ctx context.Context, tx txn) error
	// nstmts counts the row statements executed (tests, debug logs).
	nstmts int
}

var _ target.Target = (*Target)(nil)

// New validates cfg and returns the target of pipeline named name. It does
// not connect: Open does.
func New(ctx context.Context, cfg Config, pipeline, name string, log *slog.Logger) (*Target, error) {
	set, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("sql target %q: %w", name, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Target{
		set:      set,
		pipeline: pipeline,
		name:     name,
		log:      log.With("target", name, "table", set.table.String(), "host", set.conn.host),
	}
	switch set.conn.dialect {
	case dialectPostgres:
		t.db = &pgBackend{cfg: set.conn.pg}
	case dialectMySQL:
		t.db = &myBackend{cfg: set.conn.my}
	}
	return t, nil
}

// RowsOnly reports that the target reads only the messages' rows and
// attributes (statements are built from them, not from the CloudEvent), so
// the delivery layer need not keep the consumed records (target.RowsOnly).
func (t *Target) RowsOnly() bool { return true }

// Open connects, creates the offsets table if it is missing, reads the
// target table's columns and returns the offsets stored for this pipeline
// and target: they are authoritative (see Apply). With none stored it
// returns an empty, non-nil map.
func (t *Target) Open(ctx context.Context) (target.Offsets, error) {
	if err := t.db.connect(ctx); err != nil {
		return nil, t.fail("connect", err)
	}
	if err := t.createOffsetsTable(ctx); err != nil {
		return nil, t.fail("create offsets table "+t.set.offsets.String(), err)
	}
	if err := t.reload(ctx); err != nil {
		return nil, err
	}
	tx, err := t.db.begin(ctx)
	if err != nil {
		return nil, t.fail("begin", err)
	}
	defer t.rollback(tx)
	offs, err := t.readOffsets(ctx, tx, false)
	if err != nil {
		return nil, t.fail("read offsets", err)
	}
	t.log.Info("sql target open", "dialect", t.set.conn.dialect, "offsets", len(offs))
	return offs, nil
}

// reload reads the target table's shape.
func (t *Target) reload(ctx context.Context) error {
	info, err := t.db.loadTable(ctx, t.set.table, t.set.key)
	var se *setupError
	switch {
	case errors.Is(err, errNoTable):
		return target.Permanent(t.wrap("open table", err))
	case errors.As(err, &se):
		return target.Permanent(t.wrap("open table", err))
	case err != nil:
		return t.fail("read table columns", err)
	}
	var soft *column
	if t.set.del == deleteSoft {
		soft = info.columns[t.set.softCol]
		switch {
		case soft == nil:
			return target.Permanent(t.wrap("open table", fmt.Errorf("soft-delete column %q does not exist", t.set.softCol)))
		case soft.kind != kBool && soft.kind != kNumber:
			return target.Permanent(t.wrap("open table", fmt.Errorf("soft-delete column %q is %s, not boolean", t.set.softCol, soft.sqlType)))
		}
	}
	t.info, t.soft, t.stale = info, soft, false
	return nil
}

// Apply applies the batch in one transaction:
//
//	BEGIN
//	SELECT ... FROM <offsets table> WHERE pipeline = ? AND target = ? FOR UPDATE
//	-- messages at offsets below the stored next_offset were applied by an
//	-- earlier transaction: skip them
//	DELETE FROM <table> (truncate), DELETE ... WHERE (key) IN (...), INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE ...
//	INSERT INTO <offsets table> ... (b.Offsets, never moving backwards)
//	COMMIT
//
// Offsets in the target DB are written in the same transaction as the rows
// they cover; therefore after any crash the stored offset is exactly the
// first record not applied. Open returns them to the delivery layer, which
// resumes there, and a replayed message is skipped by the check above: a
// replay after a crash is a no-op.
//
// Errors: *target.RecordErrors (Applied false, nothing committed) for
// poison messages: unknown column, missing or null key, a value the
// database rejects (data exception, constraint violation);
// target.Permanent for bad credentials, a missing database or table,
// permission denied; a plain error (retry) for everything else.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	if err := t.db.connect(ctx); err != nil {
		return t.fail("connect", err)
	}
	if t.info == nil || t.stale {
		if err := t.reload(ctx); err != nil {
			return err
		}
	}
	tx, err := t.db.begin(ctx)
	if err != nil {
		return t.fail("begin", err)
	}
	defer t.rollback(tx)

	ops, skipped, poison, err := t.prepareBatch(ctx, tx, b)
	if err != nil {
		return err
	}
	if unknownColumn(poison) {
		// Perhaps a column was added since the table was loaded: reload
		// once before calling the messages poison.
		if err := t.reload(ctx); err != nil {
			return err
		}
		if ops, skipped, poison, err = t.prepareBatch(ctx, tx, b); err != nil {
			return err
		}
	}
	if len(poison) > 0 {
		return &target.RecordErrors{Failed: poison}
	}
	p := coalesce(ops, t.softDeleteFunc())
	if err := t.execAll(ctx, tx, t.statements(p)); err != nil {
		if t.db.classify(err) != classRow {
			return t.fail("apply", err)
		}
		// A row was rejected: find which, in a fresh transaction.
		t.rollback(tx)
		t.log.Debug("batch rejected, retrying row by row", "messages", len(b.Messages), "error", scrub(err.Error(), t.set.conn.password))
		return t.applyRowByRow(ctx, b)
	}
	if err := t.commit(ctx, tx, b.Offsets); err != nil {
		return err
	}
	t.log.Debug("batch applied", "messages", len(b.Messages), "skipped", skipped,
		"upserts", len(p.upserts), "deletes", len(p.deletes), "truncate", p.truncate)
	return nil
}

// prepareBatch locks and reads the stored offsets, drops the messages they
// cover and validates the others. err is a database error, already
// classified.
func (t *Target) prepareBatch(ctx context.Context, tx txn, b *target.Batch) (ops []*rowOp, skipped int, poison map[int]error, err error) {
	stored, err := t.readOffsets(ctx, tx, true)
	if err != nil {
		return nil, 0, nil, t.fail("read offsets", err)
	}
	for i := range b.Messages {
		m := &b.Messages[i]
		tp := target.TopicPartition{Topic: m.Topic, Partition: m.Partition}
		if next, ok := stored[tp]; ok && m.Offset < next {
			skipped++ // applied by an earlier transaction
			continue
		}
		op, err := t.prepare(i, m)
		if err != nil {
			if poison == nil {
				poison = map[int]error{}
			}
			poison[i] = fmt.Errorf("sql target %q: %w: %w", t.name, errPoison, err)
			continue
		}
		if op != nil {
			ops = append(ops, op)
		}
	}
	return ops, skipped, poison, nil
}

func unknownColumn(poison map[int]error) bool {
	for _, err := range poison {
		if errors.Is(err, errUnknownColumn) {
			return true
		}
	}
	return false
}

// applyRowByRow re-runs the batch one message at a time, in message order,
// each in a savepoint, to find the messages the database rejects. If some
// are, nothing is committed and they are returned as RecordErrors; if none
// is (a batch-level conflict only), the batch commits.
func (t *Target) applyRowByRow(ctx context.Context, b *target.Batch) error {
	tx, err := t.db.begin(ctx)
	if err != nil {
		return t.fail("begin", err)
	}
	defer t.rollback(tx)
	ops, _, poison, err := t.prepareBatch(ctx, tx, b)
	if err != nil {
		return err
	}
	failed := poison
	if failed == nil {
		failed = map[int]error{}
	}
	for _, op := range ops {
		if err := tx.exec(ctx, "SAVEPOINT plume_row"); err != nil {
			return t.fail("savepoint", err)
		}
		err := t.execAll(ctx, tx, t.statements(single(op)))
		if err == nil {
			if err := tx.exec(ctx, "RELEASE SAVEPOINT plume_row"); err != nil {
				return t.fail("release savepoint", err)
			}
			continue
		}
		if t.db.classify(err) != classRow {
			return t.fail("apply", err)
		}
		failed[op.index] = t.rowError(err)
		if err := tx.exec(ctx, "ROLLBACK TO SAVEPOINT plume_row"); err != nil {
			return t.fail("rollback to savepoint", err)
		}
	}
	if len(failed) > 0 {
		return &target.RecordErrors{Failed: failed}
	}
	return t.commit(ctx, tx, b.Offsets)
}

// softDeleteFunc returns, for delete: soft:<column>, the function that
// marks an upserted row deleted (see coalesce); nil otherwise.
func (t *Target) softDeleteFunc() func(up, del *rowOp) *rowOp {
	if t.soft == nil {
		return nil
	}
	return func(up, del *rowOp) *rowOp {
		marked := *up
		marked.index = del.index
		marked.vals = slices.Clone(up.vals)
		for i, c := range up.cols {
			if c == t.soft {
				// bind cannot fail for a boolean on a boolean or numeric column.
				marked.vals[i], _ = t.db.bind(c, true)
			}
		}
		return &marked
	}
}

// single is the plan of one message.
func single(op *rowOp) *plan {
	switch op.kind {
	case opTruncate:
		return &plan{truncate: true}
	case opDelete:
		return &plan{deletes: []*rowOp{op}}
	}
	return &plan{upserts: []*rowOp{op}}
}

// commit stores the offsets in the transaction that holds the rows, then
// commits. Offsets in the target DB are written in the same transaction as
// the rows they cover; therefore after any crash the stored offset is
// exactly the first record not applied.
func (t *Target) commit(ctx context.Context, tx txn, offs target.Offsets) error {
	if err := t.writeOffsets(ctx, tx, offs); err != nil {
		return t.fail("write offsets", err)
	}
	if t.beforeCommit != nil {
		if err := t.beforeCommit(ctx, tx); err != nil {
			return t.fail("before commit", err)
		}
	}
	if err := tx.commit(ctx); err != nil {
		// The outcome of a COMMIT whose reply was lost is unknown; the
		// retry finds out from the stored offsets.
		return t.fail("commit", err)
	}
	return nil
}

// statements renders a plan: truncate, deletes, then upserts grouped by
// column set.
func (t *Target) statements(p *plan) []stmt {
	w := newBuilder(t.db, t.info)
	var out []stmt
	del := "DELETE FROM " + t.info.quoted
	if t.set.del == deleteSoft {
		del = "UPDATE " + t.info.quoted + " SET " + t.db.quote(t.soft.name) + " = TRUE"
	}
	if p.truncate {
		out = append(out, stmt{sql: del})
	}
	if len(p.deletes) > 0 {
		keys := make([][]any, len(p.deletes))
		for i, op := range p.deletes {
			keys[i] = op.keyVals
		}
		out = append(out, w.keyed(del, keys, t.set.batchSize)...)
	}
	// Group upserts by column set, in order of first appearance.
	groups := map[string][]*rowOp{}
	var sigs []string
	for _, op := range p.upserts {
		if _, ok := groups[op.sig]; !ok {
			sigs = append(sigs, op.sig)
		}
		groups[op.sig] = append(groups[op.sig], op)
	}
	for _, sig := range sigs {
		g := groups[sig]
		rows := make([][]any, len(g))
		for i, op := range g {
			rows[i] = op.vals
		}
		out = append(out, w.upserts(g[0].cols, rows, t.set.batchSize)...)
	}
	return out
}

func (t *Target) execAll(ctx context.Context, tx txn, stmts []stmt) error {
	for _, s := range stmts {
		t.nstmts++
		if err := tx.exec(ctx, s.sql, s.args...); err != nil {
			return err
		}
	}
	return nil
}

// rollback ends tx if it is still open; after a commit it is a no-op.
func (t *Target) rollback(tx txn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = tx.rollback(ctx)
}

// fail classifies a database error: Permanent, or plain (retried). A
// schema error makes the next batch reload the table's shape. The message
// names the target, table and host, never the password.
func (t *Target) fail(what string, err error) error {
	switch t.db.classify(err) {
	case classPermanent:
		return target.Permanent(t.wrap(what, err))
	case classSchema:
		t.stale = true
	case classRetry:
		t.db.reset()
	}
	return t.wrap(what, err)
}

// Close releases the connection.
func (t *Target) Close() error {
	return t.db.close()
}
