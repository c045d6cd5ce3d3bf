package testharness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
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

// procServer is the lifecycle shared by the servers that run as one child
// process (Kafka, MariaDB, OpenSearch, versitygw): start it (again) with the
// same ports and data, stop it cleanly, crash it, restart it, and remove its
// files for good at close. A server embeds it and sets name, dir and launch.
type procServer struct {
	name string
	// launch starts the process and waits until it serves (startServer).
	launch func() (*proc, error)

	mu     sync.Mutex
	dir    string // the server's temporary directory, removed at close
	proc   *proc
	closed bool
}

// Start starts the server (same ports and data as before) and waits until
// it serves. No-op if it is running.
func (s *procServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

func (s *procServer) startLocked() error {
	if s.closed {
		return fmt.Errorf("testharness: %s server was closed", s.name)
	}
	if s.proc != nil && !s.proc.exited() {
		return nil
	}
	p, err := s.launch()
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}

// Stop shuts the server down cleanly (SIGTERM). No-op if it is not running.
func (s *procServer) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *procServer) stopLocked() error {
	if s.proc == nil || s.proc.exited() {
		return nil
	}
	err := s.proc.stop(syscall.SIGTERM, 60*time.Second)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // a JVM exits 143 on SIGTERM
	}
	return err
}

// Kill crashes the server with SIGKILL; the next Start recovers its data
// (Kafka logs, InnoDB crash recovery, the OpenSearch translog).
func (s *procServer) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.kill()
	}
	return nil
}

// Restart stops and starts the server with the same ports and data,
// failing t on error.
func (s *procServer) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		t.Fatalf("testharness: stop %s: %v", s.name, err)
	}
	if err := s.startLocked(); err != nil {
		t.Fatalf("testharness: restart %s: %v", s.name, err)
	}
}

// Running reports whether the server process is running.
func (s *procServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

// Pid returns the server process's id, or 0 if it is not running (the
// benchmarks read the broker's CPU time from /proc).
func (s *procServer) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

func (s *procServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	_ = s.stopLocked()
	s.closed = true
	removeTemp(s.dir)
}
