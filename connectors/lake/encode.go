package lake

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"sort"
	"strconv"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/plumecdc/plume/pkg/target"
)

// Metadata columns, first in every file, in this order.
var metaColumns = []struct {
	name string
	typ  colType
}{
	{"_op", colType{kind: "string"}},               // c, u, d, r (snapshot), t (truncate)
	{"_commit_time", colType{kind: "timestamptz"}}, // source commit time (snapshot: its start)
	{"_position", colType{kind: "string"}},         // source position of the transaction
	{"_txid", colType{kind: "string"}},             // source transaction id ("" for snapshot rows)
	{"_event_id", colType{kind: "string"}},         // CloudEvents id, unique per change
	{"_topic", colType{kind: "string"}},
	{"_partition", colType{kind: "int32"}},
	{"_offset", colType{kind: "int64"}},
}

// tableState is a table's columns: the union of every column seen so far,
// in order of first appearance, each with a type fixed at first sight.
type tableState struct {
	names []string
	types map[string]colType
	// source catalog cache
	srcTypes  map[string]colType
	srcOrder  map[string]int
	srcLoaded time.Time
}

func newTableState() *tableState { return &tableState{types: map[string]colType{}} }

func (ts *tableState) add(name string, t colType) {
	if _, ok := ts.types[name]; ok {
		return
	}
	ts.names = append(ts.names, name)
	ts.types[name] = t
}

func (ts *tableState) columns() []column {
	out := make([]column, len(ts.names))
	for i, n := range ts.names {
		out[i] = column{Name: n, Type: ts.types[n].String()}
	}
	return out
}

func (ts *tableState) arrowSchema() *arrow.Schema {
	fields := make([]arrow.Field, 0, len(metaColumns)+len(ts.names))
	for _, mc := range metaColumns {
		fields = append(fields, arrow.Field{Name: mc.name, Type: mc.typ.arrowType(), Nullable: true})
	}
	for _, n := range ts.names {
		fields = append(fields, arrow.Field{Name: n, Type: ts.types[n].arrowType(), Nullable: true})
	}
	return arrow.NewSchema(fields, nil)
}

// tableName is the table's qualified name: schema.table (PostgreSQL) or
// database.table (MySQL).
func tableName(m *target.Message) string {
	if m.Schema != "" {
		return m.Schema + "." + m.Table
	}
	return m.Database + "." + m.Table
}

// dataFile is one encoded Parquet file of a commit.
type dataFile struct {
	ref  fileRef
	data []byte
	cols []string // data columns in the file (for Iceberg schema evolution)
}

// groupKey selects the file of a message.
type groupKey struct {
	dir       string
	table     string
	topic     string
	partition int32
}

// encode converts the kept messages into Parquet files. A message whose
// values do not fit their column types is returned in failed (by index into
// b.Messages) and nothing is encoded.
func (t *Target) encode(ctx context.Context, b *target.Batch, keep []int) ([]*dataFile, map[int]error, error) {
	// 1. Columns: every field of every row gets a type, once per table.
	if err := t.resolveColumns(ctx, b, keep); err != nil {
		return nil, nil, err
	}
	// 2. Group rows by file.
	groups := map[groupKey][]int{}
	var order []groupKey
	for _, i := range keep {
		m := &b.Messages[i]
		k := groupKey{dir: t.partitionDir(m), table: tableName(m), topic: m.Topic, partition: m.Partition}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	sort.Slice(order, func(a, c int) bool {
		x, y := order[a], order[c]
		if x.dir != y.dir {
			return x.dir < y.dir
		}
		if x.topic != y.topic {
			return x.topic < y.topic
		}
		return x.partition < y.partition
	})
	// 3. Encode, splitting groups into files of at most maxFileRows.
	failed := map[int]error{}
	var files []*dataFile
	for _, k := range order {
		idx := groups[k]
		for len(idx) > 0 {
			n := min(len(idx), t.set.maxFileRows)
			f, bad, err := t.encodeFile(k, b, idx[:n])
			if err != nil {
				return nil, nil, err
			}
			for i, e := range bad {
				failed[i] = e
			}
			if f != nil {
				files = append(files, f)
			}
			idx = idx[n:]
		}
	}
	if len(failed) > 0 {
		return nil, failed, nil
	}
	return files, nil, nil
}

// partitionDir is the Hive-style directory of a message's file.
func (t *Target) partitionDir(m *target.Message) string {
	var parts []string
	ct := m.Time.UTC()
	for _, p := range t.set.partitions {
		switch p {
		case PartitionTable:
			parts = append(parts, "table="+escapePart(tableName(m)))
		case PartitionCommitDate:
			parts = append(parts, "commit_date="+ct.Format("2006-01-02"))
		case PartitionCommitHour:
			parts = append(parts, "commit_hour="+ct.Format("15"))
		}
	}
	return path.Join(parts...)
}

// escapePart keeps a path segment to safe characters, as Hive does (%XX).
func escapePart(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '/' || c == '\\' || c == '=' || c == '%' || c == ':' || c < 0x20 || c == 0x7f || c == '"' || c == '#' || c == '?' || c == '*' {
			out = append(out, fmt.Sprintf("%%%02X", c)...)
			continue
		}
		out = append(out, c)
	}
	return string(out)
}

// resolveColumns gives every row field of the batch a column type. Types
// come from the source catalog (reloaded at most every 10 s when a field
// is unknown: a column added by a schema change), else from the value.
func (t *Target) resolveColumns(ctx context.Context, b *target.Batch, keep []int) error {
	pendingNull := map[string]map[string]bool{}
	for _, i := range keep {
		m := &b.Messages[i]
		name := tableName(m)
		ts := t.tables[name]
		if ts == nil {
			ts = newTableState()
			t.tables[name] = ts
		}
		var unknown []string
		for f := range m.Row {
			if _, ok := ts.types[f]; !ok {
				unknown = append(unknown, f)
			}
		}
		if len(unknown) == 0 {
			continue
		}
		sort.Strings(unknown)
		if !t.set.inferTypes && t.catalog != nil && time.Since(ts.srcLoaded) > 10*time.Second {
			for _, f := range unknown {
				if _, ok := ts.srcTypes[f]; !ok {
					schema := m.Schema
					if schema == "" {
						schema = m.Database
					}
					names, types, err := t.catalog.columns(ctx, schema, m.Table)
					if err != nil {
						return err
					}
					ts.srcTypes, ts.srcOrder, ts.srcLoaded = types, map[string]int{}, time.Now()
					for j, n := range names {
						ts.srcOrder[n] = j
					}
					break
				}
			}
		}
		// New columns in source order, then the others by name.
		sort.SliceStable(unknown, func(a, c int) bool {
			oa, okA := ts.srcOrder[unknown[a]]
			oc, okC := ts.srcOrder[unknown[c]]
			switch {
			case okA && okC:
				return oa < oc
			case okA != okC:
				return okA
			}
			return false
		})
		for _, f := range unknown {
			if ct, ok := ts.srcTypes[f]; ok {
				ts.add(f, ct)
			} else if ct, ok := inferType(m.Row[f]); ok {
				ts.add(f, ct)
				delete(pendingNull[name], f)
			} else {
				if pendingNull[name] == nil {
					pendingNull[name] = map[string]bool{}
				}
				pendingNull[name][f] = true
			}
		}
	}
	// A computed field that was null in every row so far: a string.
	for name, fs := range pendingNull {
		for f := range fs {
			if _, ok := t.tables[name].types[f]; !ok {
				t.tables[name].add(f, colType{kind: "string"})
			}
		}
	}
	return nil
}

// encodeFile builds one Parquet file from the messages idx (one group).
func (t *Target) encodeFile(k groupKey, b *target.Batch, idx []int) (*dataFile, map[int]error, error) {
	ts := t.tables[k.table]
	sc := ts.arrowSchema()
	rb := array.NewRecordBuilder(memory.DefaultAllocator, sc)
	defer rb.Release()
	bad := map[int]error{}
	first, last := int64(-1), int64(-1)
	rows := 0
	for _, i := range idx {
		m := &b.Messages[i]
		if err := t.appendRow(rb, ts, m); err != nil {
			bad[i] = err
			// Drop the partial row: rebuild is costly, so mark the
			// batch as failed and stop converting this file's values.
			continue
		}
		rows++
		if first < 0 || m.Offset < first {
			first = m.Offset
		}
		if m.Offset > last {
			last = m.Offset
		}
	}
	if len(bad) > 0 {
		return nil, bad, nil
	}
	rec := rb.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	props := parquet.NewWriterProperties(
		parquet.WithCompression(codec(t.set.compression)),
		parquet.WithMaxRowGroupLength(DefaultRowGroupRows),
		parquet.WithStats(true),
		parquet.WithCreatedBy("plume lake target"),
	)
	w, err := pqarrow.NewFileWriter(sc, &buf, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, nil, err
	}
	if err := w.Write(rec); err != nil {
		return nil, nil, fmt.Errorf("encode parquet: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, nil, fmt.Errorf("encode parquet: %w", err)
	}
	name := k.topic + "-" + strconv.Itoa(int(k.partition)) + "-" + strconv.FormatInt(first, 10) + "-" + strconv.FormatInt(last, 10) + ".parquet"
	return &dataFile{
		ref: fileRef{Path: path.Join(k.dir, name), Table: k.table, Rows: int64(rows), Bytes: int64(buf.Len()),
			Topic: k.topic, Partition: k.partition, FirstOffset: first, LastOffset: last},
		data: buf.Bytes(),
		cols: append([]string(nil), ts.names...),
	}, nil, nil
}

// appendRow appends one message as a row. On a conversion error the
// builders are left with a partial row; the caller discards the file.
func (t *Target) appendRow(rb *array.RecordBuilder, ts *tableState, m *target.Message) error {
	rb.Field(0).(*array.StringBuilder).Append(m.Op.Code())
	if m.Time.IsZero() {
		rb.Field(1).AppendNull()
	} else {
		rb.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(m.Time.UnixMicro()))
	}
	rb.Field(2).(*array.StringBuilder).Append(m.Position)
	txid := m.TxID
	if txid == "" {
		txid = header(m, "ce_txid") // a message not built by the router
	}
	rb.Field(3).(*array.StringBuilder).Append(txid)
	rb.Field(4).(*array.StringBuilder).Append(m.ID)
	rb.Field(5).(*array.StringBuilder).Append(m.Topic)
	rb.Field(6).(*array.Int32Builder).Append(m.Partition)
	rb.Field(7).(*array.Int64Builder).Append(m.Offset)
	for j, n := range ts.names {
		if err := appendValue(rb.Field(len(metaColumns)+j), ts.types[n], m.Row[n]); err != nil {
			return fmt.Errorf("column %s (%s): %v", n, ts.types[n], err)
		}
	}
	return nil
}

func header(m *target.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func codec(name string) compress.Compression {
	switch name {
	case "snappy":
		return compress.Codecs.Snappy
	case "gzip":
		return compress.Codecs.Gzip
	case "none", "uncompressed":
		return compress.Codecs.Uncompressed
	}
	return compress.Codecs.Zstd
}
