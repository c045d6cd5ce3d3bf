package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// BrokerLoad is the broker's CPU use during one measured run, in cores
// (CPU seconds per second of the run): all its threads, and its JIT
// compiler threads alone.
//
// The broker shares the machine's two cores with Plume, so what it spends
// is not available to the run being measured. Most of it is the run's own
// work (requests), but a JVM also compiles code in the background for
// minutes after it starts and whenever a new code path gets hot: a drain
// right after the warm-up measured 0.38 cores of JIT compilation in the
// broker, the bare producer's runs at the end of the same workload 0.08.
// Recording it per run shows which runs were measured next to a busy
// compiler.
type BrokerLoad struct {
	Cores    float64 `json:"cores"`
	JITCores float64 `json:"jit_cores"`
}

// brokerCPU is a reading of the broker process's CPU time.
type brokerCPU struct {
	ok         bool
	at         time.Time
	total, jit time.Duration
}

// brokerSample reads the broker's CPU time from /proc, per thread so that
// the JIT compiler threads (HotSpot names them "C1 CompilerThreadN" and
// "C2 CompilerThreadN") can be told apart. ok is false if the broker is not
// running or /proc cannot be read (not Linux).
func (b *bench) brokerSample() brokerCPU {
	s := brokerCPU{at: time.Now()}
	if b.kafka == nil {
		return s
	}
	pid := b.kafka.Pid()
	if pid == 0 {
		return s
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return s
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err != nil {
			continue // the thread ended
		}
		name, d, ok := statCPU(string(stat))
		if !ok {
			continue
		}
		s.total += d
		if strings.HasPrefix(name, "C1 Compiler") || strings.HasPrefix(name, "C2 Compiler") {
			s.jit += d
		}
	}
	s.ok = true
	return s
}

// statCPU parses a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat line:
// the process's or thread's name and its user + system CPU time. The name
// is between the first '(' and the last ')' (it may contain spaces and
// parentheses).
func statCPU(stat string) (string, time.Duration, bool) {
	lo, hi := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if lo < 0 || hi < lo {
		return "", 0, false
	}
	f := strings.Fields(stat[hi+1:])
	if len(f) < 13 {
		return "", 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // utime: field 14 of the line
	st, err2 := strconv.ParseInt(f[12], 10, 64) // stime: field 15
	if err1 != nil || err2 != nil {
		return "", 0, false
	}
	return stat[lo+1 : hi], time.Duration(ut+st) * time.Second / 100, true // in USER_HZ ticks
}

// since is the broker's load between an earlier reading and s; nil if
// either reading failed. Threads that ended in between are not counted,
// so it is a lower bound (the broker's threads live as long as it does).
func (s brokerCPU) since(prev brokerCPU) *BrokerLoad {
	d := s.at.Sub(prev.at).Seconds()
	if !s.ok || !prev.ok || d <= 0 {
		return nil
	}
	return &BrokerLoad{
		Cores:    max(0, (s.total-prev.total).Seconds()/d),
		JITCores: max(0, (s.jit-prev.jit).Seconds()/d),
	}
}
