package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	pruntime "github.com/plumecdc/plume/pkg/runtime"
	"github.com/plumecdc/plume/pkg/testharness"

	// The connectors the plume binary has.
	_ "github.com/plumecdc/plume/connectors/mysql"
	_ "github.com/plumecdc/plume/connectors/postgres"
	_ "github.com/plumecdc/plume/connectors/sql"
)

// pipeSpec describes a benchmark pipeline; write renders it as a pipeline
// file, the same way a user would configure Plume.
type pipeSpec struct {
	Name     string
	Dir      string // the file and state_dir live here
	Src      source
	DB       string
	Table    string
	Snapshot bool
	Workers  int
	Brokers  []string
	Extra    string // routes and targets
}

func (p pipeSpec) write(t *tb) *config.Pipeline {
	dsn, ref := p.Src.SourceYAML(p.DB, p.Table)
	snap := "never"
	if p.Snapshot {
		snap = "initial"
	}
	workers := max(p.Workers, 1)
	y := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: warn }
source:
  type: %s
  dsn: %q
  tables: [%q]
  snapshot: %s
  snapshot_workers: %d
  heartbeat_interval: 0s
kafka:
  brokers: [%q]
  topic_prefix: %s
  topics:
    configs: { "message.timestamp.type": "LogAppendTime" }
%s`, p.Name, filepath.Join(p.Dir, p.Name+"-state"), p.Src.Kind(), dsn, ref, snap, workers, p.Brokers[0], p.Name, p.Extra)
	file := filepath.Join(p.Dir, p.Name+".yaml")
	if err := os.WriteFile(file, []byte(y), 0o644); err != nil {
		t.Fatalf("write pipeline: %v", err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("pipeline %s: %v\n%s", file, err, y)
	}
	return cfg
}

func dataTopic(cfg *config.Pipeline, s source, db, table string) string {
	return cfg.TableTopic(s.TopicSchema(db), table)
}

// ---- the plume binary as a child process ----

// child is `plume run` started through the harness, sampled in /proc.
type child struct {
	p     *testharness.Proc
	start time.Time
}

func startChild(t *tb, bin string, cfg *config.Pipeline, stage string, extra ...string) *child {
	c := &child{start: time.Now()}
	c.p = testharness.StartProcess(t, bin, append([]string{"run", "-c", cfg.File, "--stage", stage}, extra...)...)
	return c
}

// profiledChild starts the plume binary like startChild and, unless
// profiling is off (BENCH_PROFILE=0), has it write a CPU profile of its
// whole run and its allocations (`plume run --cpuprofile --memprofile`,
// written when it stops) to the run's profile directory as
// <name>.cpu.pb.gz and <name>.allocs.pb.gz. It is for the workloads
// without an in-process profiled run (latency, end to end, route,
// targets); their figures then include the profiler's cost (Go samples
// at 100 Hz, about 1% of CPU).
func (b *bench) profiledChild(t *tb, cfg *config.Pipeline, stage, name string) *child {
	if !b.s.ProfileInProc {
		return startChild(t, b.bin, cfg, stage)
	}
	if f := relResults(filepath.Join(b.profDir, name)); !contains(b.res.ChildProfiles, f) {
		b.res.ChildProfiles = append(b.res.ChildProfiles, f) // a merged rerun overwrites the files
	}
	return startChild(t, b.bin, cfg, stage,
		"--cpuprofile", filepath.Join(b.profDir, name+".cpu.pb.gz"),
		"--memprofile", filepath.Join(b.profDir, name+".allocs.pb.gz"))
}

// procStat is a process's CPU time and peak RSS.
type procStat struct {
	CPU    time.Duration
	PeakKB int64
}

func (c *child) stat() procStat {
	return readProcStat(c.p.Pid())
}

func readProcStat(pid int) procStat {
	var s procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		_, s.CPU, _ = statCPU(string(b))
	}
	s.PeakKB = procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM")
	return s
}

// stop ends the child with SIGTERM and returns an error with its output if
// it had died on its own.
func (c *child) stop() error {
	if c.p.Exited() {
		return fmt.Errorf("plume exited early (code %d):\n%s", c.p.ExitCode(), tailLines(c.p.Output(), 30))
	}
	_ = c.p.StopTimeout(60 * time.Second)
	return nil
}

func (c *child) exited() error {
	if c.p.Exited() {
		return fmt.Errorf("plume exited (code %d):\n%s", c.p.ExitCode(), tailLines(c.p.Output(), 30))
	}
	return nil
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ---- plume in this process, profiled ----

// inproc is a pipeline run in this process through pkg/runtime, exactly as
// `plume run` assembles it.
type inproc struct {
	P      *pruntime.Pipeline
	cancel context.CancelFunc
	done   chan error
	// gcPercent is the setting to restore at stop (-1: none).
	gcPercent int
}

func startInproc(cfg *config.Pipeline, stage pruntime.Stage) (*inproc, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("BENCH_VERBOSE") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	p, err := pruntime.New(cfg, stage, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ip := &inproc{P: p, cancel: cancel, done: make(chan error, 1), gcPercent: -1}
	// The collector runs as in `plume run` (pruntime.ApplyGCDefault) while
	// the pipeline runs in this process; the bench's own work does not.
	if _, set := os.LookupEnv("GOGC"); !set {
		ip.gcPercent = debug.SetGCPercent(pruntime.DefaultGCPercent)
	}
	go func() { ip.done <- p.Run(ctx) }()
	return ip, nil
}

func (ip *inproc) stop() error {
	ip.cancel()
	if ip.gcPercent >= 0 {
		defer debug.SetGCPercent(ip.gcPercent)
	}
	var err error
	select {
	case err = <-ip.done:
	case <-time.After(60 * time.Second):
		err = fmt.Errorf("in-process pipeline did not stop within 60s")
	}
	ip.P.Close()
	return err
}

// failed returns the pipeline's error if it stopped on its own.
func (ip *inproc) failed() error {
	select {
	case err := <-ip.done:
		ip.done <- err
		if err == nil {
			err = fmt.Errorf("pipeline stopped")
		}
		return err
	default:
		return nil
	}
}

// profile is a CPU profile plus allocation and GC figures of this process
// over one measured interval.
type profile struct {
	dir, name string
	cpuFile   *os.File
	before    []metrics.Sample
	ru        syscall.Rusage
}

var metricNames = []string{
	"/cpu/classes/gc/total:cpu-seconds",
	"/cpu/classes/total:cpu-seconds",
	"/cpu/classes/idle:cpu-seconds",
	"/gc/heap/allocs:bytes",
	"/gc/heap/allocs:objects",
	"/gc/cycles/total:gc-cycles",
}

// ProfileResult is what a profiled interval measured.
type ProfileResult struct {
	CPUProfile   string  `json:"cpu_profile"`
	AllocProfile string  `json:"alloc_profile"`
	GCShare      float64 `json:"gc_share"` // GC CPU / CPU used by the process's Go code (total - idle)
	GCSeconds    float64 `json:"gc_cpu_seconds"`
	UsedSeconds  float64 `json:"go_cpu_seconds"`        // /cpu/classes/total - /cpu/classes/idle
	TotalSeconds float64 `json:"available_cpu_seconds"` // /cpu/classes/total (GOMAXPROCS x wall time)
	GCCycles     int64   `json:"gc_cycles"`
	AllocBytes   int64   `json:"alloc_bytes"`
	AllocObjects int64   `json:"alloc_objects"`
	ProcessCPU   float64 `json:"process_cpu_seconds"`
	CPUTop       string  `json:"cpu_top,omitempty"`
	CPUTopCum    string  `json:"cpu_top_cum,omitempty"`
	AllocTop     string  `json:"alloc_top,omitempty"`
}

func startProfile(dir, name string) (*profile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pr := &profile{dir: dir, name: name}
	// Collect what the workload's earlier runs left (the bare producer's
	// buffers, in this process), so that the interval's GC work and
	// allocation figures are the profiled pipeline's own.
	runtime.GC()
	if err := writeHeap(filepath.Join(dir, name+".allocs-base.pb.gz")); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name+".cpu.pb.gz"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	pr.cpuFile = f
	pr.before = readMetrics()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &pr.ru)
	return pr, nil
}

// profileInproc runs cfg's capture stage in this process, profiled, until
// it has captured n events or ProfileFor has passed, and returns the
// profile (files named name), the events captured and the time it took.
func (b *bench) profileInproc(t *tb, cfg *config.Pipeline, name string, n int64) (ProfileResult, int64, time.Duration) {
	pr, err := startProfile(b.profDir, name)
	must(t, err)
	start := time.Now()
	ip, err := startInproc(cfg, pruntime.StageCapture)
	if err != nil {
		pr.stop()
		must(t, err)
	}
	for ip.P.CaptureStats.Events.Load() < n && time.Since(start) < b.s.ProfileFor && ip.failed() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	el := time.Since(start)
	prof := pr.stop()
	evs := ip.P.CaptureStats.Events.Load()
	_ = ip.stop()
	return prof, evs, el
}

func (pr *profile) stop() ProfileResult {
	after := readMetrics()
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	pprof.StopCPUProfile()
	pr.cpuFile.Close()
	allocs := filepath.Join(pr.dir, pr.name+".allocs.pb.gz")
	_ = writeHeap(allocs)
	d := func(i int) float64 { return metricValue(after[i]) - metricValue(pr.before[i]) }
	gc, total, idle := d(0), d(1), d(2)
	res := ProfileResult{
		CPUProfile:   relResults(pr.cpuFile.Name()),
		AllocProfile: relResults(allocs),
		AllocBytes:   int64(d(3)),
		AllocObjects: int64(d(4)),
		GCCycles:     int64(d(5)),
		ProcessCPU:   tvSec(ru.Utime) + tvSec(ru.Stime) - tvSec(pr.ru.Utime) - tvSec(pr.ru.Stime),
	}
	res.GCSeconds, res.UsedSeconds, res.TotalSeconds = gc, total-idle, total
	if used := total - idle; used > 0 {
		res.GCShare = gc / used
	}
	res.CPUTop = pprofTop(pr.cpuFile.Name(), "", "")
	res.CPUTopCum = pprofTop(pr.cpuFile.Name(), "", "", "-cum", "-focus=plumecdc")
	res.AllocTop = pprofTop(allocs, filepath.Join(pr.dir, pr.name+".allocs-base.pb.gz"), "alloc_space")
	return res
}

func tvSec(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func writeHeap(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

func readMetrics() []metrics.Sample {
	s := make([]metrics.Sample, len(metricNames))
	for i, n := range metricNames {
		s[i].Name = n
	}
	metrics.Read(s)
	return s
}

func metricValue(s metrics.Sample) float64 {
	switch s.Value.Kind() {
	case metrics.KindFloat64:
		return s.Value.Float64()
	case metrics.KindUint64:
		return float64(s.Value.Uint64())
	}
	return 0
}
