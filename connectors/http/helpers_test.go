package http

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

const pipeline = "shop-sync"

type (
	messageT     = target.Message
	recordErrors = target.RecordErrors
	configSecret = config.Secret
)

var products = &event.Table{
	Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
	Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}, {Name: "price", Type: "numeric(10,2)"}, {Name: "blob", Type: "bytea"}},
	Key:     []int{0},
}

var orders = &event.Table{
	Connector: "mysql", Database: "shop", Name: "order_lines",
	Columns: []event.Column{{Name: "order_id", Type: "int"}, {Name: "line", Type: "varchar(10)"}, {Name: "qty", Type: "bigint unsigned"}},
	Key:     []int{0, 1},
}

var commit = time.Date(2026, 11, 24, 10, 30, 0, 123456000, time.UTC)

// corpus covers every op, both connectors, composite keys with characters
// that need escaping, a subject with spaces, quotes and a newline, and a
// traceparent.
func corpus() []*event.Change {
	return []*event.Change{
		{Op: event.OpCreate, Table: products, After: []event.Value{int64(42), "SKU-1", event.Decimal("12.50"), []byte{0, 1, 2}}, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748", Index: 0, TableIndex: 1},
		{Op: event.OpUpdate, Table: products, Before: []event.Value{int64(42), "SKU-1", event.Decimal("12.50"), event.Unchanged{}}, After: []event.Value{int64(42), "SKU-1", event.Decimal("13.00"), event.Unchanged{}}, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748", Index: 1, TableIndex: 2},
		{Op: event.OpDelete, Table: products, Before: []event.Value{int64(42), "SKU-1", event.Decimal("13.00"), nil}, Commit: commit, TxID: "772", Pos: "lsn:0/16B3800", Index: 0, TableIndex: 1},
		{Op: event.OpRead, Table: &event.Table{Connector: "postgresql", Database: "shop", Schema: "public", Name: "products", Columns: products.Columns, Key: []int{1}},
			After: []event.Value{int64(7), "émoji 🎉 \"q\"\n 100%", event.Decimal("NaN"), nil}, Commit: commit, Pos: "snapshot:0/16B0000", Snapshot: true},
		{Op: event.OpTruncate, Table: products, Commit: commit, TxID: "773", Pos: "lsn:0/16B3900", Index: 0, TableIndex: 1},
		{Op: event.OpCreate, Table: orders, After: []event.Value{int64(5), "a,b=c\\d", uint64(18446744073709551615)}, Commit: commit, TxID: "0-1-42", Pos: "gtid:0-1-42", Index: 3, TableIndex: 4,
			SourceFields: []event.Field{{Name: "file", Value: "binlog.000003"}, {Name: "pos", Value: int64(4567)}, {Name: "server_id", Value: int64(1)}}, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
	}
}

// insert returns an insert of products row id with the given index in its
// transaction, so that ids are distinct and ordered.
func insert(id int64, index int64) *event.Change {
	return &event.Change{Op: event.OpCreate, Table: products, After: []event.Value{id, fmt.Sprintf("SKU-%d", id), event.Decimal("1.00"), nil},
		Commit: commit, TxID: "900", Pos: "lsn:0/1000000", Index: index, TableIndex: index + 1}
}

// message encodes c with the event Encoder into a Kafka record and turns
// it into a target.Message as the router does (the row is the after image,
// or the before image for a delete).
func message(t testing.TB, c *event.Change, structured bool, offset int64) target.Message {
	t.Helper()
	enc := &event.Encoder{Pipeline: pipeline, Structured: structured}
	rec := enc.Record("shop-sync.public.products", c)
	rec.Offset = offset
	return fromRecord(t, rec, "all")
}

func fromRecord(t testing.TB, rec *kgo.Record, route string) target.Message {
	t.Helper()
	ev, err := event.Decode(rec)
	if err != nil || ev == nil {
		t.Fatalf("decode: %v", err)
	}
	op, _ := ev.Op()
	ts, _ := time.Parse(time.RFC3339Nano, ev.Time)
	m := target.Message{
		Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset,
		ID: ev.ID, Source: ev.Source, Op: op, Subject: ev.Subject,
		Database: ev.Extensions["database"], Schema: ev.Extensions["schema"], Table: ev.Extensions["table"],
		Time: ts, Position: ev.Extensions["position"], Route: route, Value: rec.Value,
	}
	for _, h := range rec.Headers {
		m.Headers = append(m.Headers, target.Header{Key: h.Key, Value: h.Value})
	}
	var env struct {
		Before, After map[string]any
	}
	d := json.NewDecoder(strings.NewReader(string(ev.Data)))
	d.UseNumber()
	if err := d.Decode(&env); err != nil {
		t.Fatalf("envelope: %v", err)
	}
	m.Row = env.After
	if m.Row == nil {
		m.Row = env.Before
	}
	return m
}

func batchOf(msgs ...target.Message) *target.Batch {
	return &target.Batch{Messages: msgs, Offsets: target.Offsets{}}
}

// inserts returns n insert messages for products ids 1..n.
func inserts(t testing.TB, n int) []target.Message {
	msgs := make([]target.Message, n)
	for i := range msgs {
		msgs[i] = message(t, insert(int64(i+1), int64(i)), false, int64(i))
	}
	return msgs
}

func newTestTarget(t testing.TB, cfg Config) *Target {
	t.Helper()
	tg, err := New(cfg, "erp", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

func cfgFor(url string) Config {
	c := DefaultConfig()
	c.URL = url
	c.Timeout.Duration = 5 * time.Second
	return c
}

// seen is a request as a test server saw it.
type seen struct {
	header nethttp.Header
	body   []byte
}

// recorder is a test server handler that records requests and answers with
// status(r) (200 when nil).
type recorder struct {
	mu     sync.Mutex
	reqs   []seen
	status func(r *nethttp.Request, body []byte) (int, string)
}

func (rc *recorder) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, seen{r.Header.Clone(), body})
	rc.mu.Unlock()
	code, text := 200, ""
	if rc.status != nil {
		code, text = rc.status(r, body)
	}
	w.WriteHeader(code)
	io.WriteString(w, text)
}

func (rc *recorder) requests() []seen {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seen(nil), rc.reqs...)
}

func serve(t testing.TB, h nethttp.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// errClass names how the delivery layer treats err.
func errClass(err error) string {
	var re *target.RecordErrors
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &re):
		return "poison"
	case target.IsPermanent(err):
		return "permanent"
	}
	return "retry"
}
