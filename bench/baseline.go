package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Baseline is the memory of a plume process that has started but done no
// work (its broker is unreachable, so it retries): the floor under every
// workload's peak RSS. RssFile is the binary's file-backed pages (code and
// read-only data touched at start-up, package initialisers included):
// clean, shared and reclaimable; RssAnon is Plume's own heap and stacks.
type Baseline struct {
	PeakRSSMB float64 `json:"peak_rss_mb"`
	RssFileMB float64 `json:"rss_file_mb"`
	RssAnonMB float64 `json:"rss_anon_mb"`
	BinaryMB  float64 `json:"binary_mb"`
}

func measureBaseline(t *tb, bin string) Baseline {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "idle.yaml")
	y := fmt.Sprintf("name: idle\nstate_dir: %s\nsource: { type: postgres, dsn: \"postgres://x@127.0.0.1:1/x\", tables: [\"public.t\"] }\nkafka: { brokers: [\"127.0.0.1:1\"] }\n", filepath.Join(dir, "state"))
	if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	cmd := exec.Command(bin, "run", "-c", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(2 * time.Second) // start-up done; retrying the broker
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	var b Baseline
	b.PeakRSSMB = float64(procField(status, "VmHWM")) / 1024
	b.RssFileMB = float64(procField(status, "RssFile")) / 1024
	b.RssAnonMB = float64(procField(status, "RssAnon")) / 1024
	if st, err := os.Stat(bin); err == nil {
		b.BinaryMB = float64(st.Size()) / (1 << 20)
	}
	return b
}
