package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Results is one run: written as <date>-<machine>.json and rendered as .md.
type Results struct {
	Date      string            `json:"date"`
	Finished  string            `json:"finished,omitempty"`
	Minutes   float64           `json:"minutes,omitempty"`
	Machine   Machine           `json:"machine"`
	Settings  Settings          `json:"settings"`
	Targets   []TargetCheck     `json:"targets"`
	Drains    []*DrainResult    `json:"backlog_drain"`
	Latency   []*LatencyResult  `json:"sustained_latency"`
	Snapshots []*SnapshotResult `json:"snapshot"`
	E2E       []*E2EResult      `json:"end_to_end"`
	// Baseline is an idle plume process's memory (baseline.go).
	Baseline Baseline `json:"idle_plume"`
	// ChildProfiles are the plume binary's own profiles (profiledChild),
	// as paths under the results dir without the .cpu.pb.gz and
	// .allocs.pb.gz suffixes.
	ChildProfiles []string `json:"child_profiles,omitempty"`
	// Warmup is the broker warm-up before the first workload (warmup.go).
	Warmup *Warmup `json:"broker_warmup,omitempty"`
	// Routes are the router workload (bench/route.go).
	Routes []*RouteResult `json:"router,omitempty"`
	// TargetRuns are the target workloads (bench/targets.go).
	TargetRuns []*TargetResult `json:"targets_delivery,omitempty"`
	Errors     []string        `json:"errors,omitempty"`
	// Reruns lists workloads measured again later (BENCH_MERGE=1): their
	// results replaced the earlier ones; measured_at tells which is which.
	Reruns []string `json:"reruns,omitempty"`
	// Other holds the measurements of rerun workloads that were not kept
	// (taken under a higher load average).
	Other []string `json:"other_measurements,omitempty"`
}

// The add functions record a workload's result. When the same workload was
// measured before (a rerun merged with BENCH_MERGE=1), the measurement taken
// under the lower machine load is kept in the tables and the other one is
// listed under Other: nothing measured is dropped silently.

func (r *Results) addDrain(d *DrainResult) {
	r.Drains = keepBetter(r, r.Drains, d, func(x *DrainResult) bool { return x.Source == d.Source && x.RowBytes == d.RowBytes },
		func(x *DrainResult) (LoadAvg, string, string) {
			return x.Load, x.Err, fmt.Sprintf("drain %s %d B: %s events/s, ratio %.0f%%", x.Source, x.RowBytes, num(x.EventsSec), x.Ratio*100)
		})
}

func (r *Results) addLatency(l *LatencyResult) {
	r.Latency = keepBetter(r, r.Latency, l, func(x *LatencyResult) bool { return x.Source == l.Source && x.Rate == l.Rate },
		func(x *LatencyResult) (LoadAvg, string, string) {
			return x.Load, x.Err, fmt.Sprintf("latency %s %s/s: append p50 %.1f / p99 %.1f ms, visible p99 %.1f ms", x.Source, num(float64(x.Rate)), x.Append.P50, x.Append.P99, x.Visible.P99)
		})
}

func (r *Results) addSnapshot(s *SnapshotResult) {
	r.Snapshots = keepBetter(r, r.Snapshots, s, func(x *SnapshotResult) bool { return x.Source == s.Source && x.Workers == s.Workers },
		func(x *SnapshotResult) (LoadAvg, string, string) {
			return x.Load, x.Err, fmt.Sprintf("snapshot %s %d workers: %s rows/s", x.Source, x.Workers, num(x.RowsSec))
		})
}

func (r *Results) addE2E(e *E2EResult) {
	r.E2E = keepBetter(r, r.E2E, e, func(x *E2EResult) bool { return x.Source == e.Source },
		func(x *E2EResult) (LoadAvg, string, string) {
			return x.Load, x.Err, fmt.Sprintf("end to end %s: %s events/s, p99 %.1f ms", x.Source, num(x.EventsSec), x.Latency.P99)
		})
}

func keepBetter[T any](r *Results, list []T, v T, same func(T) bool, desc func(T) (LoadAvg, string, string)) []T {
	for i, x := range list {
		if !same(x) {
			continue
		}
		lx, ex, sx := desc(x)
		lv, ev, sv := desc(v)
		other, otherLoad := sv, lv
		if ex != "" && ev == "" || ex == ev && lv.Start+lv.End < lx.Start+lx.End {
			list[i] = v
			other, otherLoad = sx, lx
		}
		r.Other = append(r.Other, fmt.Sprintf("%s (measured %s, load %.1f / %.1f)", other, otherLoad.At, otherLoad.Start, otherLoad.End))
		return list
	}
	return append(list, v)
}

// TargetCheck states whether one target of the issue is met.
type TargetCheck struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Status   string `json:"status"` // met, missed, not measured
}

func status(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

func (r *Results) checkTargets() {
	var out []TargetCheck
	for _, src := range []struct {
		kind, label string
		goal        float64
	}{{"mysql", "MariaDB -> Kafka backlog drain >= 100,000 events/s", 100_000}, {"postgres", "PostgreSQL -> Kafka backlog drain >= 80,000 events/s", 80_000}} {
		var parts []string
		ok, any := true, false
		for _, d := range r.Drains {
			if d.Source == src.kind && d.EventsSec > 0 {
				any = true
				ok = ok && d.EventsSec >= src.goal
				parts = append(parts, fmt.Sprintf("%s/s (%d B rows)", num(d.EventsSec), d.RowBytes))
			}
		}
		out = append(out, check(src.label, strings.Join(parts, ", "), any, ok))
	}
	{
		var parts []string
		ok, any := true, false
		for _, d := range r.Drains {
			if d.Ratio > 0 {
				any = true
				ok = ok && d.Ratio >= 0.7
				parts = append(parts, fmt.Sprintf("%s %d B: %.0f%%", d.Source, d.RowBytes, d.Ratio*100))
			}
		}
		out = append(out, check(">= 70% of the raw limit (slower of bare reader and bare producer)", strings.Join(parts, ", "), any, ok))
	}
	{
		var parts []string
		ok, any := true, false
		for _, l := range r.Latency {
			if l.Rate == 10_000 && l.Append.N > 0 {
				any = true
				ok = ok && l.Append.P99 <= 25
				parts = append(parts, fmt.Sprintf("%s: p99 %.1f ms to append (%.1f ms to visible)", l.Source, l.Append.P99, l.Visible.P99))
			}
		}
		out = append(out, check("p99 commit -> Kafka <= 25 ms at 10,000 changes/s", strings.Join(parts, ", "), any, ok))
	}
	{
		best := map[string]*SnapshotResult{}
		for _, s := range r.Snapshots {
			if b := best[s.Source]; s.RowsSec > 0 && (b == nil || s.RowsSec > b.RowsSec) {
				best[s.Source] = s
			}
		}
		var parts []string
		ok := true
		for _, k := range sortedKeys(best) {
			s := best[k]
			ok = ok && s.RowsSec >= 150_000
			parts = append(parts, fmt.Sprintf("%s: %s rows/s (best, %d workers)", k, num(s.RowsSec), s.Workers))
		}
		out = append(out, check("snapshot >= 150,000 rows/s", strings.Join(parts, ", "), len(best) > 0, ok))
	}
	{
		peak, where := 0.0, ""
		note := func(mb float64, w string) {
			if mb > peak {
				peak, where = mb, w
			}
		}
		for _, d := range r.Drains {
			note(d.PeakRSSMB, fmt.Sprintf("drain %s %d B", d.Source, d.RowBytes))
		}
		for _, l := range r.Latency {
			note(l.PeakRSSMB, "latency "+l.Source)
		}
		for _, s := range r.Snapshots {
			note(s.PeakRSSMB, fmt.Sprintf("snapshot %s %d workers", s.Source, s.Workers))
		}
		for _, e := range r.E2E {
			note(e.PeakRSSMB, "end to end "+e.Source)
		}
		out = append(out, check("peak RSS <= 100 MB (plume process)", fmt.Sprintf("max %.0f MB (%s)", peak, where), peak > 0, peak <= 100))
	}
	{
		worst, where := -1.0, ""
		for _, d := range r.Drains {
			if d.Profile != nil && d.GCShare > worst {
				worst, where = d.GCShare, fmt.Sprintf("drain %s %d B", d.Source, d.RowBytes)
			}
		}
		for _, s := range r.Snapshots {
			if s.Profile != nil && s.GCShare > worst {
				worst, where = s.GCShare, fmt.Sprintf("snapshot %s", s.Source)
			}
		}
		out = append(out, check("GC < 10% of CPU", fmt.Sprintf("max %.1f%% (%s)", worst*100, where), worst >= 0, worst < 0.10))
	}
	r.Targets = out
}

func check(target, measured string, measuredAny, ok bool) TargetCheck {
	if !measuredAny {
		return TargetCheck{Target: target, Measured: "-", Status: "not measured"}
	}
	return TargetCheck{Target: target, Measured: measured, Status: status(ok)}
}

func sortedKeys[V any](m map[string]V) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// brokerTable renders the broker's load during each drain run (BrokerLoad)
// as table rows; none if it was not measured.
func brokerTable(drains []*DrainResult) []string {
	load := func(events float64, l *BrokerLoad) string {
		if l == nil {
			return num(events) + "/s"
		}
		return fmt.Sprintf("%s/s: %.2f / %.2f", num(events), l.Cores, l.JITCores)
	}
	var rows []string
	for _, d := range drains {
		var wx, wr, x, r []string
		for _, run := range d.WarmupRuns {
			wx = append(wx, load(run.EventsSec, run.Broker))
		}
		for _, run := range d.WarmupProducer {
			wr = append(wr, load(run.EventsSec, run.Broker))
		}
		for _, run := range d.Runs {
			x = append(x, load(run.EventsSec, run.Broker))
		}
		for i, ev := range d.ProducerRuns {
			var l *BrokerLoad
			if i < len(d.ProducerBroker) && len(d.ProducerBroker) == len(d.ProducerRuns) {
				l = &d.ProducerBroker[i]
			}
			r = append(r, load(ev, l))
		}
		measured := false
		for _, run := range d.Runs {
			measured = measured || run.Broker != nil
		}
		if !measured {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %d B | %s | %s | %s | %s |", d.Source, d.RowBytes,
			strings.Join(wx, "<br>"), strings.Join(wr, "<br>"), strings.Join(x, "<br>"), strings.Join(r, "<br>")))
	}
	return rows
}

// producerCell is the bare producer's median and, if it ran more than
// once, every run.
func producerCell(d *DrainResult) string {
	if len(d.ProducerRuns) < 2 {
		return num(d.Producer.EventsSec)
	}
	runs := make([]string, len(d.ProducerRuns))
	for i, x := range d.ProducerRuns {
		runs[i] = num(x)
	}
	return num(d.Producer.EventsSec) + " (" + strings.Join(runs, " / ") + ")"
}

// num formats a rate with thousands separators.
func num(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// write saves the results so far (after every workload).
func (b *bench) write() {
	b.res.checkTargets()
	j, err := json.MarshalIndent(b.res, "", "  ")
	if err == nil {
		err = os.WriteFile(b.base+".json", append(j, '\n'), 0o644)
	}
	if err == nil {
		err = os.WriteFile(b.base+".md", []byte(b.res.markdown()), 0o644)
	}
	if err != nil {
		logf("writing results: %v", err)
	}
}

func (r *Results) markdown() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	m := r.Machine
	p("# Plume benchmark, %s", r.Date[:10])
	p("")
	p("Produced by `make bench` (bench/run.sh). Started %s%s.", r.Date, ifs(r.Finished != "", fmt.Sprintf(", finished %s (%.1f min)", r.Finished, r.Minutes)))
	p("")
	p("| machine | |")
	p("| --- | --- |")
	p("| CPU | %s |", m.CPUModel)
	p("| cores | %d |", m.Cores)
	p("| memory | %.1f GiB |", m.MemoryGiB)
	p("| kernel | %s |", m.Kernel)
	p("| Go | %s (%s) |", m.GoVersion, m.OS)
	p("| PostgreSQL | %s |", m.PG)
	p("| MariaDB | %s |", m.MariaDB)
	p("| Kafka | %s |", m.Kafka)
	p("| Plume | %s |", m.Commit)
	p("")
	s := r.Settings
	p("Settings: backlog %s changes (%s B payload rows, %d rows per source transaction, %d measured plume runs each after %d warm-up runs); snapshot %s rows (workers %v); latency rates %v changes/s for %v each with %d writer connections; end to end %s rows backlog, latency at %d changes/s. Quick run: %v.",
		num(float64(s.Rows)), joinInts(s.RowSizes), s.TxnRows, s.DrainRuns, s.DrainWarmup, num(float64(s.SnapshotRows)), s.SnapWorkers, s.Rates, s.RateDuration, s.WriterConns, num(float64(s.E2ERows)), s.E2ERate, s.Quick)
	p("")
	for _, rr := range r.Reruns {
		p("Rerun merged into this file: %s.", rr)
		p("")
	}
	p("Database, Kafka broker, Plume and the load generator share the machine. Plume figures are the `plume run --stage capture` binary (child process; CPU and peak RSS from /proc); profiles, GC share and allocations are from the same pipeline run in the benchmark process (pkg/runtime), on the same backlog.")
	p("")
	if bl := r.Baseline; bl.PeakRSSMB > 0 {
		p("An idle `plume run` (started, broker unreachable, no work) peaks at %.0f MB RSS: %.0f MB of it are the binary's file-backed pages (code and read-only data touched at start-up by package initialisers; clean, shared, reclaimable) and %.0f MB anonymous memory. The binary is %.0f MB. Every peak RSS below includes that floor.", bl.PeakRSSMB, bl.RssFileMB, bl.RssAnonMB, bl.BinaryMB)
		p("")
	}
	if w := r.Warmup; w != nil {
		if w.Err != "" {
			p("Broker warm-up before the first workload failed: %s.", w.Err)
		} else {
			rounds := make([]string, len(w.Rounds))
			for i, x := range w.Rounds {
				rounds[i] = num(x)
			}
			jit := ""
			if len(w.RoundsJIT) == len(w.Rounds) && len(w.RoundsJIT) > 0 && w.RoundsJIT[0] >= 0 {
				js := make([]string, len(w.RoundsJIT))
				for i, x := range w.RoundsJIT {
					js[i] = fmt.Sprintf("%.2f", x)
				}
				jit = fmt.Sprintf("; the broker's JIT compiler threads, in cores, during each round: %s", strings.Join(js, ", "))
			}
			steady := fmt.Sprintf("stopped when two rounds in a row were within 5%% of the best before them and the broker's JIT compiler used under %.2f cores in the last", warmupJITQuiet)
			if !w.Steady {
				steady = "stopped by its bound (records or 2 minutes) before that"
			}
			p("Before the first workload the broker was warmed up (its JIT compiles the produce, transaction and fetch paths): %s records shaped like the 100 B drain's were produced transactionally in rounds of %s (records/s: %s%s; %s) and the last round read back read_committed (%s/s), %.0f s in all.", num(float64(w.Records)), num(warmupRound), strings.Join(rounds, ", "), jit, steady, num(w.ConsumeSec), w.TotalSeconds)
		}
		p("")
	}
	p("## Targets")
	p("")
	p("| target | measured | status |")
	p("| --- | --- | --- |")
	for _, t := range r.Targets {
		p("| %s | %s | **%s** |", t.Target, t.Measured, t.Status)
	}
	if len(r.Drains) > 0 {
		p("")
		p("## 1. Backlog drain (source -> Kafka)")
		p("")
		p("| source | row | events | events/s | each run, events/s | MB/s | CPU-µs/event | peak RSS MB | in-process events/s | GC %% | alloc B/event | bare reader events/s | bare producer events/s | ratio to limit | load start/end |")
		p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, d := range r.Drains {
			runs := make([]string, len(d.Runs))
			for i, x := range d.Runs {
				runs[i] = num(x.EventsSec)
			}
			p("| %s | %d B | %s | **%s** | %s | %.1f | %.1f | %.0f | %s | %.1f | %s | %s%s | %s%s | **%.0f%%** | %.1f / %.1f |", d.Source, d.RowBytes, num(float64(d.Events)), num(d.EventsSec), strings.Join(runs, " / "), d.MBSec,
				d.CPUUsPerEvt, d.PeakRSSMB, num(d.InProcEvtSec), d.GCShare*100, num(d.AllocPerEvt), num(d.Reader.EventsSec), errMark(d.Reader.Err), producerCell(d), errMark(d.Producer.Err), d.Ratio*100, d.Load.Start, d.Load.End)
		}
		p("")
		spread := 0.0
		for _, d := range r.Drains {
			lo, hi := 0.0, 0.0
			for _, x := range d.Runs {
				if lo == 0 || x.EventsSec < lo {
					lo = x.EventsSec
				}
				hi = max(hi, x.EventsSec)
			}
			if lo > 0 {
				spread = max(spread, hi/lo-1)
			}
		}
		p("The plume binary drains the backlog %d time(s), each as a fresh pipeline whose start position was set before the backlog was written, and after each of its runs the bare producer writes the same number of records: the two alternate, so that both meet the broker in the same state, after %d unmeasured pairs of the same (the broker's JIT compiler recompiles its produce and transaction paths for a while after it first sees Plume's request mix; table below). Events/s, MB/s, CPU-µs/event and the ratio are the median run's, peak RSS is the highest measured run's. Measured runs of the same backlog differ by up to %.0f%% here (fastest over slowest), so every run is listed.", r.Settings.DrainRuns, r.Settings.DrainWarmup, spread*100)
		p("Events/s is events over the time from starting the plume process to the last event committed (start-up included). MB/s counts record bytes (key, value, headers; before compression). Bare reader: go-mysql BinlogSyncer (rows decoded) or pglogrepl (pgoutput messages) reading the same backlog and discarding it, after the other runs; bare producer: franz-go writing Plume's own records (cycled sample of 10,000, taken from the first run's topic) with the capture settings (zstd, acks=all, transactional, 5,000 records per transaction, as capture by default); its median run counts (every run is listed). The limit is the slower of the two.")
		if pt := pairTable(r.Drains); len(pt) > 0 {
			p("")
			p("The ratio of each alternating pair (the binary's run over the slower of the bare reader and the bare producer's run after it), and each run's start-up: the time from starting the process to its first committed event (seen to within the 50 ms poll), which includes producing and committing its first transaction. The ratio above is the median run's over the limit of the medians.")
			p("")
			p("| source | row | ratio of each pair | first committed event, s |")
			p("| --- | --- | --- | --- |")
			for _, row := range pt {
				p("%s", row)
			}
		}
		if bt := brokerTable(r.Drains); len(bt) > 0 {
			p("")
			p("The broker's CPU during each run, in cores (all its threads / its JIT compiler threads alone; the broker shares the two cores with the run). Warm-up pairs first, not measured:")
			p("")
			p("| source | row | warm-up: plume binary | warm-up: bare producer | plume binary | bare producer |")
			p("| --- | --- | --- | --- | --- | --- |")
			for _, row := range bt {
				p("%s", row)
			}
		}
	}
	if len(r.Latency) > 0 {
		p("")
		p("## 2. Sustained latency (open-loop writer, Plume streaming)")
		p("")
		p("| source | target rate | achieved | changes | commit->append p50 / p99 / p99.9 ms | commit->visible p50 / p99 / p99.9 ms | max ms | plume CPU (cores) | writer max lag ms | stall: slowest append committed at; writer max lag at; longest statement | load start/end |")
		p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, l := range r.Latency {
			stall := "-" // results files from before these were recorded
			if l.WriterStmt > 0 {
				stall = fmt.Sprintf("%.1f s (%.1f ms); %.1f s; %.1f ms at %.1f s", l.SlowestAppendAt, l.Append.Max, l.WriterLagAt, l.WriterStmt, l.WriterStmtAt)
			}
			p("| %s | %s/s | %s/s | %s | %.1f / **%.1f** / %.1f | %.1f / %.1f / %.1f | %.1f | %.2f | %.1f | %s | %.1f / %.1f |%s", l.Source, num(float64(l.Rate)), num(l.Achieved), num(float64(l.Changes)),
				l.Append.P50, l.Append.P99, l.Append.P999, l.Visible.P50, l.Visible.P99, l.Visible.P999, l.Visible.Max, l.PlumeCPU, l.WriterLag, stall, l.Load.Start, l.Load.End, errNote(l.Err))
		}
		p("")
		p("Commit time is when the writer's COMMIT returned; append time is the record's LogAppendTime (broker clock, millisecond resolution; the topics are created with message.timestamp.type=LogAppendTime); visible is when a read_committed consumer received it (after the Kafka transaction committed). HDR histograms (hdrhistogram-go), every change recorded. The writer never waits for Plume: rows due each millisecond go as one transaction to a pool of connections. Before the runs the database writes back what earlier workloads left dirty (PostgreSQL: CHECKPOINT; MariaDB: dirty InnoDB pages down to 1%% of the buffer pool, at most 120 s; then sync), so the writer's commits do not wait on a previous backlog's I/O. The stall column says where the worst moment came from, in seconds into the run: when the change slowest to reach Kafka was committed (and its latency), when the writer fell furthest behind its schedule, and the writer's longest statement with when it began. A longest statement as long as the lag, at the same time, is the database holding commits; a lag without one is the writer's own process not running; a slowest append at another time is the capture path.")
	}
	if len(r.Snapshots) > 0 {
		p("")
		p("## 3. Snapshot")
		p("")
		p("| source | rows | workers | rows/s | seconds | CPU-µs/row | peak RSS MB | in-process rows/s | GC %% | alloc B/row | load start/end |")
		p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, sn := range r.Snapshots {
			p("| %s | %s | %d | **%s** | %.1f | %.1f | %.0f | %s | %s | %s | %.1f / %.1f |%s", sn.Source, num(float64(sn.Rows)), sn.Workers, num(sn.RowsSec), sn.Seconds, sn.CPUUsPerRow, sn.PeakRSSMB,
				orDash(sn.Profile != nil, num(sn.InProcRows)), orDash(sn.Profile != nil, fmt.Sprintf("%.1f", sn.GCShare*100)), orDash(sn.Profile != nil, num(sn.AllocPerRow)), sn.Load.Start, sn.Load.End, errNote(sn.Err))
		}
	}
	if len(r.E2E) > 0 {
		p("")
		p("## 4. End to end (source -> Kafka -> router -> sql target, one plume process)")
		p("")
		p("| source | target | backlog rows | events/s | CPU-µs/event | peak RSS MB | latency rate | achieved | commit->applied p50 / p99 / p99.9 ms | load start/end |")
		p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, e := range r.E2E {
			p("| %s | %s | %s | **%s** | %.1f | %.0f | %s/s | %s/s | %.1f / **%.1f** / %.1f | %.1f / %.1f |%s", e.Source, e.Target, num(float64(e.Rows)), num(e.EventsSec), e.CPUUsEvent, e.PeakRSSMB,
				num(float64(e.Rate)), num(e.Achieved), e.Latency.P50, e.Latency.P99, e.Latency.P999, e.Load.Start, e.Load.End, errNote(e.Err))
		}
		p("")
		p("Applied time is the target row's applied_at column (DEFAULT clock_timestamp() / CURRENT_TIMESTAMP(6)), set when the sql target inserts it. The http target's figures are in section 5 (route stage into a minimal receiver).")
	}
	if len(r.Routes) > 0 {
		p("")
		p("## 5. Router (Kafka -> router -> target, `plume run --stage route`)")
		p("")
		p("| source | events | bare consume events/s | bare consume CPU-µs/event | route, all filtered: events/s | CPU-µs/event | router overhead CPU-µs/event | peak RSS MB | http target events/s | CPU-µs/event | requests | peak RSS MB | load start/end |")
		p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, x := range r.Routes {
			p("| %s | %s | %s | %.2f | **%s** | %.2f | **%.2f** | %.0f | **%s** | %.2f | %d | %.0f | %.1f / %.1f |%s", x.Source, num(float64(x.Events)), num(x.BareEventsSec), x.BareCPUUsEvent,
				num(x.FilterEventsSec), x.FilterCPUUsEvent, x.OverheadUs, x.FilterPeakRSSMB, num(x.HTTPEventsSec), x.HTTPCPUUsEvent, x.HTTPRequests, x.HTTPPeakRSSMB, x.Load.Start, x.Load.End, errNote(x.Err))
		}
		p("")
		p("The backlog (100 B rows) is captured first; then each consumer reads the same records from the start. Bare consume: franz-go (read_committed, 1 MiB fetches, no decoding) in the benchmark process, CPU from getrusage. Route, all filtered: one route whose `when` (`table == \"nothing\" || number(after.id) < 0`) is evaluated for every event and is false, so the figure is consume + decode + evaluate + checkpoint, with no target I/O; events/s counts from process start (start-up included) to the consumer group's commit of the last offset. http target: batch mode, 500 events per request, 2 in flight, into a minimal receiver in the benchmark process that parses each batch.")
	}
	r.targetsMarkdown(p)
	var profs []string
	for _, d := range r.Drains {
		if d.Profile != nil {
			profs = append(profs, profileSection(fmt.Sprintf("drain %s %d B", d.Source, d.RowBytes), d.Profile))
		}
	}
	for _, sn := range r.Snapshots {
		if sn.Profile != nil {
			profs = append(profs, profileSection(fmt.Sprintf("snapshot %s %d workers", sn.Source, sn.Workers), sn.Profile))
		}
	}
	if len(profs) > 0 || len(r.ChildProfiles) > 0 {
		p("")
		p("## Profiles")
		p("")
		p("Files under bench/results/ (a run's profiles total a few MB). CPU: `go tool pprof -top FILE.cpu.pb.gz`; allocations over the run: `go tool pprof -sample_index=alloc_space -base FILE.allocs-base.pb.gz FILE.allocs.pb.gz`.")
		for _, s := range profs {
			p("%s", s)
		}
	}
	if len(r.ChildProfiles) > 0 {
		p("")
		p("### The plume binary's own profiles")
		p("")
		p("Workloads without an in-process profiled run (latency, end to end, route, targets) ran the binary with `--cpuprofile` and `--memprofile`: a CPU profile of its whole run and its allocations since start (no base needed: `go tool pprof -sample_index=alloc_space FILE.allocs.pb.gz`). Their figures include the profiler's cost, about 1%% of CPU. Files (add `.cpu.pb.gz` or `.allocs.pb.gz`):")
		p("")
		for _, f := range r.ChildProfiles {
			p("- `%s`", f)
		}
	}
	if len(r.Other) > 0 {
		p("")
		p("## Other measurements")
		p("")
		p("The same workloads measured again (BENCH_MERGE=1); the tables keep the measurement taken under the lower load average.")
		p("")
		for _, o := range r.Other {
			p("- %s", o)
		}
	}
	if len(r.Errors) > 0 {
		p("")
		p("## Errors")
		p("")
		for _, e := range r.Errors {
			p("- %s", e)
		}
	}
	return w.String()
}

func profileSection(title string, pr *ProfileResult) string {
	var w strings.Builder
	fmt.Fprintf(&w, "\n### %s\n\n", title)
	fmt.Fprintf(&w, "`%s`, `%s`; GC %.1f%% of CPU, %d GC cycles, %s allocated.\n\n", pr.CPUProfile, pr.AllocProfile, pr.GCShare*100, pr.GCCycles, mb(pr.AllocBytes))
	if pr.CPUTop != "" {
		fmt.Fprintf(&w, "CPU (top 12 by flat):\n\n```\n%s\n```\n\n", pr.CPUTop)
	}
	if pr.CPUTopCum != "" {
		fmt.Fprintf(&w, "CPU (top 12 by cumulative, Plume's call paths only):\n\n```\n%s\n```\n\n", pr.CPUTopCum)
	}
	if pr.AllocTop != "" {
		fmt.Fprintf(&w, "Allocated bytes (top 12 by flat):\n\n```\n%s\n```\n", pr.AllocTop)
	}
	return w.String()
}

func mb(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }

func ifs(c bool, s string) string {
	if c {
		return s
	}
	return ""
}

func orDash(c bool, s string) string {
	if c {
		return s
	}
	return "-"
}

func errMark(e string) string { return ifs(e != "", " (error)") }

func errNote(e string) string { return ifs(e != "", " "+firstLine(e)) }

func joinInts(v []int) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprint(x))
	}
	return strings.Join(s, " and ")
}

// serverVersions asks the servers for their versions.
func serverVersions(srcs []source) (pg, maria string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range srcs {
		switch s := s.(type) {
		case *pgSource:
			if c, err := pgx.Connect(ctx, s.pg.DSN("postgres")); err == nil {
				_ = c.QueryRow(ctx, "SHOW server_version").Scan(&pg)
				c.Close(context.Background())
			}
		case *mysqlSource:
			if d, err := sql.Open("mysql", s.m.DSN("")); err == nil {
				_ = d.QueryRowContext(ctx, "SELECT VERSION()").Scan(&maria)
				d.Close()
			}
		}
	}
	return pg, maria
}

// pairTable lists, per drain, the ratio of each measured binary run to the
// limit of its pair (the slower of the bare reader and the bare producer's
// run that followed it), and each run's start-up.
func pairTable(ds []*DrainResult) []string {
	var rows []string
	for _, d := range ds {
		var ratios, firsts []string
		for i, x := range d.Runs {
			if i < len(d.ProducerRuns) {
				if limit := minPositive(d.Reader.EventsSec, d.ProducerRuns[i]); limit > 0 {
					ratios = append(ratios, fmt.Sprintf("%.0f%%", 100*x.EventsSec/limit))
				}
			}
			if x.FirstSeconds > 0 {
				firsts = append(firsts, fmt.Sprintf("%.2f", x.FirstSeconds))
			}
		}
		if len(ratios) == 0 && len(firsts) == 0 {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %d B | %s | %s |", d.Source, d.RowBytes, orDash(len(ratios) > 0, strings.Join(ratios, " / ")), orDash(len(firsts) > 0, strings.Join(firsts, " / "))))
	}
	return rows
}
