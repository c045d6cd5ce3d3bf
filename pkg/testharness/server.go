package testharness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// startServer starts cmd logging to logPath and polls ready every 100ms until
// it succeeds, the process exits, or timeout passes. On failure the process
// is killed and the error includes the end of the log.
func startServer(name string, cmd *exec.Cmd, logPath string, timeout time.Duration, ready func(context.Context) error) (*proc, error) {
	appendLog(logPath, fmt.Sprintf("=== testharness %s: %s", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " ")))
	p, err := startProc(cmd, logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if p.exited() {
			return nil, fmt.Errorf("%s exited during startup (%v); last log lines of %s:\n%s", name, p.err, logPath, p.logTail(30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		lastErr = ready(ctx)
		cancel()
		if lastErr == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
	p.kill()
	return nil, fmt.Errorf("%s not ready after %v (last error: %v); last log lines of %s:\n%s", name, timeout, lastErr, logPath, p.logTail(30))
}

// appendLog appends a line to a log file, ignoring errors.
func appendLog(path, line string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// runLogged runs cmd to completion with its output appended to logPath; on
// failure the error includes the end of the log.
func runLogged(cmd *exec.Cmd, logPath string) error {
	appendLog(logPath, "=== testharness: "+strings.Join(cmd.Args, " "))
	p, err := startProc(cmd, logPath)
	if err != nil {
		return err
	}
	<-p.done
	if p.err != nil {
		return fmt.Errorf("%s: %v; last log lines of %s:\n%s", strings.Join(cmd.Args, " "), p.err, logPath, p.logTail(30))
	}
	return nil
}

// managed is what the shared and dedicated helpers need of a server.
type managed interface {
	Start() error // starts it if it is not running
	close()       // stops it for good and removes its files
	listenPort() int
}

// sharedServer is one server per test binary, started on first use.
type sharedServer[S managed] struct {
	once sync.Once
	s    S
	err  error
}

// get returns the shared server, starting it on first use and again if a
// test left it stopped. A server that cannot start skips the test, or
// fails it when CI=true.
func (sh *sharedServer[S]) get(t testing.TB, name string, start func() (S, error)) S {
	t.Helper()
	sh.once.Do(func() {
		began := time.Now()
		sh.s, sh.err = start()
		if sh.err == nil {
			t.Logf("testharness: %s started on port %d in %v", name, sh.s.listenPort(), time.Since(began).Round(time.Millisecond))
		}
	})
	if sh.err != nil {
		unavailable(t, name, sh.err)
	}
	if err := sh.s.Start(); err != nil {
		unavailable(t, name, err)
	}
	return sh.s
}

// dedicated starts a server for t alone and removes it at t.Cleanup.
func dedicated[S managed](t testing.TB, name string, start func() (S, error)) S {
	t.Helper()
	s, err := start()
	if err != nil {
		unavailable(t, name, err)
	}
	t.Cleanup(s.close)
	return s
}
