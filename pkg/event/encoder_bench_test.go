package event

import (
	"context"
	"strings"
	"testing"
	"time"
)

// drainChange is a change shaped like the benchmark's backlog rows
// (bench/: id bigint, payload text of 100 bytes, MariaDB binlog fields).
func drainChange(payload int) *Change {
	t := &Table{Connector: "mysql", Database: "bench", Name: "drain100",
		Columns: []Column{{Name: "id"}, {Name: "payload"}}, Key: []int{0}}
	return &Change{Op: OpCreate, Table: t, After: []Value{int64(123456), strings.Repeat("x", payload)},
		Commit: time.Date(2026, 11, 24, 15, 0, 0, 123456000, time.UTC), TxID: "0-1-4242", Pos: "gtid:0-1-4242", Index: 7, TableIndex: 8,
		SourceFields: []Field{{"file", "mysql-bin.000003"}, {"pos", int64(4567)}, {"gtid", "0-1-4242"}, {"server_id", int64(1)}, {"row", int64(0)}}}
}

// BenchmarkRecordDrainRow encodes backlog-shaped rows through a recycling
// encoder, as capture does: one transaction of 100 rows after another.
func BenchmarkRecordDrainRow(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{{"100B", 100}, {"1KB", 1000}} {
		b.Run(bc.name, func(b *testing.B) {
			enc := Encoder{Pipeline: "bench-x", Context: context.Background()}
			c := drainChange(bc.size)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				c.Index = int64(i % 100)
				c.After[0] = int64(i)
				r := enc.Record("plume.bench.drain100", c)
				enc.Recycle(r)
			}
		})
	}
}
