package event

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/twmb/franz-go/pkg/kgo"
)

var products = &Table{
	Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
	Columns: []Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}, {Name: "price", Type: "numeric(10,2)"}, {Name: "blob", Type: "bytea"}},
	Key:     []int{0},
}

var orders = &Table{
	Connector: "mysql", Database: "shop", Name: "order_lines",
	Columns: []Column{{Name: "order_id", Type: "int"}, {Name: "line", Type: "varchar(10)"}, {Name: "qty", Type: "bigint unsigned"}},
	Key:     []int{0, 1},
}

var commit = time.Date(2026, 11, 24, 10, 30, 0, 123456000, time.UTC)

// corpus covers every op, both connectors, composite keys with characters
// that need escaping, and every Value kind.
func corpus() []*Change {
	return []*Change{
		{Op: OpCreate, Table: products, After: []Value{int64(42), "SKU-1", Decimal("12.50"), []byte{0, 1, 2}}, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748", Index: 0, TableIndex: 1},
		{Op: OpUpdate, Table: products, Before: []Value{int64(42), "SKU-1", Decimal("12.50"), Unchanged{}}, After: []Value{int64(42), "SKU-1", Decimal("13.00"), Unchanged{}}, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748", Index: 1, TableIndex: 2},
		{Op: OpDelete, Table: products, Before: []Value{int64(42), "SKU-1", Decimal("13.00"), nil}, Commit: commit, TxID: "772", Pos: "lsn:0/16B3800", Index: 0, TableIndex: 1},
		{Op: OpRead, Table: products, After: []Value{int64(7), "émoji 🎉 \"q\"\n", Decimal("NaN"), nil}, Commit: commit, Pos: "snapshot:0/16B0000", Snapshot: true},
		{Op: OpTruncate, Table: products, Commit: commit, TxID: "773", Pos: "lsn:0/16B3900", Index: 0, TableIndex: 1},
		{Op: OpCreate, Table: orders, After: []Value{int64(5), "a,b=c\\d", uint64(math.MaxUint64)}, Commit: commit, TxID: "0-1-42", Pos: "gtid:0-1-42", Index: 3, TableIndex: 4,
			SourceFields: []Field{{"file", "binlog.000003"}, {"pos", int64(4567)}, {"server_id", int64(1)}}, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		// Every header Record writes (14: a schema, a txid and a trace
		// parent), as many as a pooled record's array holds.
		{Op: OpUpdate, Table: products, Before: []Value{int64(43), "SKU-2", Decimal("1.00"), nil}, After: []Value{int64(43), "SKU-2", Decimal("2.00"), nil}, Commit: commit, TxID: "774", Pos: "lsn:0/16B3A00", Index: 0, TableIndex: 1,
			TraceParent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"},
	}
}

func TestIDsAreDeterministicAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range corpus() {
		id := c.ID()
		if id != c.ID() {
			t.Fatalf("id not deterministic: %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	if got := corpus()[0].ID(); got != "lsn:0/16B3748/0" {
		t.Errorf("id = %q", got)
	}
	if got := corpus()[3].ID(); got != "snapshot:0/16B0000/public.products/id=7" {
		t.Errorf("snapshot id = %q", got)
	}
}

func TestSubjectEscapesCompositeKeys(t *testing.T) {
	if got, want := corpus()[5].Subject(), `order_id=5,line=a\,b\=c\\d`; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}
	if got := corpus()[2].Subject(); got != "id=42" {
		t.Errorf("delete subject = %q (must come from the before image)", got)
	}
	if got := corpus()[4].Subject(); got != "" {
		t.Errorf("truncate subject = %q", got)
	}
}

func TestEnvelopeIsDebeziumShaped(t *testing.T) {
	for _, c := range corpus() {
		data := AppendEnvelope(nil, "shop-sync", c)
		if !json.Valid(data) {
			t.Fatalf("invalid JSON: %s", data)
		}
		var env struct {
			Before, After map[string]any
			Source        map[string]any
			Op            string
			TsMs          int64 `json:"ts_ms"`
			Transaction   *struct {
				ID         string `json:"id"`
				TotalOrder int64  `json:"total_order"`
				DataOrder  int64  `json:"data_collection_order"`
			}
			Unchanged []string
		}
		if err := json.Unmarshal(data, &env); err != nil {
			t.Fatal(err)
		}
		if env.Op != c.Op.Code() || env.TsMs != commit.UnixMilli() {
			t.Errorf("op/ts_ms: %s", data)
		}
		if env.Source["table"] != c.Table.Name || env.Source["db"] != c.Table.Database || env.Source["name"] != "shop-sync" {
			t.Errorf("source block: %s", data)
		}
		if (c.After == nil) != (env.After == nil) || (c.Before == nil) != (env.Before == nil) {
			t.Errorf("images: %s", data)
		}
		if !c.Snapshot && c.TxID != "" && (env.Transaction == nil || env.Transaction.TotalOrder != c.Index+1) {
			t.Errorf("transaction block: %s", data)
		}
	}
	upd := string(AppendEnvelope(nil, "p", corpus()[1]))
	if !strings.Contains(upd, `"unchanged":["blob"]`) || strings.Contains(upd, `"blob":`) {
		t.Errorf("unchanged TOAST column must be listed and not invented: %s", upd)
	}
	ins := string(AppendEnvelope(nil, "p", corpus()[5]))
	if !strings.Contains(ins, `"qty":18446744073709551615`) {
		t.Errorf("uint64 not exact: %s", ins)
	}
}

func TestValueJSON(t *testing.T) {
	cases := []struct {
		v    Value
		want string
	}{
		{nil, "null"}, {true, "true"}, {int64(-5), "-5"}, {uint64(math.MaxUint64), "18446744073709551615"},
		{1.5, "1.5"}, {math.NaN(), `"NaN"`}, {math.Inf(1), `"Infinity"`}, {math.Inf(-1), `"-Infinity"`},
		{1e21, "1e+21"}, {"a\"b\\\u0001", `"a\"b\\\u0001"`}, {"\xff", `"\ufffd"`}, {[]byte("hi"), `"aGk="`},
		{Decimal("123456789012345678901234567890.123456789"), `"123456789012345678901234567890.123456789"`},
		{RawJSON(`{"a":1}`), `{"a":1}`}, {[]Value{int64(1), "x", nil}, `[1,"x",null]`},
		{map[string]Value{"b": int64(2), "a": "1"}, `{"a":"1","b":2}`},
	}
	for _, c := range cases {
		if got := string(AppendJSON(nil, c.v)); got != c.want {
			t.Errorf("AppendJSON(%#v) = %s, want %s", c.v, got, c.want)
		}
	}
}

// toSarama parses a kgo record with sdk-go's Kafka (sarama) protocol binding:
// an implementation Plume did not write.
func toSarama(t *testing.T, r *kgo.Record) *kafka_sarama.Message {
	t.Helper()
	cm := &sarama.ConsumerMessage{Topic: r.Topic, Key: r.Key, Value: r.Value}
	for _, h := range r.Headers {
		cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value})
	}
	return kafka_sarama.NewMessageFromConsumerMessage(cm)
}

func TestKafkaRecordsParseWithSDKBinding(t *testing.T) {
	for _, structured := range []bool{false, true} {
		enc := Encoder{Pipeline: "shop-sync", Structured: structured}
		for _, c := range corpus() {
			rec := enc.Record("plume.public.products", c)
			got, err := binding.ToEvent(context.Background(), toSarama(t, rec))
			if err != nil {
				t.Fatalf("structured=%v %s: sdk-go cannot read the record: %v", structured, c.ID(), err)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("structured=%v %s: invalid event: %v", structured, c.ID(), err)
			}
			want, err := CloudEvent("shop-sync", c)
			if err != nil {
				t.Fatalf("reference event: %v", err)
			}
			if got.ID() != want.ID() || got.Source() != want.Source() || got.Type() != want.Type() ||
				got.Subject() != want.Subject() || !got.Time().Equal(want.Time()) || got.DataContentType() != "application/json" {
				t.Errorf("structured=%v attributes differ:\n got %v\nwant %v", structured, got, want)
			}
			for name, v := range want.Extensions() {
				if gv, ok := got.Extensions()[name]; !ok || gv != v {
					t.Errorf("structured=%v extension %s = %v, want %v", structured, name, gv, v)
				}
			}
			// The sarama binding adds kafkatopic, kafkapartition and kafkaoffset
			// (in binary mode).
			n := 0
			for name := range got.Extensions() {
				if !strings.HasPrefix(name, "kafka") {
					n++
				}
			}
			if n != len(want.Extensions()) {
				t.Errorf("structured=%v extensions %v, want %v", structured, got.Extensions(), want.Extensions())
			}
			var a, b any
			if json.Unmarshal(got.Data(), &a) != nil || json.Unmarshal(want.Data(), &b) != nil {
				t.Fatalf("data is not JSON")
			}
			if string(mustJSON(a)) != string(mustJSON(b)) {
				t.Errorf("data differs:\n got %s\nwant %s", got.Data(), want.Data())
			}
			if c.Subject() != "" && string(rec.Key) != c.Subject() {
				t.Errorf("record key %q, want the partitionkey %q", rec.Key, c.Subject())
			}
			// Plume's own decoder must read both modes too.
			rx, err := Decode(rec)
			if err != nil || rx.ID != want.ID() || rx.Extensions[ExtPartitionKey] != c.Subject() && c.Subject() != "" {
				t.Errorf("Decode: %v %+v", err, rx)
			}
		}
	}
}

func TestExtensionNamesFollowTheSpec(t *testing.T) {
	for _, c := range corpus() {
		for _, x := range AttributesOf("p", c).Extensions {
			if len(x.Name) > 20 || strings.Trim(x.Name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
				t.Errorf("extension name %q is not lowercase alphanumeric <= 20", x.Name)
			}
		}
	}
}

func TestTombstoneDecodesAsNil(t *testing.T) {
	rx, err := Decode(Tombstone("t", []byte("id=1")))
	if rx != nil || err != nil {
		t.Fatalf("tombstone: %v %v", rx, err)
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func BenchmarkRecordBinary(b *testing.B) {
	enc := Encoder{Pipeline: "shop-sync"}
	c := corpus()[1]
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		enc.Record("plume.public.products", c)
	}
}

func TestTraceContextDeterministic(t *testing.T) {
	a := NewTraceContext("shop", "postgresql", "shop", "lsn:0/16B3748", 1)
	b := NewTraceContext("shop", "postgresql", "shop", "lsn:0/16B3748", 1)
	c := NewTraceContext("shop", "postgresql", "shop", "lsn:0/16B3800", 1)
	if a != b || a.TraceID == c.TraceID || a.SpanID == c.SpanID {
		t.Fatalf("trace contexts: %v %v %v", a, b, c)
	}
	s := a.String()
	if len(s) != 55 || s[:3] != "00-" || s[52:] != "-01" {
		t.Fatalf("traceparent %q", s)
	}
	p, ok := ParseTraceParent(s)
	if !ok || p != a {
		t.Fatalf("parse %q: %v %v", s, p, ok)
	}
	if _, ok := ParseTraceParent("00-00000000000000000000000000000000-b7ad6b7169203331-01"); ok {
		t.Fatal("an all-zero trace id parsed")
	}
	// Sampling is decided from the trace id: about the ratio, the same everywhere.
	sampled := 0
	for i := 0; i < 1000; i++ {
		if NewTraceContext("p", "mysql", "db", "gtid:0-1-"+strconv.Itoa(i), 0.25).Sampled {
			sampled++
		}
	}
	if sampled < 180 || sampled > 320 {
		t.Errorf("%d of 1000 sampled at ratio 0.25", sampled)
	}
	if NewTraceContext("p", "mysql", "db", "x", 0).Sampled {
		t.Error("sampled at ratio 0")
	}
}

// TestBinaryRecordMatchesAttributes: the hot-path binary encoder writes
// exactly the headers AttributesOf describes, in order, and records encoded
// one after another by the same Encoder share no bytes.
func TestBinaryRecordMatchesAttributes(t *testing.T) {
	t.Run("new", func(t *testing.T) { testBinaryRecords(t, false) })
	// Pooled records: each record is recycled as soon as it is checked,
	// so every later record reuses an earlier one's buffer and headers.
	t.Run("recycled", func(t *testing.T) { testBinaryRecords(t, true) })
}

func testBinaryRecords(t *testing.T, recycle bool) {
	enc := Encoder{Pipeline: "shop-sync"}
	if recycle {
		enc.Context = context.Background()
	}
	var recs []*kgo.Record
	var wants [][]string
	check := func(i int, r *kgo.Record) {
		t.Helper()
		if got := recordLines(r); strings.Join(got, "\n") != strings.Join(wants[i], "\n") {
			t.Errorf("record %d:\n got %q\nwant %q", i, got, wants[i])
		}
	}
	for round := 0; round < 3; round++ {
		for _, c := range corpus() {
			want := wantRecordLines("shop-sync", c)
			r := enc.Record("t", c)
			recs = append(recs, r)
			wants = append(wants, want)
			if recycle {
				if _, ok := r.Context.(*recordContext); !ok {
					t.Fatalf("a pooled record's context is %T", r.Context)
				}
				check(len(recs)-1, r)
				enc.Recycle(r)
			}
		}
	}
	if recycle {
		return
	}
	for i, r := range recs {
		check(i, r)
	}
}

// recordLines renders a binary-mode record's headers, key and value.
func recordLines(r *kgo.Record) []string {
	var got []string
	for _, h := range r.Headers {
		got = append(got, h.Key+"="+string(h.Value))
	}
	return append(got, "key="+string(r.Key), "value="+string(r.Value))
}

// wantRecordLines is recordLines of c's binary-mode record, built the slow
// way: from AttributesOf and the uncached AppendEnvelope.
func wantRecordLines(pipeline string, c *Change) []string {
	a := AttributesOf(pipeline, c)
	want := []string{"ce_specversion=1.0", "ce_id=" + a.ID, "ce_source=" + a.Source, "ce_type=" + a.Type}
	if a.Subject != "" {
		want = append(want, "ce_subject="+a.Subject)
	}
	want = append(want, "ce_time="+FormatTime(a.Time), "content-type=application/json")
	for _, x := range a.Extensions {
		want = append(want, "ce_"+x.Name+"="+x.Value.(string))
	}
	return append(want, "key="+a.Subject, "value="+string(AppendEnvelope(nil, pipeline, c)))
}

// TestEnvelopeCacheMatchesUncached: the encoder renders the parts of a
// record that repeat within a table and transaction once (tableCache).
// Over a long sequence in which each of the fields those parts depend on
// changes alone (commit instant, txid, position, snapshot flag, table,
// source field names), every record is byte for byte the uncached one.
func TestEnvelopeCacheMatchesUncached(t *testing.T) {
	tables := []*Table{
		{Connector: "mysql", Database: "shop", Name: "a", Columns: []Column{{Name: "id"}, {Name: `q"uo\te`}}, Key: []int{0}},
		{Connector: "postgresql", Database: "shop", Schema: "public", Name: "b", Columns: []Column{{Name: "id"}, {Name: "v"}}, Key: []int{0}},
		{Connector: "mysql", Database: "other", Name: "a", Columns: []Column{{Name: "id"}, {Name: "v"}}, Key: []int{0}},
	}
	base := time.Date(2026, 11, 24, 15, 0, 0, 123456000, time.UTC)
	berlin := time.FixedZone("CET", 3600)
	rng := rand.New(rand.NewPCG(1, 2))
	c := &Change{Op: OpCreate, Table: tables[0], Commit: base, TxID: "0-1-1", Pos: "gtid:0-1-1"}
	enc := Encoder{Pipeline: "p", Context: context.Background()}
	for i := 0; i < 5000; i++ {
		switch rng.IntN(10) {
		case 0:
			c.Table = tables[rng.IntN(len(tables))]
		case 1:
			c.Commit = c.Commit.Add(time.Duration(rng.IntN(3)) * time.Millisecond)
		case 2:
			c.Commit = c.Commit.In(berlin) // the same instant elsewhere
		case 3:
			c.TxID = fmt.Sprintf("0-1-%d", rng.IntN(4))
		case 4:
			c.Pos = fmt.Sprintf("gtid:0-1-%d", rng.IntN(4))
		case 5:
			c.Snapshot = !c.Snapshot
		case 6:
			names := [][]string{{"file", "pos"}, {"lsn"}, {"file", "po\"s", "row"}, nil}[rng.IntN(4)]
			c.SourceFields = nil
			for _, n := range names {
				c.SourceFields = append(c.SourceFields, Field{n, int64(rng.IntN(100))})
			}
		case 7:
			c.Op = []Op{OpCreate, OpUpdate, OpDelete}[rng.IntN(3)]
		}
		c.Index++
		c.TableIndex = c.Index / 2
		img := []Value{int64(i), fmt.Sprint("row ", i)}
		c.Before, c.After = nil, nil
		switch c.Op {
		case OpCreate:
			c.After = img
		case OpUpdate:
			c.Before, c.After = img, img
		case OpDelete:
			c.Before = img
		}
		want := wantRecordLines("p", c)
		r := enc.Record("t", c)
		if got := recordLines(r); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("change %d (%+v):\n got %q\nwant %q", i, *c, got, want)
		}
		enc.Recycle(r)
	}
	// Past maxCachedTables the cache starts over, and still renders right.
	for i := 0; i < maxCachedTables+10; i++ {
		c := &Change{Op: OpCreate, Table: &Table{Connector: "mysql", Database: "d", Name: fmt.Sprint("t", i), Columns: []Column{{Name: "id"}}, Key: []int{0}},
			After: []Value{int64(i)}, Commit: base, TxID: "x", Pos: "y"}
		if got, want := recordLines(enc.Record("t", c)), wantRecordLines("p", c); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("table %d:\n got %q\nwant %q", i, got, want)
		}
	}
	if len(enc.tables) > maxCachedTables {
		t.Errorf("%d tables cached, bound %d", len(enc.tables), maxCachedTables)
	}
}

func TestKeyChanged(t *testing.T) {
	tb := &Table{Columns: []Column{{Name: "a"}, {Name: "b"}, {Name: "v"}}, Key: []int{0, 1}}
	for _, c := range []struct {
		before, after []Value
		want          bool
	}{
		{[]Value{int64(1), "x", "p"}, []Value{int64(1), "x", "q"}, false},
		{[]Value{int64(1), "x", "p"}, []Value{int64(2), "x", "p"}, true},
		{[]Value{int64(1), "x", "p"}, []Value{int64(1), "y", "p"}, true},
		{nil, []Value{int64(1), "x", "p"}, false},
		{[]Value{int64(1), Unchanged{}, "p"}, []Value{int64(1), "y", "p"}, false},
		{[]Value{Decimal("1.0"), "x", nil}, []Value{Decimal("1.00"), "x", nil}, true},
	} {
		if got := KeyChanged(tb, c.before, c.after); got != c.want {
			t.Errorf("KeyChanged(%v, %v) = %v, want %v", c.before, c.after, got, c.want)
		}
	}
}
