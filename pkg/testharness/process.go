package testharness

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// proc is a started child process whose output goes to a log file. It is
// the common base of servers and Proc.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // result of cmd.Wait, valid once done is closed
}

// startProc starts cmd with stdout/stderr appended to logPath (unless the
// caller set them), in its own process group, killed if this process dies.
func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	if cmd.Stderr == nil {
		cmd.Stderr = f
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Own process group: a terminal ^C reaches only the test binary, which
	// then shuts servers down in order. Pdeathsig: children die with us.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := spawn(cmd); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process and waits up to timeout for it to exit;
// then it kills the process tree and reports the timeout. Otherwise it returns
// the exit error.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
	}
	p.kill()
	return fmt.Errorf("%s did not exit within %v of %v; killed", filepath.Base(p.cmd.Path), timeout, sig)
}

// kill SIGKILLs the process, its process group and all its descendants, and
// waits until they are gone. Descendants matter: PostgreSQL backends run in
// their own sessions, and the shared memory they hold blocks a restart.
func (p *proc) kill() {
	pid := p.cmd.Process.Pid
	var kids []int
	if !p.exited() {
		_ = syscall.Kill(pid, syscall.SIGSTOP) // no new children while we collect them
		kids = procTable().descendants(pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	<-p.done
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !procTable().anyAlive(pid, kids) {
			return
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// procInfo is what kill needs from /proc/PID/stat.
type procInfo struct {
	ppid, pgrp int
	zombie     bool
}

type procs map[int]procInfo

// procTable reads every process's parent, group and state from /proc.
func procTable() procs {
	t := procs{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid pgrp ..."; comm may contain anything.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		t[pid] = procInfo{ppid: ppid, pgrp: pgrp, zombie: f[0] == "Z" || f[0] == "X"}
	}
	return t
}

// descendants returns the pids of all descendants of pid.
func (t procs) descendants(pid int) []int {
	children := map[int][]int{}
	for p, info := range t {
		children[info.ppid] = append(children[info.ppid], p)
	}
	var out []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, c := range children[queue[0]] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// anyAlive reports whether a live (not zombie) process is in group pgid or
// is one of pids.
func (t procs) anyAlive(pgid int, pids []int) bool {
	for _, info := range t {
		if info.pgrp == pgid && !info.zombie {
			return true
		}
	}
	for _, p := range pids {
		if info, ok := t[p]; ok && !info.zombie {
			return true
		}
	}
	return false
}

// Pdeathsig fires when the OS thread that forked the child exits, not when
// the process does. Go threads normally live forever, but one whose
// goroutine exits while locked (runtime.LockOSThread) is destroyed. So all
// children are forked from one goroutine that stays locked to its thread
// for the life of the process.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread outlives every child
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawner.reqs <- r
	return <-r.done
}

// logTail returns about the last n lines of the log file.
func (p *proc) logTail(n int) string { return fileTail(p.logPath, n) }

// fileTail returns about the last n lines of a file (reading at most 64 KiB).
func fileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Proc is a child process started by StartProcess or StartCommand, with
// stdout and stderr captured to LogPath. It is killed at t.Cleanup if still
// running, and its last log lines are logged if the test failed.
type Proc struct {
	p *proc
	// LogPath is the file receiving the process's stdout and stderr.
	LogPath string
}

var procSeq atomic.Int64

// StartProcess starts bin with args as a child of the test, with the
// environment of the test binary. See Proc.
func StartProcess(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartCommand(t, exec.Command(bin, args...))
}

// StartCommand starts a prepared command (set Env, Dir, Stdin as needed;
// Stdout and Stderr default to the log file). See Proc.
func StartCommand(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("%s-%d.log", filepath.Base(cmd.Path), procSeq.Add(1)))
	p, err := startProc(cmd, logPath)
	if err != nil {
		t.Fatalf("testharness: start %s: %v", cmd.Path, err)
	}
	pr := &Proc{p: p, LogPath: logPath}
	t.Cleanup(func() {
		if !p.exited() {
			p.kill()
		}
		if t.Failed() {
			t.Logf("testharness: last output of %s (pid %d):\n%s", filepath.Base(cmd.Path), pr.Pid(), p.logTail(50))
		}
	})
	return pr
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool { return p.p.exited() }

// Wait waits for the process to exit and returns its exit error (nil for
// exit status 0). It may be called any number of times.
func (p *Proc) Wait() error {
	<-p.p.done
	return p.p.err
}

// ExitCode returns the exit code, or -1 if the process is running or was
// killed by a signal.
func (p *Proc) ExitCode() int {
	if !p.p.exited() {
		return -1
	}
	return p.p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits up to 30s for the process to exit. It returns
// the exit error (nil if the process exited with status 0), or an error if
// it had to be killed.
func (p *Proc) Stop() error { return p.StopTimeout(30 * time.Second) }

// StopTimeout is Stop with a custom timeout.
func (p *Proc) StopTimeout(d time.Duration) error { return p.p.stop(syscall.SIGTERM, d) }

// Kill sends SIGKILL to the process (and its process group) and waits for it.
// It returns nil once the process is gone, whatever its exit status.
func (p *Proc) Kill() error {
	p.p.kill()
	return nil
}

// Output returns everything the process wrote so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// WaitOutput waits until the output contains s, the process exits, or d
// passes, and reports whether s was found.
func (p *Proc) WaitOutput(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if strings.Contains(p.Output(), s) {
			return true
		}
		if p.Exited() || time.Now().After(deadline) {
			return strings.Contains(p.Output(), s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
