package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// TargetResult is one target workload: Plume delivering rows into a target,
// next to the raw limit of that target measured in the same run (a bare
// loader writing the same rows).
type TargetResult struct {
	Workload string  `json:"workload"` // e.g. "search-opensearch"
	Target   string  `json:"target"`   // the target type
	Rows     int64   `json:"rows"`
	Seconds  float64 `json:"seconds"`
	RowsSec  float64 `json:"rows_per_sec"`
	MBSec    float64 `json:"mb_per_sec"`
	// LimitName says what the limit is ("bare _bulk loader").
	LimitName    string  `json:"limit_name"`
	LimitRowsSec float64 `json:"limit_rows_per_sec"`
	Ratio        float64 `json:"ratio"` // RowsSec / LimitRowsSec
	// P50Ms and P99Ms are latency percentiles, when measured.
	P50Ms       float64            `json:"p50_ms,omitempty"`
	P99Ms       float64            `json:"p99_ms,omitempty"`
	PeakRSSMB   float64            `json:"peak_rss_mb"`
	CPUUsPerRow float64            `json:"cpu_us_per_row"`
	Extra       map[string]float64 `json:"extra,omitempty"` // "calls_per_1000_rows", "records_per_call", ...
	Notes       string             `json:"notes,omitempty"`
	Load        LoadAvg            `json:"load"`
	Err         string             `json:"error,omitempty"`
}

var (
	targetBenchMu sync.Mutex
	targetBenches = map[string]func(b *bench, t *tb) []*TargetResult{}
)

// registerTargetBench adds a target workload; name is its BENCH_WORKLOADS
// entry. Workload files call it from init.
func registerTargetBench(name string, f func(b *bench, t *tb) []*TargetResult) {
	targetBenchMu.Lock()
	defer targetBenchMu.Unlock()
	if _, dup := targetBenches[name]; dup {
		panic("target bench registered twice: " + name)
	}
	targetBenches[name] = f
}

// targetBenchNames lists the registered target workloads, sorted.
func targetBenchNames() []string {
	targetBenchMu.Lock()
	defer targetBenchMu.Unlock()
	var out []string
	for n := range targetBenches {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// runTargetBenches runs the selected target workloads, once per run (they
// bring their own rows; they do not depend on the source databases).
func (b *bench) runTargetBenches(step func(name string, f func(t *tb))) {
	for _, name := range targetBenchNames() {
		if !b.s.has(name) {
			continue
		}
		f := targetBenches[name]
		step("target-"+name, func(t *tb) {
			load := startLoad()
			for _, r := range f(b, t) {
				if r.Load.At == "" {
					r.Load = load
					r.Load.End = loadAvg()
				}
				if r.Ratio == 0 && r.LimitRowsSec > 0 {
					r.Ratio = r.RowsSec / r.LimitRowsSec
				}
				b.res.addTarget(r)
				logf("target %s: %s rows/s (%.1f MB/s), limit %s %s rows/s, ratio %.2f, peak RSS %.0f MB%s",
					r.Workload, num(r.RowsSec), r.MBSec, r.LimitName, num(r.LimitRowsSec), r.Ratio, r.PeakRSSMB, errNote(r.Err))
			}
		})
	}
}

func (r *Results) addTarget(x *TargetResult) {
	r.TargetRuns = keepBetter(r, r.TargetRuns, x, func(y *TargetResult) bool { return y.Workload == x.Workload },
		func(y *TargetResult) (LoadAvg, string, string) {
			return y.Load, y.Err, fmt.Sprintf("target %s: %s rows/s, ratio %.0f%%", y.Workload, num(y.RowsSec), y.Ratio*100)
		})
}

// targetsMarkdown renders the target workloads section.
func (r *Results) targetsMarkdown(p func(format string, args ...any)) {
	if len(r.TargetRuns) == 0 {
		return
	}
	p("")
	p("## Targets (Kafka -> router -> target)")
	p("")
	p("| workload | target | rows | rows/s | MB/s | limit | limit rows/s | ratio | p50 / p99 ms | peak RSS MB | CPU-µs/row | other | load start/end |")
	p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, x := range r.TargetRuns {
		var extra []string
		keys := make([]string, 0, len(x.Extra))
		for k := range x.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			extra = append(extra, fmt.Sprintf("%s %s", k, num(x.Extra[k])))
		}
		lat := ""
		if x.P50Ms > 0 || x.P99Ms > 0 {
			lat = fmt.Sprintf("%.1f / %.1f", x.P50Ms, x.P99Ms)
		}
		p("| %s | %s | %s | **%s** | %.1f | %s | %s | **%.0f%%** | %s | %.0f | %.1f | %s | %.1f / %.1f |%s", x.Workload, x.Target, num(float64(x.Rows)), num(x.RowsSec), x.MBSec,
			x.LimitName, num(x.LimitRowsSec), x.Ratio*100, lat, x.PeakRSSMB, x.CPUUsPerRow, strings.Join(extra, ", "), x.Load.Start, x.Load.End, errNote(x.Err))
	}
	for _, x := range r.TargetRuns {
		if x.Notes != "" {
			p("")
			p("%s: %s", x.Workload, x.Notes)
		}
	}
}
