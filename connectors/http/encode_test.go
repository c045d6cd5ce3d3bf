package http

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	nethttp "net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/binding"
	ceevent "github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/plumecdc/plume/pkg/event"
)

// sdkEvents parses a received request with sdk-go's HTTP binding and
// validates every event.
func sdkEvents(t *testing.T, s seen) []ceevent.Event {
	t.Helper()
	req := &nethttp.Request{Header: s.header, Body: io.NopCloser(bytes.NewReader(s.body))}
	if cehttp.IsHTTPBatch(s.header) {
		evs, err := cehttp.NewEventsFromHTTPRequest(req)
		if err != nil {
			t.Fatalf("sdk-go batch: %v\n%s", err, s.body)
		}
		for i := range evs {
			if err := evs[i].Validate(); err != nil {
				t.Fatalf("sdk-go validate: %v", err)
			}
		}
		return evs
	}
	msg := cehttp.NewMessageFromHttpRequest(req)
	ev, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		t.Fatalf("sdk-go: %v\nheaders %v\nbody %s", err, s.header, s.body)
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("sdk-go validate: %v", err)
	}
	return []ceevent.Event{*ev}
}

// unpct undoes the binary mode's percent-encoding (sdk-go v2.16 does not).
func unpct(t *testing.T, s string) string {
	d, err := url.PathUnescape(s)
	if err != nil {
		t.Fatalf("percent-decoding %q: %v", s, err)
	}
	return d
}

func jsonEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: got invalid JSON %s: %v", what, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, got, want)
	}
}

// TestShapesParseWithSDK sends the corpus, encoded in both Kafka modes, in
// each HTTP mode and checks that sdk-go's HTTP binding reads back the
// reference event of every change (event.CloudEvent): same attributes,
// extensions and data.
func TestShapesParseWithSDK(t *testing.T) {
	for _, kafkaStructured := range []bool{false, true} {
		for _, mode := range []string{ModeBinary, ModeStructured, ModeBatch} {
			name := mode + "/kafka-binary"
			if kafkaStructured {
				name = mode + "/kafka-structured"
			}
			t.Run(name, func(t *testing.T) {
				rec := &recorder{}
				srv := serve(t, rec)
				cfg := cfgFor(srv.URL + "/hooks/plume")
				cfg.Mode = mode
				cfg.MaxBatch = 4
				tg := newTestTarget(t, cfg)
				changes := corpus()
				var msgs = make([]messageT, 0, len(changes))
				for i, c := range changes {
					msgs = append(msgs, message(t, c, kafkaStructured, int64(i)))
				}
				if err := tg.Apply(context.Background(), batchOf(msgs...)); err != nil {
					t.Fatal(err)
				}
				got := map[string]ceevent.Event{}
				for _, s := range rec.requests() {
					evs := sdkEvents(t, s)
					switch mode {
					case ModeBinary:
						if ct := s.header.Get("Content-Type"); ct != "application/json" {
							t.Fatalf("binary Content-Type %q", ct)
						}
						if s.header.Get("Ce-Id") == "" {
							t.Fatal("binary request without ce-id")
						}
					case ModeStructured:
						if ct := s.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/cloudevents+json") {
							t.Fatalf("structured Content-Type %q", ct)
						}
					case ModeBatch:
						if len(evs) > cfg.MaxBatch {
							t.Fatalf("batch of %d > max_batch", len(evs))
						}
					}
					if mode != ModeBatch {
						ev := evs[0]
						id, src := ev.ID(), ev.Source()
						if mode == ModeBinary {
							id, src = unpct(t, id), unpct(t, src)
						}
						if k := s.header.Get("Idempotency-Key"); k != idempotencyKey(src, id) {
							t.Fatalf("Idempotency-Key %q for %s/%s", k, src, id)
						}
					} else if k := s.header.Get("Idempotency-Key"); !strings.HasPrefix(k, "batch-sha256:") {
						t.Fatalf("batch Idempotency-Key %q", k)
					}
					for _, ev := range evs {
						id := ev.ID()
						if mode == ModeBinary {
							id = unpct(t, id)
						}
						got[id] = ev
					}
				}
				if len(got) != len(changes) {
					t.Fatalf("got %d distinct events, want %d", len(got), len(changes))
				}
				for _, c := range changes {
					want, err := event.CloudEvent(pipeline, c)
					if err != nil {
						t.Fatal(err)
					}
					ev, ok := got[want.ID()]
					if !ok {
						t.Fatalf("event %q not received", want.ID())
					}
					str := func(s string) string {
						if mode == ModeBinary {
							return unpct(t, s)
						}
						return s
					}
					if str(ev.Source()) != want.Source() || str(ev.Type()) != want.Type() || str(ev.Subject()) != want.Subject() || ev.SpecVersion() != "1.0" {
						t.Fatalf("attributes: got %s %s %q, want %s %s %q", ev.Source(), ev.Type(), ev.Subject(), want.Source(), want.Type(), want.Subject())
					}
					if !ev.Time().Equal(want.Time()) {
						t.Fatalf("time %v, want %v", ev.Time(), want.Time())
					}
					if ev.DataContentType() != "application/json" {
						t.Fatalf("datacontenttype %q", ev.DataContentType())
					}
					gotExt := map[string]string{}
					for k, v := range ev.Extensions() {
						s, _ := v.(string)
						gotExt[k] = str(s)
					}
					wantExt := map[string]string{}
					for k, v := range want.Extensions() {
						wantExt[k], _ = v.(string)
					}
					if !reflect.DeepEqual(gotExt, wantExt) {
						t.Fatalf("extensions of %s:\n got %v\nwant %v", want.ID(), gotExt, wantExt)
					}
					jsonEqual(t, "data of "+want.ID(), ev.Data(), want.Data())
				}
			})
		}
	}
}

// TestBodyRow sends the route's row as the data, attributes unchanged.
func TestBodyRow(t *testing.T) {
	for _, mode := range []string{ModeBinary, ModeStructured, ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			rec := &recorder{}
			srv := serve(t, rec)
			cfg := cfgFor(srv.URL)
			cfg.Mode, cfg.Body = mode, BodyRow
			tg := newTestTarget(t, cfg)
			m := message(t, corpus()[0], false, 0)
			m.Row = map[string]any{"ProductCode": "SKU-1", "Price": json.Number("12.50"), "Note": "<&>"}
			m2 := message(t, corpus()[2], true, 1) // a delete: the before image
			if err := tg.Apply(context.Background(), batchOf(m, m2)); err != nil {
				t.Fatal(err)
			}
			var evs []ceevent.Event
			for _, s := range rec.requests() {
				evs = append(evs, sdkEvents(t, s)...)
			}
			if len(evs) != 2 {
				t.Fatalf("%d events", len(evs))
			}
			byID := map[string]ceevent.Event{}
			for _, e := range evs {
				byID[e.ID()] = e
			}
			e := byID[m.ID]
			if e.Type() != "io.plume.row.insert" || e.Subject() != "id=42" || e.Extensions()["table"] != "products" {
				t.Fatalf("attributes changed: %v", e)
			}
			if !bytes.Contains(e.Data(), []byte(`"<&>"`)) {
				t.Fatalf("HTML-escaped row: %s", e.Data())
			}
			jsonEqual(t, "row", e.Data(), []byte(`{"ProductCode":"SKU-1","Price":12.50,"Note":"<&>"}`))
			jsonEqual(t, "delete row", byID[m2.ID].Data(), []byte(`{"id":42,"sku":"SKU-1","price":"13.00","blob":null}`))
		})
	}
}

// TestMessageWithoutRecord builds the event from the message's fields.
func TestMessageWithoutRecord(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec)
	cfg := cfgFor(srv.URL)
	cfg.Body = BodyRow
	tg := newTestTarget(t, cfg)
	m := messageT{ID: "lsn:0/1/0", Source: "/plume/p/postgresql/shop", Op: event.OpUpdate, Subject: "id=1",
		Database: "shop", Schema: "public", Table: "t", Time: commit, Position: "lsn:0/1", Row: map[string]any{"id": 1.0}}
	bad := messageT{Offset: 1, Row: map[string]any{}} // no id: not an event
	err := tg.Apply(context.Background(), batchOf(m, bad))
	if errClass(err) != "poison" || len(err.(*recordErrors).Failed) != 1 || err.(*recordErrors).Failed[1] == nil {
		t.Fatalf("want the message without id rejected, got %v", err)
	}
	reqs := rec.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	ev := sdkEvents(t, reqs[0])[0]
	if ev.Type() != "io.plume.row.update" || ev.Extensions()["position"] != "lsn:0/1" || ev.Time().UnixMicro() != commit.UnixMicro() {
		t.Fatalf("event %v", ev)
	}
	jsonEqual(t, "data", ev.Data(), []byte(`{"id":1}`))
}

func TestHeaderValue(t *testing.T) {
	for in, want := range map[string]string{
		"id=42":                   "id=42",
		"lsn:0/16B3748/0":         "lsn:0/16B3748/0",
		"a b":                     "a%20b",
		`"q"`:                     "%22q%22",
		"100%":                    "100%25",
		"é\n":                     "%C3%A9%0A",
		"\x7f":                    "%7F",
		"a,b\\=c":                 "a,b\\=c",
		"2026-11-24T10:30:00.12Z": "2026-11-24T10:30:00.12Z",
	} {
		if got := headerValue(in); got != want {
			t.Errorf("headerValue(%q) = %q, want %q", in, got, want)
		}
		if back, _ := url.PathUnescape(headerValue(in)); back != in {
			t.Errorf("round trip of %q: %q", in, back)
		}
	}
}

func TestIdempotencyKeyForms(t *testing.T) {
	if k := idempotencyKey("/plume/p/postgresql/shop", "lsn:0/16B3748/0"); k != "/plume/p/postgresql/shop/lsn:0/16B3748/0" {
		t.Fatalf("plain key %q", k)
	}
	k := idempotencyKey("/plume/p/postgresql/shop", "snapshot:1/public.t/name=a b")
	if !strings.HasPrefix(k, "sha256:") || len(k) != len("sha256:")+64 {
		t.Fatalf("hashed key %q", k)
	}
	if k != idempotencyKey("/plume/p/postgresql/shop", "snapshot:1/public.t/name=a b") {
		t.Fatal("not deterministic")
	}
	long := strings.Repeat("x", 300)
	if k := idempotencyKey("/s", long); !strings.HasPrefix(k, "sha256:") {
		t.Fatalf("long key not hashed: %q", k)
	}
	a, b := &ce{source: "/s", id: "1"}, &ce{source: "/s", id: "9"}
	if batchIdempotencyKey(a, b, 9) != batchIdempotencyKey(a, b, 9) || batchIdempotencyKey(a, b, 9) == batchIdempotencyKey(a, b, 8) {
		t.Fatal("batch key must be a function of first, last and count")
	}
}
