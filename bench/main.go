// Command bench runs Plume's standard benchmark workloads against real
// MariaDB, PostgreSQL and Apache Kafka, started through the same harness
// the tests use (pkg/testharness), and writes results/<date>-<machine>.md
// and .json. See README.md; `make bench` runs it through run.sh.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

// resultsDir is where results and profiles are written.
var resultsDir = "results"

type bench struct {
	s       Settings
	bin     string
	brokers []string
	adm     *admin
	kafka   *testharness.KafkaServer // its CPU time is read per drain run (broker.go)
	profDir string
	res     *Results
	base    string // results file path without extension
}

func main() { os.Exit(run()) }

func run() int {
	if f := env("BENCH_RENDER", ""); f != "" {
		return render(f, env("BENCH_MERGE_FROM", ""))
	}
	s := loadSettings()
	resultsDir = env("BENCH_RESULTS", resultsDir)
	if s.Quick {
		resultsDir = filepath.Join(resultsDir, "quick")
	}
	m := describeMachine()
	started := time.Now()
	stamp := started.UTC().Format("2006-01-02")
	name := stamp + "-" + machineSlug(m)
	b := &bench{s: s, profDir: filepath.Join(resultsDir, "profiles", name), base: filepath.Join(resultsDir, name),
		res: &Results{Date: started.UTC().Format(time.RFC3339), Machine: m, Settings: s}}
	if err := os.MkdirAll(b.profDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if env("BENCH_MERGE", "") == "1" {
		// Rerun some workloads into the run's existing results.
		if old, err := os.ReadFile(b.base + ".json"); err == nil {
			// A fresh value: decoding into b.res would reuse the backing
			// arrays of s's slices.
			var prev Results
			if err := json.Unmarshal(old, &prev); err != nil {
				fmt.Fprintln(os.Stderr, "bench: BENCH_MERGE:", err)
				return 1
			}
			b.res = &prev
			b.res.Reruns = append(b.res.Reruns, fmt.Sprintf("%s: %s for %s (settings %+v)", started.UTC().Format(time.RFC3339), strings.Join(s.Workloads, ","), strings.Join(s.Sources, ","), s))
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		logf("got %v: stopping servers", sig)
		testharness.Shutdown()
		os.Exit(1)
	}()
	defer testharness.Shutdown()
	logf("bench: %s, %d cores, %.0f GiB, %s; settings %+v", m.CPUModel, m.Cores, m.MemoryGiB, m.GoVersion, s)

	// Servers and the plume binary, for the whole run.
	var srcs []source
	root := newTB("bench")
	defer root.done()
	err := runStep("servers", func(_ *tb) {
		k := testharness.Kafka(root)
		b.kafka, b.brokers = k, k.Brokers()
		b.bin = buildPlume(root)
		b.res.Baseline = measureBaseline(root, b.bin)
		logf("plume idle: peak RSS %.0f MB (file-backed %.0f MB, anonymous %.0f MB), binary %.0f MB",
			b.res.Baseline.PeakRSSMB, b.res.Baseline.RssFileMB, b.res.Baseline.RssAnonMB, b.res.Baseline.BinaryMB)
		for _, kind := range s.Sources {
			switch kind {
			case "postgres":
				srcs = append(srcs, &pgSource{pg: testharness.Postgres(root)})
			case "mysql":
				srcs = append(srcs, &mysqlSource{m: testharness.MariaDB(root)})
			case "none": // target workloads only
			default:
				root.Fatalf("unknown source %q (BENCH_SOURCES: mysql,postgres or none)", kind)
			}
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: servers:", err)
		return 1
	}
	b.res.Machine.PG, b.res.Machine.MariaDB = serverVersions(srcs)
	b.adm, err = newAdmin(b.brokers)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer b.adm.close()

	step := func(name string, f func(t *tb)) {
		start := time.Now()
		if err := runStep(name, f); err != nil {
			logf("%s: FAILED: %v", name, err)
			b.res.Errors = append(b.res.Errors, name+": "+firstLine(err.Error()))
		} else {
			// A rerun that succeeded (BENCH_MERGE=1) clears the step's
			// earlier error.
			kept := b.res.Errors[:0]
			for _, e := range b.res.Errors {
				if !strings.HasPrefix(e, name+": ") {
					kept = append(kept, e)
				}
			}
			b.res.Errors = kept
		}
		logf("%s: %v", name, time.Since(start).Round(time.Second))
		b.write()
	}
	if s.Warmup > 0 {
		step("warmup", func(_ *tb) {
			w := b.warmBroker(int64(s.Warmup))
			if b.res.Warmup == nil {
				b.res.Warmup = &w
			} else if n := len(b.res.Reruns); n > 0 && len(w.Rounds) > 0 {
				// A rerun merged into an earlier file: the header keeps
				// the first run's warm-up; the rerun's line notes its own.
				b.res.Reruns[n-1] += fmt.Sprintf("; the broker was warmed up again first (%d records, last round %.0f records/s)", w.Records, w.Rounds[len(w.Rounds)-1])
			}
			logf("broker warm-up: %d records, rounds %.0f records/s, steady %v, consumed %.0f/s, %.0f s %s", w.Records, w.Rounds, w.Steady, w.ConsumeSec, w.TotalSeconds, w.Err)
		})
	}
	for _, src := range srcs {
		if s.has("drain") {
			for _, size := range s.RowSizes {
				step(fmt.Sprintf("drain-%s-%d", src.Kind(), size), func(t *tb) {
					la := startLoad()
					r := b.drain(t, src, size)
					r.Load = la
					r.Load.End = loadAvg()
					b.res.addDrain(r)
					logf("drain %s %dB: %.0f events/s (%.1f MB/s), %.1f CPU-µs/event, peak RSS %.0f MB; reader %.0f/s, producer %.0f/s, ratio %.2f",
						r.Source, size, r.EventsSec, r.MBSec, r.CPUUsPerEvt, r.PeakRSSMB, r.Reader.EventsSec, r.Producer.EventsSec, r.Ratio)
				})
			}
		}
		if s.has("latency") {
			step("latency-"+src.Kind(), func(t *tb) {
				for _, r := range b.latency(t, src) {
					b.res.addLatency(r)
				}
			})
		}
		if s.has("snapshot") {
			step("snapshot-"+src.Kind(), func(t *tb) {
				b.snapshot(t, src, func(r *SnapshotResult) { b.res.addSnapshot(r); b.write() })
			})
		}
		if s.has("e2e") {
			step("e2e-"+src.Kind(), func(t *tb) {
				r := &E2EResult{Load: startLoad()}
				b.res.addE2E(r)
				defer func() { r.Load.End = loadAvg() }()
				b.e2e(t, src, r)
			})
		}
		if s.has("route") {
			step("route-"+src.Kind(), func(t *tb) {
				r := &RouteResult{Load: startLoad()}
				b.res.addRoute(r)
				defer func() { r.Load.End = loadAvg() }()
				b.route(t, src, r)
			})
		}
	}
	b.runTargetBenches(step)
	if len(b.res.Reruns) == 0 {
		b.res.Finished = time.Now().UTC().Format(time.RFC3339)
		b.res.Minutes = time.Since(started).Minutes()
	}
	b.write()
	logf("results: %s.md and .json (%.1f min)", b.base, b.res.Minutes)
	return 0
}

// render rewrites the .md of a results .json (after a change to the report),
// first merging the workloads of another results file into it if from is set.
func render(file, from string) int {
	var r Results
	err := readResults(file, &r)
	if err == nil && from != "" {
		var o Results
		if err = readResults(from, &o); err == nil {
			for _, d := range o.Drains {
				r.addDrain(d)
			}
			for _, l := range o.Latency {
				r.addLatency(l)
			}
			for _, s := range o.Snapshots {
				r.addSnapshot(s)
			}
			for _, e := range o.E2E {
				r.addE2E(e)
			}
			for _, x := range o.Routes {
				r.addRoute(x)
			}
			for _, x := range o.TargetRuns {
				r.addTarget(x)
			}
			r.Reruns = append(r.Reruns, o.Reruns...)
			r.Errors = append(r.Errors, o.Errors...)
		}
	}
	if err == nil {
		r.checkTargets()
		var j []byte
		if j, err = json.MarshalIndent(&r, "", "  "); err == nil {
			err = os.WriteFile(file, append(j, '\n'), 0o644)
		}
	}
	if err == nil {
		err = os.WriteFile(strings.TrimSuffix(file, ".json")+".md", []byte(r.markdown()), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: render:", err)
		return 1
	}
	return 0
}

func readResults(file string, r *Results) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, r)
}

// buildPlume builds cmd/plume as it ships (the Makefile's `build` target
// and deploy/docker/Dockerfile: CGO_ENABLED=0, -trimpath, -ldflags "-s -w")
// and installs it by copying, as an image or package does. The copy matters
// for peak RSS: the Go linker writes its output through a shared mapping,
// and on this kernel (6.x, ext4 large folios) such a file sits in the page
// cache as folios of up to 2 MB that a page fault maps whole, so the first
// run of a just-linked binary shows 8-18 MB more file-backed RSS, varying
// from link to link, than the same binary read from disk or copied (4 KB
// pages, 64 KB fault-around). See bench/README.md, "Peak RSS".
func buildPlume(t *tb) string {
	wd, err := os.Getwd()
	must(t, err)
	root := wd
	if _, err := os.Stat(filepath.Join(wd, "..", "cmd", "plume")); err == nil {
		root = filepath.Join(wd, "..")
	}
	dir := t.TempDir()
	built := filepath.Join(dir, "plume.link")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", built, "./cmd/plume")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build plume: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "plume")
	must(t, installCopy(built, bin))
	must(t, os.Remove(built))
	return bin
}

// installCopy copies a file with read and write calls, mode 0755.
func installCopy(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(struct{ io.Writer }{out}, in); err != nil { // no copy_file_range: a plain copy
		out.Close()
		return err
	}
	return out.Close()
}

var seq atomic.Int64

// uniq returns a short pipeline/slot/topic-safe name for t.
func uniq(t *tb, suffix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	base := b.String()
	if len(base) > 30 {
		base = base[:30]
	}
	return fmt.Sprintf("%s_%s%d", base, suffix, seq.Add(1))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func machineSlug(m Machine) string {
	if v := env("BENCH_MACHINE", ""); v != "" {
		return v
	}
	model := strings.ToLower(m.CPUModel)
	var words []string
	for _, w := range strings.FieldsFunc(model, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) {
		switch w {
		case "r", "tm", "cpu", "processor", "core", "with", "radeon", "graphics", "intel", "amd":
			continue
		}
		if strings.HasSuffix(w, "ghz") || len(words) >= 3 {
			continue
		}
		words = append(words, w)
	}
	if len(words) == 0 {
		words = []string{"unknown"}
	}
	return fmt.Sprintf("%s-%dc-%.0fg", strings.Join(words, "-"), m.Cores, m.MemoryGiB)
}
