package search

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	nethttp "net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

func TestDocID(t *testing.T) {
	long := strings.Repeat("x", 513)
	for _, c := range []struct{ subject, id, err string }{
		{"id=42", "42", ""},
		{"sku=SKU-1", "SKU-1", ""},
		{`sku=a\,b\=c\\d`, `a,b=c\d`, ""},
		{"order_id=5,line=a", "order_id=5,line=a", ""},
		{`order_id=5,line=a\,b`, `order_id=5,line=a\,b`, ""},
		{"", "", "no key"},
		{"id=", "", "empty _id"},
		{"noequals", "", "not a rendered key"},
		{"id=" + long, "", "513 bytes"},
	} {
		id, err := docID(c.subject)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("docID(%q) = %q, %v; want error %q", c.subject, id, err, c.err)
			}
			continue
		}
		if err != nil || id != c.id {
			t.Errorf("docID(%q) = %q, %v; want %q", c.subject, id, err, c.id)
		}
	}
	// Subjects rendered by the event package parse back to their values.
	for _, vals := range [][]event.Value{{int64(5), "a,b=c\\d"}, {int64(-1), "plain"}, {int64(0), "ü é"}} {
		c := &event.Change{Op: event.OpCreate, Table: lines, After: []event.Value{vals[0], vals[1], int64(1)}}
		parts, err := parseSubject(c.Subject())
		if err != nil || len(parts) != 2 || parts[0].value != event.KeyText(vals[0]) || parts[1].value != vals[1] {
			t.Errorf("parseSubject(%q) = %+v, %v", c.Subject(), parts, err)
		}
		if got := renderSubject(parts); got != c.Subject() {
			t.Errorf("renderSubject = %q, want %q", got, c.Subject())
		}
	}
}

func TestOldSubject(t *testing.T) {
	for _, structured := range []bool{false, true} {
		// A key change: the old key comes from the before image.
		m := message(t, upd(row(1, "a", "1.00", int64(1)), row(2, "a", "1.00", int64(1))), structured, 10)
		if got, err := oldSubject(&m); err != nil || got != "id=1" {
			t.Errorf("structured=%v: key change: %q, %v", structured, got, err)
		}
		// The same key: nothing to delete.
		m = message(t, upd(row(2, "a", "1.00", int64(1)), row(2, "b", "2.00", int64(1))), structured, 11)
		if got, err := oldSubject(&m); err != nil || got != "" {
			t.Errorf("structured=%v: same key: %q, %v", structured, got, err)
		}
		// No before image (PostgreSQL without REPLICA IDENTITY FULL).
		m = message(t, upd(nil, row(2, "b", "2.00", int64(1))), structured, 12)
		if got, err := oldSubject(&m); err != nil || got != "" {
			t.Errorf("structured=%v: no before: %q, %v", structured, got, err)
		}
		// A composite key with escaped characters.
		c := &event.Change{Op: event.OpUpdate, Table: lines, Before: []event.Value{int64(5), "a,b", int64(1)}, After: []event.Value{int64(5), "c=d", int64(1)}, Commit: commit, Pos: "gtid:0-1-1"}
		m = message(t, c, structured, 13)
		if got, err := oldSubject(&m); err != nil || got != `order_id=5,line=a\,b` {
			t.Errorf("structured=%v: composite: %q, %v", structured, got, err)
		}
	}
	// Inserts and deletes never have an old key.
	m := message(t, del(row(1, "a", "1.00", nil)), false, 1)
	if got, _ := oldSubject(&m); got != "" {
		t.Errorf("delete: %q", got)
	}
}

func TestIndexExpression(t *testing.T) {
	m := message(t, ins(row(7, "SKU-7", "1.00", int64(3))), false, 5)
	for _, c := range []struct{ expr, want, err string }{
		{DefaultIndexExpr, "shop-sync.shop.products", ""},
		{`"cdc-" + table`, "cdc-products", ""},
		{`"logs-" + ts.Format("2006.01.02")`, "logs-2026.11.24", ""},
		{`table + "-" + op`, "products-insert", ""},
		{`row.sku`, "", "must be lowercase"},
		{`"a b"`, "", `must not contain ' '`},
		{`row.qty`, "", "expected a string"},
	} {
		ix, err := compileIndex(c.expr)
		if err != nil {
			t.Errorf("%s: compile: %v", c.expr, err)
			continue
		}
		got, err := ix.name(&m)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %q, %v; want error %q", c.expr, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
	// Compile-time errors: unknown names, results that are not strings.
	for _, src := range []string{`tabel`, `1 + 2`, `table ==`, `op == "insert"`} {
		if _, err := compileIndex(src); err == nil {
			t.Errorf("%s: compiled", src)
		}
	}
	// An expression on table names only is evaluated once per table.
	ix, _ := compileIndex(`lower(table)`)
	if !ix.perTable {
		t.Fatal("lower(table) is not per table")
	}
	ix2, _ := compileIndex(`table + row.sku`)
	if ix2.perTable {
		t.Fatal("an expression reading the row is cached per table")
	}
}

func TestCheckIndexName(t *testing.T) {
	for _, ok := range []string{"products", "shop-sync.public.products", "logs-2026.11.24", "a_b+c"} {
		if err := checkIndexName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "Products", "-a", "_a", "+a", "a b", "a,b", "a:b", "a*", "a#", strings.Repeat("a", 256)} {
		if err := checkIndexName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDocumentJSON(t *testing.T) {
	got, err := appendDocument(nil, map[string]any{"b": json.Number("123456789012345678901234567890"), "a": "x\"y", "c": []any{int64(1), 1.5, nil, true}, "d": map[string]any{"z": 1, "y": "ü"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":"x\"y","b":123456789012345678901234567890,"c":[1,1.5,null,true],"d":{"y":"ü","z":1}}`; string(got) != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if _, err := appendDocument(nil, map[string]any{"n": 1 / zero()}); err == nil {
		t.Fatal("Inf accepted")
	}
}

func zero() float64 { return 0 }

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.URL = "" }, "urls: is required"},
		{func(c *Config) { c.URLs = []string{"http://x:9200"} }, "set url or urls"},
		{func(c *Config) { c.URL = "ftp://x" }, "scheme must be http or https"},
		{func(c *Config) { c.URL = "http://u:p@x" }, "must not hold credentials"},
		{func(c *Config) { c.IndexExpr = "table" }, "set index or index_expr"},
		{func(c *Config) { c.Index = "Bad" }, "index: index name must be lowercase"},
		{func(c *Config) { c.Index = ""; c.IndexExpr = "tabel" }, "index_expr: unknown name tabel"},
		{func(c *Config) { c.Index = ""; c.IndexExpr = "1 + 1" }, "index_expr: expected string"},
		{func(c *Config) { c.Auth.Bearer = "t"; c.Auth.APIKey = "k" }, "set only one of basic, api_key and bearer"},
		{func(c *Config) { c.Auth.Basic = &Basic{} }, "auth.basic.username: is required"},
		{func(c *Config) { c.TLS = config.TLS{InsecureSkipVerify: true} }, "tls: is set but http://"},
		{func(c *Config) { c.Refresh = "sometimes" }, "refresh"},
		{func(c *Config) { c.MaxBulkBytes = 10 }, "max_bulk_bytes"},
		{func(c *Config) { c.CreateIndex = &CreateIndex{Mappings: "{not json"} }, "create_index.mappings: not a JSON object"},
	} {
		cfg := cfgFor("http://127.0.0.1:9200", "products")
		c.mod(&cfg)
		_, err := New(cfg, "idx", "", nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want error containing %q, got %v", c.want, err)
		}
	}
}

func pipelineWith(t *testing.T, targetYAML string) *config.Pipeline {
	t.Helper()
	src := `name: shop-sync
state_dir: ./data
source:
  type: mysql
  dsn: "root@tcp(127.0.0.1:3306)/"
  tables: ["shop.products"]
routes:
  - name: all
    to: [idx]
targets:
  idx:
` + targetYAML
	p, err := config.Parse("pipeline.yaml", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return p
}

// TestFactory decodes a full block through the registry without
// connecting, and reports a bad expression at its file position (this is
// what plume validate shows).
func TestFactory(t *testing.T) {
	t.Setenv("ES_PASSWORD", "s3cret-pw")
	p := pipelineWith(t, `    type: search
    urls: ["https://es1:9200", "https://es2:9200/prefix/"]
    index_expr: '"cdc-" + lower(table)'
    create_index:
      settings: { number_of_shards: 1 }
      mappings: '{"properties": {"sku": {"type": "keyword"}}}'
    auth: { basic: { username: plume, password: "${ES_PASSWORD}" } }
    tls: { insecure_skip_verify: true }
    timeout: 5s
    max_bulk_bytes: 1048576
    max_bulk_actions: 500
    refresh: wait_for
    pipeline: my-ingest
`)
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "idx", Config: p.Targets["idx"]})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	s := tg.(*Target).set
	if len(s.urls) != 2 || s.urls[1].Path != "/prefix" || s.maxBulkActions != 500 || s.maxBulkBytes != 1<<20 ||
		!strings.Contains(s.query, "refresh=wait_for") || !strings.Contains(s.query, "pipeline=my-ingest") {
		t.Fatalf("settings %+v", s)
	}
	if want := `{"mappings":{"properties":{"sku":{"type":"keyword"}}},"settings":{"number_of_shards":1}}`; string(s.createBody) != want {
		t.Fatalf("create body %s", s.createBody)
	}
	if s.authorization != "Basic "+base64.StdEncoding.EncodeToString([]byte("plume:s3cret-pw")) {
		t.Fatalf("authorization %q", s.authorization)
	}

	p = pipelineWith(t, "    type: search\n    url: http://127.0.0.1:9200\n    index_expr: 'tabel + \"x\"'\n")
	_, err = target.New(context.Background(), target.Env{Pipeline: p, Name: "idx", Config: p.Targets["idx"]})
	if err == nil || !strings.HasPrefix(err.Error(), "pipeline.yaml:14:18: targets.idx.index_expr: unknown name tabel") {
		t.Fatalf("error %v", err)
	}
	p = pipelineWith(t, "    type: search\n    url: http://127.0.0.1:9200\n    index: Products\n")
	_, err = target.New(context.Background(), target.Env{Pipeline: p, Name: "idx", Config: p.Targets["idx"]})
	if err == nil || !strings.HasPrefix(err.Error(), "pipeline.yaml:14:12: targets.idx.index:") {
		t.Fatalf("error %v", err)
	}
	p = pipelineWith(t, "    type: search\n    url: http://127.0.0.1:9200\n    indx: products\n")
	_, err = target.New(context.Background(), target.Env{Pipeline: p, Name: "idx", Config: p.Targets["idx"]})
	if err == nil || !strings.Contains(err.Error(), `did you mean "index"`) {
		t.Fatalf("error %v", err)
	}
}

// TestApplyActions checks the bulk body: one action per message, external
// versions from the offsets, _id from the key, deletes, a primary-key
// change as a delete of the old _id, truncates skipped.
func TestApplyActions(t *testing.T) {
	f := &fakeBulk{}
	srv := serve(t, f.handler(t))
	cfg := cfgFor(srv.URL, "products")
	cfg.Refresh = "wait_for"
	tg := newTestTarget(t, cfg)
	trunc := &event.Change{Op: event.OpTruncate, Table: products, Commit: commit, Pos: "lsn:0/1"}
	b := batchOf(
		message(t, ins(row(1, "a", "1.50", int64(2))), false, 0),
		message(t, ins(row(2, "b", "2.00", nil)), true, 1),
		message(t, del(row(3, "c", "3.00", nil)), false, 2),
		message(t, upd(row(4, "d", "4.00", nil), row(5, "d", "4.00", nil)), false, 3),
		message(t, trunc, false, 4),
	)
	if err := tg.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 1 || !strings.Contains(reqs[0].query, "refresh=wait_for") || !strings.Contains(reqs[0].query, "filter_path=") {
		t.Fatalf("requests %+v", reqs)
	}
	want := []bulkAction{
		{Kind: "index", Index: "products", ID: "1", Version: 1, Doc: map[string]any{"id": json.Number("1"), "sku": "a", "price": "1.50", "qty": json.Number("2")}},
		{Kind: "index", Index: "products", ID: "2", Version: 2, Doc: map[string]any{"id": json.Number("2"), "sku": "b", "price": "2.00", "qty": nil}},
		{Kind: "delete", Index: "products", ID: "3", Version: 3},
		{Kind: "delete", Index: "products", ID: "4", Version: 4},
		{Kind: "index", Index: "products", ID: "5", Version: 4, Doc: map[string]any{"id": json.Number("5"), "sku": "d", "price": "4.00", "qty": nil}},
	}
	if !reflect.DeepEqual(reqs[0].actions, want) {
		t.Fatalf("actions\n%+v\nwant\n%+v", reqs[0].actions, want)
	}
}

// TestApplyCoalesces keeps one operation per document, the highest
// version; when it is rejected, the next highest is written instead.
func TestApplyCoalesces(t *testing.T) {
	f := &fakeBulk{}
	f.item = func(a bulkAction) (int, string) {
		if a.Doc != nil && a.Doc["sku"] == "poison" {
			return 400, `{"type":"mapper_parsing_exception","reason":"failed to parse field [qty]"}`
		}
		return 201, ""
	}
	srv := serve(t, f.handler(t))
	tg := newTestTarget(t, cfgFor(srv.URL, "products"))
	b := batchOf(
		message(t, ins(row(1, "a", "1", nil)), false, 10),
		message(t, upd(row(1, "a", "1", nil), row(1, "b", "1", nil)), false, 11),
		message(t, ins(row(2, "x", "1", nil)), false, 12),
		message(t, upd(row(1, "b", "1", nil), row(1, "c", "1", nil)), false, 13),
		message(t, upd(row(2, "x", "1", nil), row(2, "y", "1", nil)), false, 14),
		message(t, upd(row(2, "y", "1", nil), row(2, "poison", "1", nil)), false, 15),
	)
	err := tg.Apply(context.Background(), b)
	var re *target.RecordErrors
	if !errors.As(err, &re) || !re.Applied || len(re.Failed) != 1 || re.Failed[5] == nil ||
		!strings.Contains(re.Failed[5].Error(), `mapper_parsing_exception: failed to parse field [qty]`) ||
		!strings.Contains(re.Failed[5].Error(), `_id "2" in index "products" (version 16)`) {
		t.Fatalf("Apply: %v (%+v)", err, re)
	}
	var got []string
	for _, r := range f.requests() {
		var s []string
		for _, a := range r.actions {
			s = append(s, fmt.Sprintf("%s/%d/%v", a.ID, a.Version, a.Doc["sku"]))
		}
		got = append(got, strings.Join(s, " "))
	}
	// Round 1: the last write of each key; round 2: key 2's next highest.
	if want := []string{"1/14/c 2/16/poison", "2/15/y"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("requests %q, want %q", got, want)
	}
}

// TestApplyItemVerdicts: every item is judged; only retryable ones are
// sent again, and the batch is done only when every item is.
func TestApplyItemVerdicts(t *testing.T) {
	f := &fakeBulk{}
	calls := 0
	f.item = func(a bulkAction) (int, string) {
		switch a.ID {
		case "1":
			return 409, `{"type":"version_conflict_engine_exception","reason":"[1]: version conflict, current version [9] is higher or equal to the one provided [1]"}`
		case "2":
			return 200, ""
		case "3":
			return 404, "" // delete of a missing document
		case "4":
			calls++
			if calls < 3 {
				return 429, `{"type":"es_rejected_execution_exception","reason":"rejected execution"}`
			}
			return 201, ""
		case "5":
			return 400, `{"type":"document_parsing_exception","reason":"[1:10] failed to parse","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"abc\""}}`
		case "6":
			return 503, `{"type":"unavailable_shards_exception","reason":"primary shard is not active"}`
		}
		return 201, ""
	}
	srv := serve(t, f.handler(t))
	tg := newTestTarget(t, cfgFor(srv.URL, "products"))
	b := batchOf(
		message(t, ins(row(1, "a", "1", nil)), false, 0),
		message(t, ins(row(2, "a", "1", nil)), false, 1),
		message(t, del(row(3, "a", "1", nil)), false, 2),
		message(t, ins(row(4, "a", "1", nil)), false, 3),
		message(t, ins(row(5, "a", "1", nil)), false, 4),
	)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		err := tg.Apply(ctx, b)
		if errClass(err) != "retry" || !strings.Contains(err.Error(), "es_rejected_execution_exception") {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	err := tg.Apply(ctx, b)
	var re *target.RecordErrors
	if !errors.As(err, &re) || !re.Applied || len(re.Failed) != 1 || re.Failed[4] == nil ||
		!strings.Contains(re.Failed[4].Error(), `status 400 document_parsing_exception: [1:10] failed to parse (caused by illegal_argument_exception: For input string: "abc")`) {
		t.Fatalf("Apply: %v", err)
	}
	reqs := f.requests()
	if len(reqs) != 3 || len(reqs[0].actions) != 5 || len(reqs[1].actions) != 1 || reqs[1].actions[0].ID != "4" || len(reqs[2].actions) != 1 {
		t.Fatalf("requests %+v", reqs)
	}

	// A 503 item keeps the batch from completing.
	if err := tg.Apply(ctx, batchOf(message(t, ins(row(6, "a", "1", nil)), false, 9))); errClass(err) != "retry" || !strings.Contains(err.Error(), "unavailable_shards_exception") {
		t.Fatalf("503 item: %v", err)
	}
}

// TestApplyRequestErrors: whole-request failures.
func TestApplyRequestErrors(t *testing.T) {
	f := &fakeBulk{}
	var status int
	var body string
	f.whole = func(int, *nethttp.Request) (int, string) { return status, body }
	f.item = func(a bulkAction) (int, string) {
		if a.ID == "2" {
			return 400, `{"type":"illegal_argument_exception","reason":"bad doc"}`
		}
		return 201, ""
	}
	srv := serve(t, f.handler(t))
	ctx := context.Background()
	msgs := func() *target.Batch {
		return batchOf(message(t, ins(row(1, "a", "1", nil)), false, 0), message(t, ins(row(2, "a", "1", nil)), false, 1), message(t, ins(row(3, "a", "1", nil)), false, 2))
	}
	for _, c := range []struct {
		status int
		body   string
		class  string
		text   string
	}{
		{503, "overloaded", "retry", "HTTP 503 Service Unavailable from http://127.0.0.1"},
		{429, `{"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}`, "retry", "es_rejected_execution_exception: queue full"},
		{401, `{"error":{"type":"security_exception","reason":"missing authentication credentials"}}`, "permanent", "HTTP 401"},
		{403, `{"error":{"type":"security_exception","reason":"no permissions for [indices:data/write/bulk]"}}`, "permanent", "no permissions"},
		{404, "", "permanent", "path prefix"},
	} {
		status, body = c.status, c.body
		err := newTestTarget(t, cfgFor(srv.URL, "products")).Apply(ctx, msgs())
		if errClass(err) != c.class || !strings.Contains(err.Error(), c.text) {
			t.Errorf("HTTP %d: %s %v; want %s containing %q", c.status, errClass(err), err, c.class, c.text)
		}
	}
	// A request rejected as a whole is split until the bad document is
	// alone; it alone is dead-lettered.
	status = 400
	f.whole = func(n int, r *nethttp.Request) (int, string) {
		f.mu.Lock()
		last := f.reqs[len(f.reqs)-1]
		f.mu.Unlock()
		for _, a := range last.actions {
			if a.ID == "2" {
				return 400, `{"error":{"type":"action_request_validation_exception","reason":"Validation Failed: 1: bad;"},"status":400}`
			}
		}
		return 0, ""
	}
	err := newTestTarget(t, cfgFor(srv.URL, "products")).Apply(ctx, msgs())
	var re *target.RecordErrors
	if !errors.As(err, &re) || len(re.Failed) != 1 || re.Failed[1] == nil || !strings.Contains(re.Failed[1].Error(), "action_request_validation_exception") {
		t.Fatalf("split: %v", err)
	}

	// The server cannot be reached: retryable, and the next URL is used
	// for the next attempt.
	dead := httptest.NewServer(nethttp.NotFoundHandler())
	dead.Close()
	f2 := &fakeBulk{}
	live := serve(t, f2.handler(t))
	cfg := cfgFor("", "products")
	cfg.URLs = []string{dead.URL, live.URL}
	tg := newTestTarget(t, cfg)
	b := msgs()
	if err := tg.Apply(ctx, b); errClass(err) != "retry" || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("dead URL: %v", err)
	}
	if err := tg.Apply(ctx, b); err != nil || len(f2.requests()) != 1 {
		t.Fatalf("second URL: %v, %d requests", err, len(f2.requests()))
	}
}

// TestApplySplitsLargeBatches: max_bulk_actions and max_bulk_bytes cut a
// batch into several requests.
func TestApplySplitsLargeBatches(t *testing.T) {
	f := &fakeBulk{}
	srv := serve(t, f.handler(t))
	cfg := cfgFor(srv.URL, "products")
	cfg.MaxBulkActions = 4
	tg := newTestTarget(t, cfg)
	var msgs []target.Message
	for i := range 10 {
		msgs = append(msgs, message(t, ins(row(int64(i), "a", "1", nil)), false, int64(i)))
	}
	if err := tg.Apply(context.Background(), batchOf(msgs...)); err != nil {
		t.Fatal(err)
	}
	if n := len(f.requests()); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	cfg.MaxBulkActions = 1000
	cfg.MaxBulkBytes = 1024
	f2 := &fakeBulk{}
	cfg.URL = serve(t, f2.handler(t)).URL
	if err := newTestTarget(t, cfg).Apply(context.Background(), batchOf(msgs...)); err != nil {
		t.Fatal(err)
	}
	if n := len(f2.requests()); n < 2 {
		t.Fatalf("%d requests with max_bulk_bytes 1024", n)
	}
	total := 0
	for _, r := range f2.requests() {
		total += len(r.actions)
	}
	if total != 10 {
		t.Fatalf("%d actions sent", total)
	}
}

func TestAuthHeaders(t *testing.T) {
	for _, c := range []struct {
		auth Auth
		want string
	}{
		{Auth{Basic: &Basic{Username: "plume", Password: "pw-secret"}}, "Basic " + base64.StdEncoding.EncodeToString([]byte("plume:pw-secret"))},
		{Auth{APIKey: "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="}, "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="},
		{Auth{APIKey: "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"}, "ApiKey " + base64.StdEncoding.EncodeToString([]byte("VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"))},
		{Auth{Bearer: "tok-12345"}, "Bearer tok-12345"},
	} {
		f := &fakeBulk{}
		// The server echoes the credentials in its error, as some proxies
		// do: they must not reach the error text.
		f.whole = func(int, *nethttp.Request) (int, string) {
			return 401, `{"error":{"type":"security_exception","reason":"bad credentials ` + c.want + `"}}`
		}
		srv := serve(t, f.handler(t))
		cfg := cfgFor(srv.URL, "products")
		cfg.Auth = c.auth
		tg := newTestTarget(t, cfg)
		err := tg.Apply(context.Background(), batchOf(message(t, ins(row(1, "a", "1", nil)), false, 0)))
		if errClass(err) != "permanent" {
			t.Fatalf("%s: %v", c.want, err)
		}
		secret := strings.SplitN(c.want, " ", 2)[1]
		if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), config.Redacted) {
			t.Fatalf("secret in error: %v", err)
		}
		if got := f.headers[0].Get("Authorization"); got != c.want {
			t.Fatalf("Authorization %q, want %q", got, c.want)
		}
	}
}

// TestTLSCustomCA: an https cluster is trusted through ca_file only.
func TestTLSCustomCA(t *testing.T) {
	f := &fakeBulk{}
	srv := httptest.NewUnstartedServer(f.handler(t))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	b := batchOf(message(t, ins(row(1, "a", "1", nil)), false, 0))

	cfg := cfgFor(srv.URL, "products")
	cfg.TLS = config.TLS{CAFile: "ca.pem"} // relative to the pipeline file's dir
	tg, err := New(cfg, "idx", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if _, err := tg.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tg.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	// Without the CA: a certificate error, retried like any transport error.
	err = newTestTarget(t, cfgFor(srv.URL, "products")).Apply(context.Background(), b)
	if errClass(err) != "retry" || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without CA: %v", err)
	}
}

// TestCreateIndex: a missing index is created once with the configured
// body; an existing one is left alone.
func TestCreateIndex(t *testing.T) {
	var created []string
	exists := map[string]bool{"old": true}
	f := &fakeBulk{}
	inner := f.handler(t)
	srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/")
		switch {
		case r.Method == nethttp.MethodHead:
			if !exists[name] {
				w.WriteHeader(404)
			}
		case r.Method == nethttp.MethodPut:
			body, _ := io.ReadAll(r.Body)
			created = append(created, name+" "+string(body))
			exists[name] = true
			io.WriteString(w, `{"acknowledged":true}`)
		default:
			inner.ServeHTTP(w, r)
		}
	}))
	cfg := cfgFor(srv.URL, "")
	cfg.IndexExpr = `table == "products" ? "new" : "old"`
	cfg.CreateIndex = &CreateIndex{Mappings: map[string]any{"properties": map[string]any{"sku": map[string]any{"type": "keyword"}}}}
	tg := newTestTarget(t, cfg)
	c := &event.Change{Op: event.OpCreate, Table: lines, After: []event.Value{int64(1), "a", int64(1)}, Commit: commit, Pos: "gtid:0-1-1"}
	for i := range 3 {
		b := batchOf(message(t, ins(row(int64(i), "a", "1", nil)), false, int64(i)), message(t, c, false, int64(10+i)))
		if err := tg.Apply(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{`new {"mappings":{"properties":{"sku":{"type":"keyword"}}}}`}; !reflect.DeepEqual(created, want) {
		t.Fatalf("created %q", created)
	}
}

func TestFactoryRejectsLayerCoalescing(t *testing.T) {
	p := pipelineWith(t, "    type: search\n    url: http://127.0.0.1:9200\n    delivery: { coalesce: true }\n")
	_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "idx", Config: p.Targets["idx"]})
	if err == nil || !strings.Contains(err.Error(), "targets.idx.delivery: coalesce must stay off") {
		t.Fatalf("error %v", err)
	}
}
