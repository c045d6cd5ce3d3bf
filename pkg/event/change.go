// Package event defines Plume's change event: one committed row change read
// from a source database, and its two wire forms, the Debezium-compatible JSON
// envelope (the event data) and the CloudEvent around it.
//
// Guarantees:
//   - Every Change has an id (ID) that is unique within its Source and
//     deterministic: re-reading the same change after a restart yields the
//     same id, because it is derived from the source log position of the
//     change's transaction and the row's index within that transaction.
//   - The record key is the primary key rendered stably (Subject), so Kafka's
//     default partitioner keeps per-key order.
package event

import (
	"strconv"
	"time"
)

// Op is the kind of row change, with Debezium's single-letter codes.
type Op byte

const (
	OpCreate   Op = 'c' // insert
	OpUpdate   Op = 'u'
	OpDelete   Op = 'd'
	OpRead     Op = 'r' // snapshot read
	OpTruncate Op = 't'
)

// String returns the op's long name as used by the router and CloudEvents type:
// insert, update, delete, read or truncate.
func (o Op) String() string {
	switch o {
	case OpCreate:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpRead:
		return "read"
	case OpTruncate:
		return "truncate"
	}
	return "unknown"
}

// Code returns the Debezium op code ("c", "u", "d", "r", "t").
func (o Op) Code() string { return string(rune(o)) }

// ParseOp accepts either the code ("c") or the long name ("insert").
func ParseOp(s string) (Op, bool) {
	for _, o := range []Op{OpCreate, OpUpdate, OpDelete, OpRead, OpTruncate} {
		if s == o.Code() || s == o.String() {
			return o, true
		}
	}
	return 0, false
}

// Column describes one column of a captured table.
type Column struct {
	Name string
	// Type is the source's type name as the database reports it
	// (for example "numeric(10,2)", "bigint unsigned").
	Type string
}

// Table is one version of a captured table's shape. A schema change produces
// a new *Table; events keep pointing at the version they were read with. A
// Table is never modified once a change referencing it was emitted: the
// Encoder and capture cache what they render from it by pointer.
type Table struct {
	Connector string // "postgresql" or "mysql", as in Debezium's source.connector
	Database  string // the database (PostgreSQL) or schema/database (MySQL)
	Schema    string // PostgreSQL schema; empty for MySQL
	Name      string
	Columns   []Column
	// Key holds the indices into Columns of the key columns, in key order.
	// It is the primary key, a configured override, or every column for a
	// table without either (see docs/events.md).
	Key []int
}

// QualifiedName returns "schema.table" for PostgreSQL and "database.table" for MySQL.
func (t *Table) QualifiedName() string {
	if t.Schema != "" {
		return t.Schema + "." + t.Name
	}
	return t.Database + "." + t.Name
}

// ColumnIndex returns the index of the named column, or -1.
func (t *Table) ColumnIndex(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// Change is one committed row change (or a snapshot read, or a truncate).
//
// Before and After are aligned with Table.Columns; either may be nil when the
// operation has no such image. Values are limited to the kinds listed at Value.
type Change struct {
	Op     Op
	Table  *Table
	Before []Value
	After  []Value

	// Commit is the source transaction's commit time (microsecond precision
	// where the source has it). For snapshot reads it is the snapshot's start.
	Commit time.Time

	// TxID is the source transaction id (PostgreSQL xid, MySQL GTID or
	// binlog file:pos of the BEGIN). Empty for snapshot reads.
	TxID string
	// Pos is the source position of the change's transaction, rendered by the
	// connector: "lsn:0/16B3748" (PostgreSQL commit LSN),
	// "gtid:0-1-42" or "binlog:mysql-bin.000003:4567" (MySQL), or
	// "snapshot:<snapshot id>" for snapshot reads.
	Pos string
	// Index is the row's 0-based position within its source transaction
	// (or within its snapshot chunk). Together with Pos it makes the id.
	Index int64
	// TableIndex is the row's 1-based position among the transaction's rows
	// of the same table (Debezium's data_collection_order).
	TableIndex int64
	// Snapshot marks snapshot reads.
	Snapshot bool
	// SourceFields are connector-specific fields of the envelope's source
	// block (for example lsn, file, pos, gtid, server_id), in order.
	SourceFields []Field
	// TraceParent optionally carries a W3C traceparent.
	TraceParent string
}

// Field is a named value in an ordered list.
type Field struct {
	Name  string
	Value Value
}

// ID returns the CloudEvents id: the transaction position and the row index,
// "<Pos>/<Index>". For snapshot reads the id is the snapshot id, the table and
// the key, so it is stable for that snapshot whichever chunk or worker read it.
func (c *Change) ID() string {
	if c.Snapshot {
		return c.Pos + "/" + c.Table.QualifiedName() + "/" + c.Subject()
	}
	return c.Pos + "/" + strconv.FormatInt(c.Index, 10)
}

// appendID appends ID() to dst; subject is c's subject, already rendered.
func (c *Change) appendID(dst, subject []byte) []byte {
	dst = append(dst, c.Pos...)
	dst = append(dst, '/')
	if c.Snapshot {
		if c.Table.Schema != "" {
			dst = append(dst, c.Table.Schema...)
		} else {
			dst = append(dst, c.Table.Database...)
		}
		dst = append(dst, '.')
		dst = append(dst, c.Table.Name...)
		dst = append(dst, '/')
		return append(dst, subject...)
	}
	return strconv.AppendInt(dst, c.Index, 10)
}

// KeyImage returns the row image that identifies the row: After, or Before
// for deletes.
func (c *Change) KeyImage() []Value {
	if c.After != nil {
		return c.After
	}
	return c.Before
}

// Subject renders the primary key stably: "id=42", or "a=1,b=x" for a
// composite key, with values in their JSON text form without quotes.
// Commas, equals signs and backslashes inside values are escaped with a
// backslash so the rendering is unambiguous. Truncates have no subject.
func (c *Change) Subject() string {
	b := c.AppendSubject(nil)
	if b == nil {
		return ""
	}
	return string(b)
}

// AppendSubject appends the subject (see Subject) to dst.
func (c *Change) AppendSubject(dst []byte) []byte {
	img := c.KeyImage()
	if img == nil || c.Table == nil || len(c.Table.Key) == 0 {
		return dst
	}
	for i, k := range c.Table.Key {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, c.Table.Columns[k].Name...)
		dst = append(dst, '=')
		dst = appendKeyValue(dst, img[k])
	}
	return dst
}

// appendKeyValue appends KeyText(v) with ',', '=' and '\' escaped.
func appendKeyValue(dst []byte, v Value) []byte {
	switch x := v.(type) {
	case int64:
		return strconv.AppendInt(dst, x, 10)
	case int32:
		return strconv.AppendInt(dst, int64(x), 10)
	case int:
		return strconv.AppendInt(dst, int64(x), 10)
	case uint64:
		return strconv.AppendUint(dst, x, 10)
	case string:
		return appendEscaped(dst, x)
	case Decimal:
		return appendEscaped(dst, string(x))
	}
	return appendEscaped(dst, KeyText(v))
}

func appendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ',', '=', '\\':
			dst = append(dst, '\\')
		}
		dst = append(dst, s[i])
	}
	return dst
}

// KeyChanged reports whether an update moved its row to another key: both
// images are present and their key columns render differently. Sources
// emit such an update as a delete of the old key followed by an insert of
// the new one (docs/events.md).
func KeyChanged(t *Table, before, after []Value) bool {
	if before == nil || after == nil || t == nil || len(t.Key) == 0 {
		return false
	}
	for _, k := range t.Key {
		if k >= len(before) || k >= len(after) {
			return false
		}
		if _, ok := before[k].(Unchanged); ok {
			return false
		}
		if _, ok := after[k].(Unchanged); ok {
			return false
		}
		if string(appendKeyValue(nil, before[k])) != string(appendKeyValue(nil, after[k])) {
			return true
		}
	}
	return false
}
