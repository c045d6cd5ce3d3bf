package kafka

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// TestRecordEventMode: value event forwards the CloudEvent record as it
// was: value and headers byte for byte, key the subject.
func TestRecordEventMode(t *testing.T) {
	for _, structured := range []bool{false, true} {
		tg := mustTarget(t, ownBrokers, "    topic: erp.products\n")
		in := makeInput(t, 10, structured)
		for i := range in.msgs {
			rec, err := tg.rec.record(&in.msgs[i])
			if err != nil {
				t.Fatal(err)
			}
			src := in.recs[i]
			if rec.Topic != "erp.products" || !bytes.Equal(rec.Key, src.Key) || !bytes.Equal(rec.Value, src.Value) ||
				!reflect.DeepEqual(rec.Headers, src.Headers) {
				t.Fatalf("structured=%v: record %d differs from its input:\n got %+v\nwant %+v", structured, i, rec, src)
			}
		}
	}
}

// TestRecordRowMode: value row writes the row as JSON, keeps the
// CloudEvents headers and says application/json; structured-mode input gets
// binary-mode headers with the same attributes.
func TestRecordRowMode(t *testing.T) {
	tg := mustTarget(t, ownBrokers, "    topic: erp.products\n    value: row\n    key: none\n")
	bin := makeInput(t, 10, false)
	str := makeInput(t, 10, true)
	for i := range bin.msgs {
		m := &bin.msgs[i]
		rec, err := tg.rec.record(m)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Key != nil {
			t.Errorf("key none: got key %q", rec.Key)
		}
		var row map[string]any
		dec := json.NewDecoder(bytes.NewReader(rec.Value))
		dec.UseNumber()
		if err := dec.Decode(&row); err != nil {
			t.Fatalf("value %q: %v", rec.Value, err)
		}
		want, _ := json.Marshal(m.Row)
		got, _ := json.Marshal(row)
		if !bytes.Equal(got, want) {
			t.Errorf("row: got %s, want %s", got, want)
		}
		if strings.Contains(string(rec.Value), `\u003c`) {
			t.Errorf("row JSON is HTML-escaped: %s", rec.Value)
		}
		// Headers: the input's, content-type replaced, in the same order.
		src := bin.recs[i]
		if len(rec.Headers) != len(src.Headers) {
			t.Fatalf("headers: got %v, want those of %v", rec.Headers, src.Headers)
		}
		for j, h := range src.Headers {
			wantH := h
			if h.Key == "content-type" {
				wantH.Value = []byte("application/json")
			}
			if !reflect.DeepEqual(rec.Headers[j], wantH) {
				t.Errorf("header %d: got %s=%q, want %s=%q", j, rec.Headers[j].Key, rec.Headers[j].Value, wantH.Key, wantH.Value)
			}
		}
		// The structured-mode input gives the same headers.
		rec2, err := tg.rec.record(&str.msgs[i])
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rec2.Headers, rec.Headers) || !bytes.Equal(rec2.Value, rec.Value) {
			t.Errorf("structured input: headers\n%v\nwant\n%v", fmtHeaders(rec2.Headers), fmtHeaders(rec.Headers))
		}
		// The output is a CloudEvent Plume itself can read.
		rx, err := event.Decode(rec)
		if err != nil || rx.ID != m.ID || rx.Type != event.Type(m.Op) || rx.Extensions["table"] != m.Table {
			t.Errorf("decode output: %+v, %v", rx, err)
		}
	}
}

func fmtHeaders(hs []kgo.RecordHeader) string {
	var b strings.Builder
	for _, h := range hs {
		b.WriteString(h.Key + "=" + string(h.Value) + " ")
	}
	return b.String()
}

// TestRecordTopicExpr: topic_expr sees table, schema, database, op and
// route; a failing expression or an unusable topic rejects the message.
func TestRecordTopicExpr(t *testing.T) {
	tg := mustTarget(t, ownBrokers, `    topic_expr: 'table == "orders" ? "erp." + schema + ".orders." + op : (table == "bad" ? "x y" : (table == "empty" ? "" : (table == "loop" ? "shop.loop" : database + "." + route)))'`+"\n")
	m := &target.Message{Table: "orders", Schema: "public", Database: "shopdb", Op: event.OpUpdate, Route: "all"}
	if topic, err := tg.rec.topic(m); err != nil || topic != "erp.public.orders.update" {
		t.Errorf("orders: %q, %v", topic, err)
	}
	m.Table = "products"
	if topic, err := tg.rec.topic(m); err != nil || topic != "shopdb.all" {
		t.Errorf("products: %q, %v", topic, err)
	}
	for table, want := range map[string]string{
		"bad":   "invalid Kafka topic name",
		"empty": "empty topic",
		"loop":  "endless loop",
	} {
		m.Table = table
		if _, err := tg.rec.topic(m); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("table %s: %v, want %q", table, err, want)
		}
	}
}

func TestOffsetsEncoding(t *testing.T) {
	o := target.Offsets{{Topic: "a", Partition: 0}: 5, {Topic: "a", Partition: 2}: 7, {Topic: "b.c", Partition: 1}: 0}
	v, err := encodeOffsets(o)
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != `{"a":{"0":5,"2":7},"b.c":{"1":0}}` {
		t.Errorf("encoded %s", v)
	}
	back, err := decodeOffsets(v)
	if err != nil || !reflect.DeepEqual(back, o) {
		t.Errorf("decoded %v, %v", back, err)
	}
	if o, err := decodeOffsets(nil); err != nil || o == nil || len(o) != 0 {
		t.Errorf("no record: %v, %v", o, err)
	}
	if _, err := decodeOffsets([]byte(`{"a":{"x":1}}`)); err == nil {
		t.Error("bad partition accepted")
	}
	m := mergeOffsets(target.Offsets{{Topic: "a"}: 10, {Topic: "b"}: 3}, target.Offsets{{Topic: "a"}: 4, {Topic: "c"}: 1})
	if !reflect.DeepEqual(m, target.Offsets{{Topic: "a"}: 10, {Topic: "b"}: 3, {Topic: "c"}: 1}) {
		t.Errorf("merged %v", m)
	}
}
