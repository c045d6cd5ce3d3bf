package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
)

// RouteResult is the router workload: a backlog captured into Kafka, then
// read by `plume run --stage route` alone, next to a bare franz-go consume
// of the same records (the limit), so the router's own cost per event shows.
type RouteResult struct {
	Source string `json:"source"`
	Events int64  `json:"events"`
	// Bare is a franz-go consumer (read_committed, no decoding) in the
	// benchmark process: its CPU from getrusage.
	BareEventsSec  float64 `json:"bare_consume_events_per_sec"`
	BareCPUUsEvent float64 `json:"bare_consume_cpu_us_per_event"`
	// Filter is plume's route stage with one route whose `when` is false
	// for every event: consume, decode, evaluate, checkpoint; no target I/O.
	FilterEventsSec  float64 `json:"route_filter_events_per_sec"`
	FilterCPUUsEvent float64 `json:"route_filter_cpu_us_per_event"`
	FilterPeakRSSMB  float64 `json:"route_filter_peak_rss_mb"`
	// OverheadUs is the router's CPU cost per event over the bare consume.
	OverheadUs float64 `json:"router_overhead_cpu_us_per_event"`
	// HTTP is the route stage into the http target (batch mode, 500
	// events per request) with a minimal receiver in this process.
	HTTPEventsSec  float64 `json:"http_events_per_sec"`
	HTTPCPUUsEvent float64 `json:"http_cpu_us_per_event"`
	HTTPPeakRSSMB  float64 `json:"http_peak_rss_mb"`
	HTTPRequests   int64   `json:"http_requests"`
	Load           LoadAvg `json:"load_avg"`
	Err            string  `json:"error,omitempty"`
}

func (r *Results) addRoute(x *RouteResult) {
	r.Routes = keepBetter(r, r.Routes, x, func(y *RouteResult) bool { return y.Source == x.Source },
		func(y *RouteResult) (LoadAvg, string, string) {
			return y.Load, y.Err, fmt.Sprintf("route %s: filter %s events/s, http %s events/s, overhead %.1f µs", y.Source, num(y.FilterEventsSec), num(y.HTTPEventsSec), y.OverheadUs)
		})
}

func (b *bench) route(t *tb, src source, r *RouteResult) {
	ctx := context.Background()
	n := int64(b.s.Rows / 2) // large enough that start-up is a small share
	r.Source, r.Events = src.Kind(), n
	db := src.NewDB(t)
	table := "routed"
	must(t, src.CreateTable(ctx, db, table, false))

	// The receiver: counts the events of each batch request.
	var events, requests atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var batch []json.RawMessage
		if err == nil {
			err = json.Unmarshal(body, &batch)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		requests.Add(1)
		events.Add(int64(len(batch)))
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	name := uniq(t, "r")
	dir := t.TempDir()
	// One pipeline name (so one topic), three files differing in routes
	// and state_dir: the capture, the filtering router, the http router.
	capture := pipeSpec{Name: name, Dir: dir + "/capture", Src: src, DB: db, Table: table, Brokers: b.brokers,
		Extra: "routes:\n  - { name: none, when: 'false', to: [sink] }\ntargets:\n  sink: { type: http, url: \"http://" + ln.Addr().String() + "/\" }\n"}
	filter := capture
	filter.Dir = dir + "/filter"
	filter.Extra = "routes:\n  - { name: none, when: 'table == \"nothing\" || number(after.id) < 0', to: [filtered] }\ntargets:\n  filtered: { type: http, url: \"http://" + ln.Addr().String() + "/\" }\n"
	httpSpec := capture
	httpSpec.Dir = dir + "/http"
	httpSpec.Extra = "routes:\n  - { name: all, to: [sink] }\ntargets:\n  sink: { type: http, url: \"http://" + ln.Addr().String() + "/\", mode: batch, max_batch: 500, concurrency: 2 }\n"
	for _, p := range []*pipeSpec{&capture, &filter, &httpSpec} {
		must(t, os.MkdirAll(p.Dir, 0o755))
	}
	cfgC, cfgF, cfgH := capture.write(t), filter.write(t), httpSpec.write(t)
	topic := dataTopic(cfgC, src, db, table)
	must(t, b.adm.createTopic(ctx, topic))
	must(t, b.prepare(ctx, t, src, db, cfgC))

	logf("route %s: loading %d rows and capturing them", src.Kind(), n)
	must(t, src.Load(ctx, db, table, 1, n, 100, b.s.TxnRows))
	w := b.adm.watch(ctx, topic, cfgC.CheckpointTopic())
	c := startChild(t, b.bin, cfgC, "capture")
	_, got, err := w.waitEvents(ctx, n, b.s.DrainTimeout, c.exited)
	_ = c.stop()
	must(t, err)
	if got < n-3 { // the count is a lower bound by up to 3 (see waitEvents)
		t.Fatalf("route: %d of %d events captured", got, n)
	}
	end := b.adm.committedEnd(ctx, topic)

	// The limit: a bare consume of the same records.
	logf("route %s: bare consume", src.Kind())
	secs, cpu, cnt, err := bareConsume(ctx, b.brokers, topic, n, b.s.DrainTimeout)
	must(t, err)
	r.BareEventsSec, r.BareCPUUsEvent = float64(cnt)/secs, float64(cpu.Microseconds())/float64(cnt)

	logf("route %s: plume route stage, every event filtered out", src.Kind())
	st, secs, err := b.routeUntil(ctx, t, cfgF, "route-filtered-"+src.Kind(), "plume."+name+".filtered", topic, end, func() bool { return false })
	must(t, err)
	r.FilterEventsSec, r.FilterCPUUsEvent, r.FilterPeakRSSMB = float64(n)/secs, float64(st.CPU.Microseconds())/float64(n), float64(st.PeakKB)/1024
	r.OverheadUs = r.FilterCPUUsEvent - r.BareCPUUsEvent

	logf("route %s: plume route stage into the http target", src.Kind())
	st, secs, err = b.routeUntil(ctx, t, cfgH, "route-http-"+src.Kind(), "", topic, end, func() bool { return events.Load() >= n })
	if err != nil {
		err = fmt.Errorf("%w\nreceiver: %d events in %d requests", err, events.Load(), requests.Load())
	}
	must(t, err)
	r.HTTPEventsSec, r.HTTPCPUUsEvent, r.HTTPPeakRSSMB = float64(n)/secs, float64(st.CPU.Microseconds())/float64(n), float64(st.PeakKB)/1024
	r.HTTPRequests = requests.Load()
	logf("route %s: bare %.0f/s %.1f µs; filter %.0f/s %.1f µs (overhead %.1f µs); http %.0f/s %.1f µs in %d requests",
		src.Kind(), r.BareEventsSec, r.BareCPUUsEvent, r.FilterEventsSec, r.FilterCPUUsEvent, r.OverheadUs, r.HTTPEventsSec, r.HTTPCPUUsEvent, r.HTTPRequests)
}

// routeUntil runs the route stage of cfg until done() or, with group set,
// until the group's committed offset reaches the topic's end (the end is
// after the last transaction marker, so end-1 is the next offset after the
// last record). It returns the child's CPU and peak RSS and the seconds from
// start to completion.
func (b *bench) routeUntil(ctx context.Context, t *tb, cfg *config.Pipeline, prof, group, topic string, end int64, done func() bool) (procStat, float64, error) {
	c := b.profiledChild(t, cfg, "route", prof)
	defer c.stop()
	var st procStat
	for deadline := time.Now().Add(b.s.DrainTimeout); ; {
		st = c.stat()
		finished := done()
		if group != "" && !finished {
			if offs, err := b.adm.adm.FetchOffsets(ctx, group); err == nil {
				if o, ok := offs.Lookup(topic, 0); ok && o.Err == nil && o.At >= end-1 {
					finished = true
				}
			}
		}
		if finished {
			return st, time.Since(c.start).Seconds(), nil
		}
		if err := c.exited(); err != nil {
			return st, 0, err
		}
		if time.Now().After(deadline) {
			return st, 0, fmt.Errorf("route stage not done after %v; plume output:\n%s", b.s.DrainTimeout, tailLines(c.p.Output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bareConsume reads n records of topic (read_committed) and returns the
// seconds taken, the process CPU used (getrusage; the benchmark process is
// otherwise idle) and the count.
func bareConsume(ctx context.Context, brokers []string, topic string, n int64, timeout time.Duration) (float64, time.Duration, int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxPartitionBytes(1<<20))
	if err != nil {
		return 0, 0, 0, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cpu0, t0 := rusageCPU(), time.Now()
	var got int64
	for got < n {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			return 0, 0, got, fmt.Errorf("bare consume: %d of %d records: %w", got, n, err)
		}
		got += int64(fs.NumRecords())
	}
	return time.Since(t0).Seconds(), rusageCPU() - cpu0, got, nil
}

func rusageCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
