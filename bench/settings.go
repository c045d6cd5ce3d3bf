package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// Settings are the run's sizes, read from BENCH_* environment variables
// (BENCH_QUICK=1 selects the smoke-run defaults). Every value used is
// recorded in the results.
type Settings struct {
	Quick         bool          `json:"quick"`
	Rows          int           `json:"rows"`               // BENCH_ROWS: backlog changes per drain
	DrainRuns     int           `json:"drain_runs"`         // BENCH_DRAIN_RUNS: plume binary runs per backlog (median reported)
	DrainWarmup   int           `json:"drain_warmup_runs"`  // BENCH_DRAIN_WARMUP: unmeasured binary + bare producer pairs before a drain's measured runs
	RowSizes      []int         `json:"row_sizes"`          // BENCH_ROW_SIZES: payload bytes, e.g. 100,1000
	TxnRows       int           `json:"txn_rows"`           // BENCH_TXN_ROWS: rows per source transaction in the backlog
	SnapshotRows  int           `json:"snapshot_rows"`      // BENCH_SNAPSHOT_ROWS
	SnapWorkers   []int         `json:"snapshot_workers"`   // BENCH_SNAPSHOT_WORKERS
	Rates         []int         `json:"rates"`              // BENCH_RATES: changes/s of the latency writer
	RateDuration  time.Duration `json:"rate_duration"`      // BENCH_RATE_DURATION per rate
	E2ERows       int           `json:"e2e_rows"`           // BENCH_E2E_ROWS backlog for end to end
	E2ERate       int           `json:"e2e_rate"`           // BENCH_E2E_RATE changes/s for end-to-end latency
	Sources       []string      `json:"sources"`            // BENCH_SOURCES: mysql,postgres
	Workloads     []string      `json:"workloads"`          // BENCH_WORKLOADS: drain,latency,snapshot,e2e and the target workloads (bench/targets.go)
	DrainTimeout  time.Duration `json:"drain_timeout"`      // BENCH_TIMEOUT: bound of every wait
	WriterConns   int           `json:"writer_conns"`       // BENCH_WRITERS: connections of the open-loop writer
	ProfileInProc bool          `json:"profile_in_process"` // BENCH_PROFILE=0 skips the in-process profiled runs
	ProfileFor    time.Duration `json:"profile_seconds"`    // BENCH_PROFILE_SECONDS: bound of an in-process profiled run
	Warmup        int           `json:"warmup_records"`     // BENCH_WARMUP: at most this many records through the broker before the first workload (0: none)
}

func loadSettings() Settings {
	q := env("BENCH_QUICK", "") == "1"
	s := Settings{
		Quick:         q,
		Rows:          envInt("BENCH_ROWS", pick(q, 50_000, 1_000_000)),
		DrainRuns:     max(1, envInt("BENCH_DRAIN_RUNS", pick(q, 1, 5))),
		DrainWarmup:   max(0, envInt("BENCH_DRAIN_WARMUP", 2)),
		RowSizes:      envInts("BENCH_ROW_SIZES", []int{100, 1000}),
		TxnRows:       envInt("BENCH_TXN_ROWS", 100),
		SnapshotRows:  envInt("BENCH_SNAPSHOT_ROWS", pick(q, 200_000, 5_000_000)),
		SnapWorkers:   envInts("BENCH_SNAPSHOT_WORKERS", []int{1, 2, 4}),
		Rates:         envInts("BENCH_RATES", []int{1_000, 10_000, 50_000}),
		RateDuration:  envDur("BENCH_RATE_DURATION", pick(q, 5*time.Second, 20*time.Second)),
		E2ERows:       envInt("BENCH_E2E_ROWS", pick(q, 20_000, 200_000)),
		E2ERate:       envInt("BENCH_E2E_RATE", 2_000),
		Sources:       envList("BENCH_SOURCES", []string{"mysql", "postgres"}),
		Workloads:     envList("BENCH_WORKLOADS", append([]string{"drain", "latency", "snapshot", "e2e", "route"}, targetBenchNames()...)),
		DrainTimeout:  envDur("BENCH_TIMEOUT", pick(q, 2*time.Minute, 6*time.Minute)),
		WriterConns:   envInt("BENCH_WRITERS", 4),
		ProfileInProc: env("BENCH_PROFILE", "1") != "0",
		ProfileFor:    envDur("BENCH_PROFILE_SECONDS", pick(q, 15*time.Second, 30*time.Second)),
		Warmup:        envCount("BENCH_WARMUP", 20_000_000),
	}
	if q {
		s.RowSizes = envInts("BENCH_ROW_SIZES", []int{100})
		s.SnapWorkers = envInts("BENCH_SNAPSHOT_WORKERS", []int{2})
		s.Rates = envInts("BENCH_RATES", []int{1_000, 10_000})
	}
	return s
}

func (s Settings) has(workload string) bool { return contains(s.Workloads, workload) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func pick[T any](quick bool, q, full T) T {
	if quick {
		return q
	}
	return full
}

func env(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	v, err := strconv.Atoi(strings.ReplaceAll(env(k, ""), "_", ""))
	if err != nil || v <= 0 {
		return def
	}
	return v
}

// envCount is envInt that takes 0 for zero (to turn something off).
func envCount(k string, def int) int {
	if strings.TrimSpace(env(k, "")) == "0" {
		return 0
	}
	return envInt(k, def)
}

func envInts(k string, def []int) []int {
	var out []int
	for _, f := range envList(k, nil) {
		if v, err := strconv.Atoi(strings.ReplaceAll(f, "_", "")); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return def
	}
	return out
}

func envList(k string, def []string) []string {
	v := env(k, "")
	if v == "" {
		return def
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envDur(k string, def time.Duration) time.Duration {
	d, err := time.ParseDuration(env(k, ""))
	if err != nil || d <= 0 {
		return def
	}
	return d
}
