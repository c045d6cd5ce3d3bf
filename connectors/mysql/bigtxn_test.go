package mysql

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// countEmitter counts changes without keeping them.
type countEmitter struct {
	src        *Source
	n, commit  atomic.Int64
	lastTxRows atomic.Int64
	open       int64
	badIndex   atomic.Int64
}

func (e *countEmitter) Emit(ctx context.Context, c *event.Change) error {
	if c.Index != e.open {
		e.badIndex.Add(1)
	}
	e.open++
	e.n.Add(1)
	return nil
}

func (e *countEmitter) Commit(ctx context.Context, cp []byte) error {
	e.lastTxRows.Store(e.open)
	e.open = 0
	e.commit.Add(1)
	e.src.Ack(cp)
	return nil
}

func vmHWM() string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") || strings.HasPrefix(l, "VmRSS:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "?"
}

func TestLargeTransactionBoundedMemory(t *testing.T) {
	const rows = 200000
	const rowBytes = 500
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE big (id int primary key, pad varchar(600))")
	src := newTestSource(t, testConfig(t, m, db))
	em := &countEmitter{src: src}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, nil, em) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for em.commit.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no initial commit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	start := time.Now()
	m.Exec(t, db, fmt.Sprintf("INSERT INTO big SELECT seq, REPEAT('x', %d) FROM seq_1_to_%d", rowBytes, rows))
	inserted := time.Since(start)

	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()
	deadline = time.Now().Add(90 * time.Second)
	for em.lastTxRows.Load() != rows {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %d of %d rows emitted", em.n.Load(), rows)
		}
		select {
		case err := <-done:
			t.Fatalf("Run: %v", err)
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	elapsed := time.Since(start)
	if em.badIndex.Load() != 0 {
		t.Errorf("%d changes with a wrong Index", em.badIndex.Load())
	}
	total := float64(rows*rowBytes) / (1 << 20)
	peakMB := float64(peak.Load()) / (1 << 20)
	t.Logf("%d rows (%.0f MiB of row data) in one transaction: insert %v, streamed in %v; peak Go heap in use %.1f MiB (baseline %.1f MiB); process %s",
		rows, total, inserted.Round(time.Millisecond), elapsed.Round(time.Millisecond), peakMB, float64(base.HeapInuse)/(1<<20), vmHWM())
	if peakMB > total/2 {
		t.Errorf("peak heap %.1f MiB is not bounded (row data %.0f MiB)", peakMB, total)
	}
}
