// Package tracing exports OpenTelemetry spans for a pipeline over OTLP/HTTP,
// when the pipeline's tracing.otlp.endpoint is set.
//
// Every event carries the deterministic W3C trace context of its source
// transaction (event.NewTraceContext): one trace per source transaction.
// Plume records in that trace:
//   - "plume.capture": the span named by the traceparent's span id, from the
//     source commit to the Kafka commit of the transaction (capture stage);
//   - "plume.deliver <target>": a child of it per target, per applied batch
//     that held events of the transaction, from the start of the apply to
//     its success (route stage).
//
// Spans are exported in batches from a bounded queue; when the collector is
// slow or down, spans are dropped, never the pipeline slowed.
package tracing

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// Tracer exports a pipeline's spans. A nil *Tracer does nothing.
type Tracer struct {
	tp       *sdktrace.TracerProvider
	tr       trace.Tracer
	pipeline string
}

// New starts the exporter for cfg, or returns nil when no endpoint is set.
func New(pipeline string, cfg config.Tracing, log *slog.Logger) (*Tracer, error) {
	o := cfg.OTLP
	if o.Endpoint == "" {
		return nil, nil
	}
	u, err := url.Parse(o.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("tracing.otlp.endpoint: %w", err)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(u.Host),
		otlptracehttp.WithURLPath(strings.TrimSuffix(u.Path, "/") + "/v1/traces"),
		otlptracehttp.WithTimeout(10 * time.Second)}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	if len(o.Headers) > 0 {
		h := map[string]string{}
		for k, v := range o.Headers {
			h[k] = v.Reveal()
		}
		opts = append(opts, otlptracehttp.WithHeaders(h))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	name := o.ServiceName
	if name == "" {
		name = "plume"
	}
	res := resource.NewSchemaless(attribute.String("service.name", name), attribute.String("plume.pipeline", pipeline))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithMaxQueueSize(4096), sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithIDGenerator(idGen{}),
		// The sampling decision is the trace context's flag, decided at
		// capture from tracing.otlp.sample_ratio.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
	)
	log.Info("tracing: exporting spans over OTLP/HTTP", "endpoint", u.Scheme+"://"+u.Host+u.Path)
	return &Tracer{tp: tp, tr: tp.Tracer("github.com/plumecdc/plume"), pipeline: pipeline}, nil
}

// Close flushes the spans still queued (bounded by ctx) and stops.
func (t *Tracer) Close(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// idGen gives a span the ids a context asks for (the deterministic capture
// span), else random ones.
type idGen struct{}

type wantIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

type wantKey struct{}

func (idGen) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if w, ok := ctx.Value(wantKey{}).(wantIDs); ok {
		return w.trace, w.span
	}
	var t trace.TraceID
	binary.BigEndian.PutUint64(t[:8], rand.Uint64())
	binary.BigEndian.PutUint64(t[8:], rand.Uint64()|1)
	return t, randomSpan()
}

func (idGen) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return randomSpan() }

func randomSpan() trace.SpanID {
	var s trace.SpanID
	binary.BigEndian.PutUint64(s[:], rand.Uint64()|1)
	return s
}

// Captured records the capture span of each source transaction of a
// committed Kafka transaction (capture.TxnTracer).
func (t *Tracer) Captured(txns []capture.TxnSpan, committed time.Time) {
	for _, x := range txns {
		if !x.Trace.Sampled {
			continue
		}
		ctx := context.WithValue(context.Background(), wantKey{}, wantIDs{trace.TraceID(x.Trace.TraceID), trace.SpanID(x.Trace.SpanID)})
		start := x.SourceCommit
		if start.IsZero() || start.After(committed) {
			start = committed
		}
		_, sp := t.tr.Start(ctx, "plume.capture", trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("plume.pipeline", t.pipeline), attribute.String("plume.position", x.Position),
				attribute.Int("plume.events", x.Events)))
		sp.End(trace.WithTimestamp(committed))
	}
}

// Delivered records, for each source transaction with events in an applied
// batch of a target, a "plume.deliver <target>" child of its capture span.
// It reads each message's traceparent from its ce_traceparent header
// (binary mode; structured-mode records carry it in the JSON and get no
// deliver span).
func (t *Tracer) Delivered(targetName string) func(msgs []target.Message, start time.Time) {
	return func(msgs []target.Message, start time.Time) {
		end := time.Now()
		seen := map[string]int{}
		var order []string
		for i := range msgs {
			tp := traceparent(&msgs[i])
			if tp == "" {
				continue
			}
			if _, ok := seen[tp]; !ok {
				order = append(order, tp)
			}
			seen[tp]++
		}
		for _, tp := range order {
			tc, ok := event.ParseTraceParent(tp)
			if !ok || !tc.Sampled {
				continue
			}
			parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID(tc.TraceID), SpanID: trace.SpanID(tc.SpanID),
				TraceFlags: trace.FlagsSampled, Remote: true})
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
			_, sp := t.tr.Start(ctx, "plume.deliver "+targetName, trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("plume.pipeline", t.pipeline), attribute.String("plume.target", targetName),
					attribute.Int("plume.messages", seen[tp])))
			sp.End(trace.WithTimestamp(end))
		}
	}
}

func traceparent(m *target.Message) string {
	for _, h := range m.Headers {
		if h.Key == "ce_"+event.ExtTraceParent {
			return string(h.Value)
		}
	}
	return ""
}
