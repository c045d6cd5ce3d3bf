package search

import (
	"bytes"
	"context"
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

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

const pipeline = "shop-sync"

var products = &event.Table{
	Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
	Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}, {Name: "price", Type: "numeric(10,2)"}, {Name: "qty", Type: "bigint"}},
	Key:     []int{0},
}

// lines has a composite key whose values need escaping.
var lines = &event.Table{
	Connector: "mysql", Database: "shop", Name: "order_lines",
	Columns: []event.Column{{Name: "order_id", Type: "int"}, {Name: "line", Type: "varchar(10)"}, {Name: "qty", Type: "bigint"}},
	Key:     []int{0, 1},
}

var commit = time.Date(2026, 11, 24, 10, 30, 0, 123456000, time.UTC)

func row(id int64, sku, price string, qty any) []event.Value {
	return []event.Value{id, sku, event.Decimal(price), qty}
}

func ins(after []event.Value) *event.Change {
	return &event.Change{Op: event.OpCreate, Table: products, After: after, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748"}
}

func upd(before, after []event.Value) *event.Change {
	return &event.Change{Op: event.OpUpdate, Table: products, Before: before, After: after, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748"}
}

func del(before []event.Value) *event.Change {
	return &event.Change{Op: event.OpDelete, Table: products, Before: before, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748"}
}

// message encodes c into a Kafka record at offset (binary or structured
// mode) and turns it into a target.Message as the router does: the row is
// the after image, or the before image for a delete.
func message(t testing.TB, c *event.Change, structured bool, offset int64) target.Message {
	t.Helper()
	c.Index = offset
	enc := &event.Encoder{Pipeline: pipeline, Structured: structured}
	rec := enc.Record(pipeline+"."+c.Table.Database+"."+c.Table.Name, c)
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
	var env struct{ Before, After map[string]any }
	d := json.NewDecoder(bytes.NewReader(ev.Data))
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

func cfgFor(url, index string) Config {
	c := DefaultConfig()
	c.URL = url
	c.Index = index
	c.Timeout.Duration = 10 * time.Second
	return c
}

func newTestTarget(t testing.TB, cfg Config) *Target {
	t.Helper()
	tg, err := New(cfg, "idx", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
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

// fakeBulk is a test server speaking the _bulk protocol: it records each
// request's actions and answers each item with item(action) (status 201 by
// default), or the whole request with whole(n) when that returns a status.
type fakeBulk struct {
	mu      sync.Mutex
	reqs    []fakeReq
	item    func(a bulkAction) (int, string) // status, error JSON ("" for none)
	whole   func(n int, r *nethttp.Request) (int, string)
	headers []nethttp.Header
}

type fakeReq struct {
	path    string
	query   string
	actions []bulkAction
}

// bulkAction is one parsed action (and its document).
type bulkAction struct {
	Kind    string
	Index   string
	ID      string
	Version int64
	Doc     map[string]any
}

func parseBulk(t testing.TB, body []byte) []bulkAction {
	var out []bulkAction
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		var meta map[string]struct {
			Index       string `json:"_index"`
			ID          string `json:"_id"`
			Version     int64  `json:"version"`
			VersionType string `json:"version_type"`
		}
		if err := json.Unmarshal([]byte(lines[i]), &meta); err != nil || len(meta) != 1 {
			t.Errorf("bad action line %q: %v", lines[i], err)
			return nil
		}
		for kind, m := range meta {
			if m.VersionType != "external" {
				t.Errorf("action %q without external versioning", lines[i])
			}
			a := bulkAction{Kind: kind, Index: m.Index, ID: m.ID, Version: m.Version}
			if kind == "index" {
				i++
				d := json.NewDecoder(strings.NewReader(lines[i]))
				d.UseNumber()
				if err := d.Decode(&a.Doc); err != nil {
					t.Errorf("bad document line %q: %v", lines[i], err)
				}
			}
			out = append(out, a)
		}
	}
	return out
}

func (f *fakeBulk) handler(t testing.TB) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.headers = append(f.headers, r.Header.Clone())
		f.mu.Unlock()
		if r.URL.Path == "/" && r.Method == nethttp.MethodGet {
			io.WriteString(w, `{"version":{"distribution":"opensearch","number":"2.19.2"}}`)
			return
		}
		if !strings.HasSuffix(r.URL.Path, "/_bulk") {
			w.WriteHeader(404)
			return
		}
		acts := parseBulk(t, body)
		f.mu.Lock()
		f.reqs = append(f.reqs, fakeReq{r.URL.Path, r.URL.RawQuery, acts})
		f.mu.Unlock()
		if f.whole != nil {
			if code, text := f.whole(len(acts), r); code != 0 {
				w.WriteHeader(code)
				io.WriteString(w, text)
				return
			}
		}
		var items []string
		errs := false
		for _, a := range acts {
			code, e := 201, ""
			if f.item != nil {
				code, e = f.item(a)
			}
			s := fmt.Sprintf(`{%q:{"status":%d`, a.Kind, code)
			if e != "" {
				s += `,"error":` + e
				errs = true
			}
			items = append(items, s+"}}")
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"errors":%v,"items":[%s]}`, errs, strings.Join(items, ","))
	})
}

func (f *fakeBulk) requests() []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeReq(nil), f.reqs...)
}

func serve(t testing.TB, h nethttp.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// es is a small client of a real cluster for checks.
type es struct {
	t   testing.TB
	url string
}

func (e es) do(method, path, body string) (int, []byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := nethttp.NewRequestWithContext(ctx, method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// doc is a document as the index holds it.
type doc struct {
	Found   bool           `json:"found"`
	Version int64          `json:"_version"`
	Source  map[string]any `json:"_source"`
}

func (e es) get(index, id string) doc {
	e.t.Helper()
	code, b := e.do(nethttp.MethodGet, "/"+index+"/_doc/"+id, "")
	var d doc
	if code != 200 && code != 404 {
		e.t.Fatalf("get %s/%s: HTTP %d %s", index, id, code, b)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		e.t.Fatalf("get %s/%s: %v: %s", index, id, err, b)
	}
	return d
}

// all returns every document of index by _id (after a refresh). Test
// indexes hold at most 10,000 documents (the default max_result_window).
func (e es) all(index string) map[string]doc {
	e.t.Helper()
	e.do(nethttp.MethodPost, "/"+index+"/_refresh", "")
	out := map[string]doc{}
	code, b := e.do(nethttp.MethodPost, "/"+index+"/_search", `{"size":10000,"version":true,"track_total_hits":true,"query":{"match_all":{}}}`)
	if code == 404 {
		return out
	}
	if code != 200 {
		e.t.Fatalf("search %s: HTTP %d %s", index, code, b)
	}
	var r struct {
		Hits struct {
			Total struct {
				Value int `json:"value"`
			} `json:"total"`
			Hits []struct {
				ID      string         `json:"_id"`
				Version int64          `json:"_version"`
				Source  map[string]any `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatal(err)
	}
	if r.Hits.Total.Value > len(r.Hits.Hits) {
		e.t.Fatalf("index %s holds %d documents, more than a test reads", index, r.Hits.Total.Value)
	}
	for _, h := range r.Hits.Hits {
		out[h.ID] = doc{Found: true, Version: h.Version, Source: h.Source}
	}
	return out
}
