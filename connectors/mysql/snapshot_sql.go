package mysql

import (
	"context"
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

// selectChunk reads the chunk's rows in the connection's transaction.
func (r *snapshotRun) selectChunk(c *conn, ch *chunk) ([][]event.Value, error) {
	info := ch.info
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
	rows := make([][]event.Value, 0, min(r.s.cfg.SnapshotChunkSize, 1024))
	err := c.stream(r.ctx, q, args, func(row []gomysql.FieldValue) error {
		vals := make([]event.Value, len(row))
		for i := range row {
			v, err := info.cols[i].fromField(&row[i])
			if err != nil {
				return fmt.Errorf("column %s: %w", info.table.Columns[i].Name, err)
			}
			vals[i] = v
		}
		rows = append(rows, vals)
		return nil
	})
	return rows, err
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
