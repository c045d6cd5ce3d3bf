package testharness

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// tempPrefix names every temp dir this package creates, so that dirs left by
// a test binary that died can be found and removed.
const tempPrefix = "plume-th-"

// ownerFile inside each temp dir holds the pid of the test binary owning it.
const ownerFile = ".owner-pid"

// registry holds everything the process must undo at exit.
var registry struct {
	mu      sync.Mutex
	closers []func()
}

// onExit registers fn to run from Shutdown (LIFO).
func onExit(fn func()) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.closers = append(registry.closers, fn)
}

// Main wraps testing.M: it runs the tests, then stops every server this
// process started and removes the harness temp dirs. Call it from TestMain.
// It also removes temp dirs left by earlier test binaries that died, and on
// SIGINT/SIGTERM it cleans up before exiting.
func Main(m *testing.M) {
	sweepStale()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "testharness: got %v, stopping servers\n", sig)
		Shutdown()
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sigs)
	Shutdown()
	os.Exit(code)
}

// Shutdown stops all servers started by this process and removes the harness
// temp dirs. Main calls it; it is exported for test binaries that cannot use
// Main. Servers requested after Shutdown are not tracked any more.
func Shutdown() {
	registry.mu.Lock()
	closers := registry.closers
	registry.closers = nil
	registry.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
}

// unavailable skips t (or fails it when CI=true) because a server could not
// be provided.
func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("testharness: %s unavailable: %v", what, err)
	}
	t.Skipf("testharness: %s unavailable (CI=true would fail the test): %v", what, err)
}

// mkTemp creates a temp dir for kind, marks it with our pid and registers its
// removal at exit.
func mkTemp(kind string) (string, error) {
	dir, err := os.MkdirTemp("", tempPrefix+kind+"-")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	onExit(func() { removeTemp(dir) })
	return dir, nil
}

// removeTemp removes a harness temp dir, unless PLUME_KEEP_TEMP is set: then
// it is kept for inspection (and unmarked so no later sweep removes it).
func removeTemp(dir string) {
	if os.Getenv("PLUME_KEEP_TEMP") != "" {
		if os.Remove(filepath.Join(dir, ownerFile)) == nil {
			fmt.Fprintf(os.Stderr, "testharness: keeping %s\n", dir)
		}
		return
	}
	os.RemoveAll(dir)
}

// sweepStale removes harness temp dirs whose owning process is gone.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			os.RemoveAll(dir)
		}
	}
}
