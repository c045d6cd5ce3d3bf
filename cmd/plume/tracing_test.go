package main

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/plumecdc/plume/pkg/event"
)

// otlpReceiver is an OTLP/HTTP trace receiver (protobuf), as an
// OpenTelemetry collector's otlphttp receiver accepts it.
type otlpReceiver struct {
	mu      sync.Mutex
	spans   map[string][]otlpSpan // by trace id (hex)
	headers http.Header
}

type otlpSpan struct {
	name, spanID, parentID string
	start, end             time.Time
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "unexpected "+req.URL.Path+" "+req.Header.Get("Content-Type"), http.StatusNotFound)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	var msg coltrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(raw, &msg)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.headers = req.Header.Clone()
	for _, rs := range msg.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				id := hex.EncodeToString(s.TraceId)
				r.spans[id] = append(r.spans[id], otlpSpan{name: s.Name, spanID: hex.EncodeToString(s.SpanId), parentID: hex.EncodeToString(s.ParentSpanId),
					start: time.Unix(0, int64(s.StartTimeUnixNano)), end: time.Unix(0, int64(s.EndTimeUnixNano))})
			}
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *otlpReceiver) trace(id string) []otlpSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]otlpSpan(nil), r.spans[id]...)
}

// TestTraceparentAndOTLPExport: every event carries the deterministic W3C
// traceparent of its source transaction, and with tracing.otlp set the
// capture span it names and a deliver span below it reach the collector.
func TestTraceparentAndOTLPExport(t *testing.T) {
	e := newE2E(t)
	rcv := &otlpReceiver{spans: map[string][]otlpSpan{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, []byte(fmt.Sprintf("tracing:\n  otlp: { endpoint: %q, headers: { x-api-key: \"${TEST_OTLP_KEY}\" }, service_name: plume-test }\n", srv.URL))...)
	if err := os.WriteFile(e.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_OTLP_KEY", "otlp-secret-81c2")
	e.start()
	e.waitInSync(60 * time.Second)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET price = price + 1 WHERE id <= 5`)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'renamed' WHERE id = 7`)
	e.waitInSync(30 * time.Second)

	// Every event has a traceparent; it is the one derived from the
	// pipeline and the transaction's position, shared by the transaction.
	byPos := map[string]string{}
	var updateTP string
	for _, r := range e.records("e2e.public.products") {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		tp := h["ce_traceparent"]
		tc, ok := event.ParseTraceParent(tp)
		if !ok || !tc.Sampled {
			t.Fatalf("event %s: traceparent %q", h["ce_id"], tp)
		}
		key := h["ce_position"]
		if strings.HasPrefix(key, "snapshot:") {
			key += "/public.products"
		}
		if want := event.NewTraceContext("e2e", "postgresql", "", key, 1).String(); tp != want {
			t.Fatalf("event %s: traceparent %s, want %s (derived from position %s)", h["ce_id"], tp, want, key)
		}
		if prev, ok := byPos[key]; ok && prev != tp {
			t.Fatalf("one transaction, two traceparents: %s %s", prev, tp)
		}
		byPos[key] = tp
		if h["ce_type"] == "io.plume.row.update" && h["ce_subject"] == "id=1" {
			updateTP = tp
		}
	}
	if len(byPos) < 3 || updateTP == "" {
		t.Fatalf("%d distinct transactions, update traceparent %q", len(byPos), updateTP)
	}

	// The collector gets the capture span the traceparent names, and the
	// sql target's deliver span as its child.
	tc, _ := event.ParseTraceParent(updateTP)
	traceID, spanID := hex.EncodeToString(tc.TraceID[:]), hex.EncodeToString(tc.SpanID[:])
	var spans []otlpSpan
	deadline := time.Now().Add(20 * time.Second)
	for {
		spans = rcv.trace(traceID)
		var capture, deliver bool
		for _, s := range spans {
			capture = capture || s.name == "plume.capture" && s.spanID == spanID && s.parentID == ""
			deliver = deliver || s.name == "plume.deliver erp" && s.parentID == spanID && !s.end.Before(s.start)
		}
		if capture && deliver {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: spans %+v; want plume.capture %s and its child plume.deliver erp", traceID, spans, spanID)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rcv.mu.Lock()
	key := rcv.headers.Get("X-Api-Key")
	rcv.mu.Unlock()
	if key != "otlp-secret-81c2" {
		t.Errorf("export header x-api-key = %q", key)
	}
	if err := e.proc.Stop(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	if out := e.proc.Output(); strings.Contains(out, "otlp-secret-81c2") {
		t.Error("the OTLP header secret appears in plume's output")
	}
}
