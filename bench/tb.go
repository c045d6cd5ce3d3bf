package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// tb adapts the shared test harness (which takes a testing.TB) to a plain
// program: one tb per workload, whose Cleanup functions run when the workload
// ends. Fatalf and Skipf abort the workload (see runStep), not the program.
type tb struct {
	testing.TB // nil: only the methods below are used by the harness

	name    string
	mu      sync.Mutex
	cleanup []func()
	verbose bool
}

// abort is the panic value of Fatalf/Skipf.
type abort struct{ msg string }

func newTB(name string) *tb { return &tb{name: name, verbose: os.Getenv("BENCH_VERBOSE") != ""} }

func (t *tb) Helper()      {}
func (t *tb) Name() string { return t.name }
func (t *tb) Logf(format string, args ...any) {
	if t.verbose || strings.HasPrefix(format, "testharness:") {
		logf("%s: "+format, append([]any{t.name}, args...)...)
	}
}
func (t *tb) Log(args ...any) { t.Logf("%s", fmt.Sprint(args...)) }
func (t *tb) Errorf(format string, args ...any) {
	logf("%s: ERROR: "+format, append([]any{t.name}, args...)...)
}
func (t *tb) Fatalf(format string, args ...any) { panic(abort{fmt.Sprintf(format, args...)}) }
func (t *tb) Fatal(args ...any)                 { panic(abort{fmt.Sprint(args...)}) }
func (t *tb) Skipf(format string, args ...any) {
	panic(abort{"skipped: " + fmt.Sprintf(format, args...)})
}
func (t *tb) FailNow()      { panic(abort{"FailNow"}) }
func (t *tb) Failed() bool  { return false }
func (t *tb) Skipped() bool { return false }
func (t *tb) TempDir() string {
	d, err := os.MkdirTemp("", "plume-bench-")
	if err != nil {
		t.Fatalf("tempdir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
func (t *tb) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanup = append(t.cleanup, f)
}

// done runs the cleanups, last registered first.
func (t *tb) done() {
	t.mu.Lock()
	fs := t.cleanup
	t.cleanup = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// runStep runs f with a fresh tb, turning a harness abort (or any panic)
// into an error, and always runs the tb's cleanups.
func runStep(name string, f func(t *tb)) (err error) {
	t := newTB(name)
	defer t.done()
	defer func() {
		if r := recover(); r != nil {
			if a, ok := r.(abort); ok {
				err = fmt.Errorf("%s", a.msg)
				return
			}
			err = fmt.Errorf("panic: %v", r)
			logf("%s: panic: %v", name, r)
		}
	}()
	f(t)
	return nil
}

var logMu sync.Mutex

func logf(format string, args ...any) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
