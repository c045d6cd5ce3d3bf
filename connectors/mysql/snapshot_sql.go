package mysql

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/plumecdc/plume/pkg/event"
)

func keyParam(info *tableInfo, col int) string {
	if info.cols[col].kind == kDecimal {
		return "CAST(? AS " + strings.ToUpper(info.cols[col].name) + ")"
	}
	return "?"
}

// afterCond renders "key > vals" (row-wise, NULLs sorting first, as ORDER BY
// does) with its arguments.
func afterCond(info *tableInfo, vals []any) (string, []any) {
	var ors []string
	var args []any
	for k := range info.keyCols {
		var ands []string
		for j := 0; j < k; j++ {
			col := quoteIdent(info.table.Columns[info.keyCols[j]].Name)
			if vals[j] == nil {
				ands = append(ands, col+" IS NULL")
			} else {
				ands = append(ands, col+" = "+keyParam(info, info.keyCols[j]))
				args = append(args, vals[j])
			}
		}
		col := quoteIdent(info.table.Columns[info.keyCols[k]].Name)
		if vals[k] == nil {
			ands = append(ands, col+" IS NOT NULL")
		} else {
			ands = append(ands, col+" > "+keyParam(info, info.keyCols[k]))
			args = append(args, vals[k])
		}
		ors = append(ors, "("+strings.Join(ands, " AND ")+")")
	}
	return "(" + strings.Join(ors, " OR ") + ")", args
}

// upToCond renders "key <= vals".
func upToCond(info *tableInfo, vals []any) (string, []any) {
	var ors []string
	var args []any
	n := len(info.keyCols)
	for k := 0; k <= n; k++ {
		var ands []string
		for j := 0; j < k && j < n; j++ {
			col := quoteIdent(info.table.Columns[info.keyCols[j]].Name)
			if vals[j] == nil {
				ands = append(ands, col+" IS NULL")
			} else {
				ands = append(ands, col+" = "+keyParam(info, info.keyCols[j]))
				args = append(args, vals[j])
			}
		}
		if k < n {
			if vals[k] == nil {
				continue // nothing sorts below NULL
			}
			col := quoteIdent(info.table.Columns[info.keyCols[k]].Name)
			ands = append(ands, "("+col+" IS NULL OR "+col+" < "+keyParam(info, info.keyCols[k])+")")
			args = append(args, vals[k])
		}
		ors = append(ors, "("+strings.Join(ands, " AND ")+")")
	}
	return "(" + strings.Join(ors, " OR ") + ")", args
}

func keyList(info *tableInfo) string {
	cols := make([]string, len(info.keyCols))
	for i, k := range info.keyCols {
		cols[i] = quoteIdent(info.table.Columns[k].Name)
	}
	return strings.Join(cols, ", ")
}

// boundary finds the inclusive upper bound of the chunk starting after lo,
// or nil when fewer than a chunk's rows remain.
func (r *snapshotRun) boundary(c *conn, info *tableInfo, lo []any) ([]any, error) {
	if len(info.keyCols) == 0 {
		return nil, nil // nothing to order by: one chunk
	}
	q := "SELECT " + keyList(info) + " FROM " + quoteTable(info.table.QualifiedName())
	var args []any
	if lo != nil {
		cond, a := afterCond(info, lo)
		q += " WHERE " + cond
		args = a
	}
	q += " ORDER BY " + keyList(info) + " LIMIT 1 OFFSET " + strconv.Itoa(r.s.cfg.SnapshotChunkSize-1)
	var out []any
	err := c.stream(r.ctx, q, args, func(row []gomysql.FieldValue) error {
		out = make([]any, len(row))
		for i := range row {
			out[i] = rawKeyValue(&row[i])
		}
		return nil
	})
	return out, err
}

// rawKeyValue keeps a key value in the form the server sent it, to pass it
// back as a statement argument.
func rawKeyValue(fv *gomysql.FieldValue) any {
	switch fv.Type {
	case gomysql.FieldValueTypeNull:
		return nil
	case gomysql.FieldValueTypeSigned:
		return fv.AsInt64()
	case gomysql.FieldValueTypeUnsigned:
		return fv.AsUint64()
	case gomysql.FieldValueTypeFloat:
		return fv.AsFloat64()
	}
	return append([]byte(nil), fv.AsString()...)
}

// chunkQuery renders the SELECT of a chunk's rows, in key order.
func chunkQuery(info *tableInfo, ch *chunk) (string, []any) {
	cols := make([]string, len(info.table.Columns))
	for i, col := range info.table.Columns {
		cols[i] = quoteIdent(col.Name)
		if info.cols[i].rawText {
			cols[i] = "CAST(" + cols[i] + " AS BINARY)"
		}
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + quoteTable(info.table.QualifiedName())
	var conds []string
	var args []any
	if ch.lo != nil {
		cond, a := afterCond(info, ch.lo)
		conds = append(conds, cond)
		args = append(args, a...)
	}
	if ch.hi != nil {
		cond, a := upToCond(info, ch.hi)
		conds = append(conds, cond)
		args = append(args, a...)
	}
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	if len(info.keyCols) > 0 {
		q += " ORDER BY " + keyList(info)
	}
	return q, args
}

// selectChunk reads the chunk's rows in the connection's transaction and
// hands them to the chunk in segments (snapshot_rows.go).
func (r *snapshotRun) selectChunk(c *conn, ch *chunk) error {
	q, args := chunkQuery(ch.info, ch)
	var seg *segment
	var row []byte // one encoded row, reused
	err := c.stream(r.ctx, q, args, func(fvs []gomysql.FieldValue) error {
		row = appendRow(row[:0], fvs)
		if seg != nil && len(seg.buf)+len(row) > cap(seg.buf) {
			r.rows.publish(ch, seg)
			ch.wrote, seg = true, nil
		}
		if seg == nil {
			var err error
			if seg, err = r.rows.get(ch, len(row)); err != nil {
				return err
			}
		}
		seg.buf = append(seg.buf, row...)
		seg.rows++
		return nil
	})
	if seg != nil && seg.rows > 0 {
		r.rows.publish(ch, seg)
		ch.wrote = true
	} else if seg != nil {
		r.rows.release(ch, seg)
	}
	if errors.Is(err, errSnapshotStopped) && r.ctx.Err() != nil {
		err = r.ctx.Err()
	}
	return err
}

// rowValues converts a row read by chunkQuery into event values.
func (info *tableInfo) rowValues(fvs []gomysql.FieldValue) ([]event.Value, error) {
	vals := make([]event.Value, len(fvs))
	for i := range fvs {
		v, err := info.cols[i].fromField(&fvs[i])
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", info.table.Columns[i].Name, err)
		}
		vals[i] = v
	}
	return vals, nil
}

// rowKey returns the key values of a row read by chunkQuery in the form
// boundary returns them (statement arguments for the next chunk's bounds).
func (info *tableInfo) rowKey(fvs []gomysql.FieldValue) []any {
	out := make([]any, len(info.keyCols))
	for i, k := range info.keyCols {
		out[i] = rawKeyValue(&fvs[k])
	}
	return out
}

// splittable reports whether a chunk of the table can be emitted in parts,
// each resuming after the key of its last row: the key is the primary key,
// so no row after that one has an equal key (a key override may repeat
// values, and "key > last" would skip the repeats), and a row's key reads
// back exactly as boundary reads it (not so for a key column selected as
// CAST(... AS BINARY)).
func (info *tableInfo) splittable() bool {
	if !info.primary || len(info.keyCols) == 0 {
		return false
	}
	for _, k := range info.keyCols {
		if info.cols[k].rawText {
			return false
		}
	}
	return true
}

// stream runs a prepared statement and calls fn for each row (binary
// protocol: exact floats, typed integers).
func (c *conn) stream(ctx context.Context, q string, args []any, fn func([]gomysql.FieldValue) error) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	stmt, err := c.Prepare(q)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	defer stmt.Close()
	var res gomysql.Result
	err = stmt.ExecuteSelectStreaming(&res, fn, nil, args...)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
