package sql

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

type opKind int

const (
	opUpsert opKind = iota
	opDelete
	opTruncate
)

// rowOp is one validated message, its values bound for the database.
type rowOp struct {
	index   int // into Batch.Messages
	kind    opKind
	key     string    // canonical key, the identity used to coalesce
	keyVals []any     // bound key values, in key column order
	cols    []*column // upsert: columns written, sorted by name
	vals    []any     // upsert: bound values, aligned with cols
	sig     string    // upsert: the column set, to group rows into statements
}

// plan is the net effect of a batch: an optional truncate first, then the
// last state of every key changed after it.
type plan struct {
	truncate bool
	deletes  []*rowOp
	upserts  []*rowOp
}

// coalesce reduces ops (in message order) to their net effect. For each
// key the last change wins: if it is a delete the row is deleted, else the
// last row image is upserted. A truncate discards every earlier change.
// Each key then appears once, so the statements may run in any order and
// still leave the table as applying the messages one by one would (deletes
// run first so that a unique value freed by one key can be taken by
// another; if a statement still fails, the row-by-row fallback applies
// the messages in their original order).
//
// With soft deletes, softDelete (non-nil) turns an upsert followed by a
// delete of the same key into one upsert of that row marked deleted, as
// applying them one by one would leave it; a delete with no upsert before
// it in the batch stays an UPDATE of the soft-delete column.
func coalesce(ops []*rowOp, softDelete func(up *rowOp, del *rowOp) *rowOp) *plan {
	p := &plan{}
	last := map[string]*rowOp{}
	var order []string
	for _, op := range ops {
		if op.kind == opTruncate {
			p.truncate = true
			clear(last)
			order = order[:0]
			continue
		}
		prev, seen := last[op.key]
		if !seen {
			order = append(order, op.key)
		}
		if softDelete != nil && op.kind == opDelete && seen && prev.kind == opUpsert {
			op = softDelete(prev, op)
		}
		last[op.key] = op
	}
	for _, k := range order {
		op := last[k]
		if op.kind == opDelete {
			p.deletes = append(p.deletes, op)
		} else {
			p.upserts = append(p.upserts, op)
		}
	}
	return p
}

// prepare validates message i and binds its values. It returns nil for a
// message with nothing to do (a delete or truncate with delete: ignore).
// Errors are poison: the message can never be applied.
func (t *Target) prepare(i int, m *target.Message) (*rowOp, error) {
	switch m.Op {
	case event.OpTruncate:
		if t.set.del == deleteIgnore {
			return nil, nil
		}
		return &rowOp{index: i, kind: opTruncate}, nil
	case event.OpDelete:
		if t.set.del == deleteIgnore {
			return nil, nil
		}
		op := &rowOp{index: i, kind: opDelete}
		return op, t.bindKey(op, m.Row)
	case event.OpCreate, event.OpUpdate, event.OpRead:
	default:
		return nil, fmt.Errorf("unsupported operation %q", m.Op.Code())
	}

	op := &rowOp{index: i, kind: opUpsert}
	byCol := make(map[string]any, len(m.Row))
	from := make(map[string]string, len(m.Row))
	fields := make([]string, 0, len(m.Row))
	for field := range m.Row {
		fields = append(fields, field)
	}
	sort.Strings(fields) // deterministic errors
	for _, field := range fields {
		v := m.Row[field]
		name := t.columnName(field)
		c := t.info.columns[name]
		if c == nil {
			if name != field {
				return nil, fmt.Errorf("%w %q (from field %q) in %s", errUnknownColumn, name, field, t.info.name)
			}
			return nil, fmt.Errorf("%w %q in %s", errUnknownColumn, name, t.info.name)
		}
		if c.generated {
			return nil, fmt.Errorf("column %q of %s is generated and cannot be written", name, t.info.name)
		}
		if prev, dup := from[name]; dup {
			return nil, fmt.Errorf("fields %q and %q both map to column %q", prev, field, name)
		}
		from[name] = field
		byCol[name] = v
	}
	if t.soft != nil {
		if _, ok := byCol[t.soft.name]; !ok {
			byCol[t.soft.name] = false // a live row is not deleted
		}
	}
	if err := t.bindKey(op, byColRow(byCol)); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(byCol))
	for name := range byCol {
		names = append(names, name)
	}
	sort.Strings(names)
	op.cols = make([]*column, len(names))
	op.vals = make([]any, len(names))
	for j, name := range names {
		c := t.info.columns[name]
		v, err := t.db.bind(c, byCol[name])
		if err != nil {
			return nil, fmt.Errorf("column %q (%s): %v", name, c.sqlType, err)
		}
		op.cols[j], op.vals[j] = c, v
	}
	op.sig = strings.Join(names, "\x00")
	return op, nil
}

// byColRow marks a row already keyed by column name.
type byColRow map[string]any

// bindKey binds the key columns of row (a message row, or a byColRow) and
// computes the canonical key.
func (t *Target) bindKey(op *rowOp, row any) error {
	var get func(col string) (any, bool)
	switch r := row.(type) {
	case byColRow:
		get = func(col string) (any, bool) { v, ok := r[col]; return v, ok }
	case map[string]any:
		// Find the field that maps to each key column.
		get = func(col string) (any, bool) {
			for field, v := range r {
				if t.columnName(field) == col {
					return v, true
				}
			}
			return nil, false
		}
	}
	var key strings.Builder
	op.keyVals = make([]any, len(t.info.key))
	for i, c := range t.info.key {
		v, ok := get(c.name)
		if !ok {
			return fmt.Errorf("key column %q missing from the row", c.name)
		}
		if v == nil {
			return fmt.Errorf("key column %q is null", c.name)
		}
		b, err := t.db.bind(c, v)
		if err != nil {
			return fmt.Errorf("key column %q (%s): %v", c.name, c.sqlType, err)
		}
		op.keyVals[i] = b
		s := fmt.Sprint(b)
		key.WriteString(strconv.Itoa(len(s)))
		key.WriteByte(':')
		key.WriteString(s)
	}
	op.key = key.String()
	return nil
}

// columnName maps a row field to its target column (columns: renames).
func (t *Target) columnName(field string) string {
	if to, ok := t.set.rename[field]; ok {
		return to
	}
	return field
}
