package sql

import (
	"context"
	"strconv"
	"strings"
)

// backend is one database dialect: its connection and its SQL.
// Implementations: pgBackend (postgres.go), myBackend (mysql.go).
type backend interface {
	// connect (re)opens the connection if there is none, and checks it.
	connect(ctx context.Context) error
	// reset drops a connection that may be broken; the next connect
	// opens a fresh one.
	reset()
	close() error
	begin(ctx context.Context) (txn, error)

	// loadTable reads the target table's columns and checks that a unique
	// index on exactly the key columns exists.
	loadTable(ctx context.Context, t tableName, key []string) (*tableInfo, error)
	// tableExists reports whether the table exists (without needing the
	// CREATE privilege that CREATE TABLE IF NOT EXISTS checks first).
	tableExists(ctx context.Context, t tableName) (bool, error)
	// offsetsDDL creates the offsets table if missing.
	offsetsDDL(t tableName) string
	// offsetsUpsert writes n offset rows (pipeline, target, topic,
	// partition, next_offset), never moving an offset backwards.
	offsetsUpsert(t tableName, n int) string

	quote(ident string) string
	// param renders the placeholder of the n-th (1-based) argument, bound
	// to column c (nil for a plain text or integer argument).
	param(n int, c *column) string
	// insertInto is "INSERT INTO <table> (<cols>)" plus any clause needed
	// before VALUES.
	insertInto(t *tableInfo, cols []*column) string
	// upsertTail is the conflict clause after VALUES.
	upsertTail(t *tableInfo, cols []*column) string
	// bind converts a row value for column c into a driver argument.
	bind(c *column, v any) (any, error)
	// classify sorts a database error.
	classify(err error) errClass
	// maxParams is the most placeholders one statement may hold.
	maxParams() int
}

// txn is an open transaction.
type txn interface {
	exec(ctx context.Context, sql string, args ...any) error
	// query runs sql and calls row for each result row with its Scan.
	query(ctx context.Context, sql string, args []any, row func(scan func(dest ...any) error) error) error
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

// kind is how values are converted for a column.
type kind int

const (
	kText        kind = iota // text, varchar, enum, uuid, date, time, ... (and unknown types)
	kNumber                  // integers, decimals, floats
	kBool                    // PostgreSQL boolean
	kTimestamp               // timestamp without time zone (PG), DATETIME and TIMESTAMP (MySQL)
	kTimestampTZ             // timestamp with time zone (PG)
	kJSON                    // json, jsonb; MySQL JSON; MariaDB LONGTEXT CHECK (json_valid(c))
	kBytes                   // bytea, binary, varbinary, blob
	kArray                   // PostgreSQL arrays
)

// column is one column of the target table.
type column struct {
	name    string
	sqlType string // as the database shows it, for messages: "numeric(10,2)"
	kind    kind
	// cast is the PostgreSQL type the text parameter is cast to, without
	// type modifier so that assignment to the column applies it with the
	// usual errors ("character varying", "numeric", "integer[]").
	cast string
	// generated columns cannot be written.
	generated bool
	// identityAlways needs OVERRIDING SYSTEM VALUE (PostgreSQL).
	identityAlways bool
}

// tableInfo describes the target table as found at Open.
type tableInfo struct {
	name     tableName // resolved: schema/database always set
	quoted   string    // the qualified, quoted name to use in SQL
	columns  map[string]*column
	key      []*column
	identity bool // some column is GENERATED ALWAYS AS IDENTITY
}

// stmt is one SQL statement with its arguments.
type stmt struct {
	sql  string
	args []any
}

// quoteWith doubles q inside ident and wraps it in q.
func quoteWith(q byte, ident string) string {
	s := string(q)
	return s + strings.ReplaceAll(ident, s, s+s) + s
}

func quoteTable(b backend, t tableName) string {
	if t.schema == "" {
		return b.quote(t.name)
	}
	return b.quote(t.schema) + "." + b.quote(t.name)
}

// sqlBuilder renders the multi-row statements of a plan.
type sqlBuilder struct {
	b     backend
	t     *tableInfo
	n     int // next placeholder number
	sb    strings.Builder
	args  []any
	bytes int // approximate size of the arguments
}

func newBuilder(b backend, t *tableInfo) *sqlBuilder { return &sqlBuilder{b: b, t: t} }

func (w *sqlBuilder) reset() {
	w.n = 0
	w.sb.Reset()
	w.args = nil
	w.bytes = 0
}

func (w *sqlBuilder) arg(c *column, v any) {
	w.n++
	w.sb.WriteString(w.b.param(w.n, c))
	w.args = append(w.args, v)
	switch x := v.(type) {
	case string:
		w.bytes += len(x)
	case []byte:
		w.bytes += 2 * len(x)
	default:
		w.bytes += 8
	}
}

func (w *sqlBuilder) done() stmt {
	s := stmt{sql: w.sb.String(), args: w.args}
	w.reset()
	return s
}

// maxStmtBytes bounds the argument bytes of one statement, well below
// MySQL's default max_allowed_packet (16 MiB on MariaDB 10.11, 64 MiB on
// MySQL 8).
const maxStmtBytes = 4 << 20

// rowsPerStmt is how many rows of width cols fit one statement.
func rowsPerStmt(b backend, batchSize, cols int) int {
	n := batchSize
	if cols > 0 && n*cols > b.maxParams() {
		n = b.maxParams() / cols
	}
	if n < 1 {
		n = 1
	}
	return n
}

// upserts renders INSERT ... VALUES (...), (...) <conflict clause> for
// rows that all have the columns cols, as few statements as the limits
// allow.
func (w *sqlBuilder) upserts(cols []*column, rows [][]any, batchSize int) []stmt {
	var out []stmt
	per := rowsPerStmt(w.b, batchSize, len(cols))
	head := w.b.insertInto(w.t, cols) + " VALUES "
	tail := w.b.upsertTail(w.t, cols)
	n := 0
	for _, row := range rows {
		if n == 0 {
			w.sb.WriteString(head)
		} else {
			w.sb.WriteString(", ")
		}
		w.sb.WriteByte('(')
		for i, c := range cols {
			if i > 0 {
				w.sb.WriteString(", ")
			}
			w.arg(c, row[i])
		}
		w.sb.WriteByte(')')
		n++
		if n >= per || w.bytes >= maxStmtBytes {
			w.sb.WriteString(tail)
			out = append(out, w.done())
			n = 0
		}
	}
	if n > 0 {
		w.sb.WriteString(tail)
		out = append(out, w.done())
	}
	return out
}

// keyed renders "<head> WHERE (k1, k2) IN ((...), (...))" for key tuples.
// head is "DELETE FROM t" or "UPDATE t SET c = TRUE".
func (w *sqlBuilder) keyed(head string, keys [][]any, batchSize int) []stmt {
	var out []stmt
	key := w.t.key
	per := rowsPerStmt(w.b, batchSize, len(key))
	var lhs string
	if len(key) == 1 {
		lhs = w.b.quote(key[0].name)
	} else {
		names := make([]string, len(key))
		for i, c := range key {
			names[i] = w.b.quote(c.name)
		}
		lhs = "(" + strings.Join(names, ", ") + ")"
	}
	n := 0
	for _, k := range keys {
		if n == 0 {
			w.sb.WriteString(head + " WHERE " + lhs + " IN (")
		} else {
			w.sb.WriteString(", ")
		}
		if len(key) > 1 {
			w.sb.WriteByte('(')
		}
		for i, c := range key {
			if i > 0 {
				w.sb.WriteString(", ")
			}
			w.arg(c, k[i])
		}
		if len(key) > 1 {
			w.sb.WriteByte(')')
		}
		n++
		if n >= per || w.bytes >= maxStmtBytes {
			w.sb.WriteByte(')')
			out = append(out, w.done())
			n = 0
		}
	}
	if n > 0 {
		w.sb.WriteByte(')')
		out = append(out, w.done())
	}
	return out
}

// columnList renders "(a, b, c)".
func columnList(b backend, cols []*column) string {
	var sb strings.Builder
	sb.WriteByte('(')
	for i, c := range cols {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(b.quote(c.name))
	}
	sb.WriteByte(')')
	return sb.String()
}

// placeholders renders "$1, $2, ..." or "?, ?, ..." for plain arguments
// starting at number from.
func placeholders(b backend, from, n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = b.param(from+i, nil)
	}
	return strings.Join(parts, ", ")
}

func itoa(n int) string { return strconv.Itoa(n) }
