package main

import (
	"context"
	"fmt"
	"time"
)

// SnapshotResult is workload 3: the initial snapshot of one table with a
// given number of workers, run by the plume binary.
type SnapshotResult struct {
	Source      string         `json:"source"`
	Rows        int64          `json:"rows"`
	Workers     int            `json:"workers"`
	Seconds     float64        `json:"seconds"` // process start -> last row committed
	RowsSec     float64        `json:"rows_per_sec"`
	CPUUsPerRow float64        `json:"cpu_us_per_row"`
	PeakRSSMB   float64        `json:"peak_rss_mb"`
	InProcRows  float64        `json:"in_process_rows_per_sec,omitempty"`
	AllocPerRow float64        `json:"alloc_bytes_per_row,omitempty"`
	GCShare     float64        `json:"gc_share,omitempty"`
	Profile     *ProfileResult `json:"profile,omitempty"`
	Load        LoadAvg        `json:"load_avg"`
	Err         string         `json:"error,omitempty"`
}

func (b *bench) snapshot(t *tb, src source, record func(*SnapshotResult)) {
	ctx := context.Background()
	n := int64(b.s.SnapshotRows)
	db := src.NewDB(t)
	table := "snap"
	must(t, src.CreateTable(ctx, db, table, false))
	logf("snapshot %s: loading %d rows", src.Kind(), n)
	t0 := time.Now()
	must(t, src.Load(ctx, db, table, 1, n, 100, 250_000))
	logf("snapshot %s: loaded in %v", src.Kind(), time.Since(t0).Round(time.Second))

	for _, workers := range b.s.SnapWorkers {
		r := &SnapshotResult{Source: src.Kind(), Rows: n, Workers: workers, Load: startLoad()}
		err := runStep(fmt.Sprintf("snapshot-%s-%d", src.Kind(), workers), func(t *tb) {
			spec := pipeSpec{Name: uniq(t, "x"), Dir: t.TempDir(), Src: src, DB: db, Table: table, Snapshot: true, Workers: workers, Brokers: b.brokers}
			cfg := spec.write(t)
			topic := dataTopic(cfg, src, db, table)
			must(t, b.adm.createTopic(ctx, topic))
			logf("snapshot %s: %d rows, %d workers (plume binary)", src.Kind(), n, workers)
			w := b.adm.watch(ctx, topic, cfg.CheckpointTopic())
			c := startChild(t, b.bin, cfg, "capture")
			var st procStat
			end, got, err := w.waitEvents(ctx, n, b.s.DrainTimeout, func() error { st = c.stat(); return c.exited() })
			if s := c.stat(); s.CPU > 0 {
				st = s
			}
			_ = c.stop()
			must(t, err)
			d := end.Sub(c.start)
			r.Seconds, r.RowsSec = d.Seconds(), float64(got)/d.Seconds()
			r.CPUUsPerRow = float64(st.CPU.Microseconds()) / float64(got)
			r.PeakRSSMB = float64(st.PeakKB) / 1024
		})
		if err == nil && b.s.ProfileInProc && workers == b.s.SnapWorkers[len(b.s.SnapWorkers)/2] {
			err = runStep(fmt.Sprintf("snapshot-%s-%d-profile", src.Kind(), workers), func(t *tb) {
				spec := pipeSpec{Name: uniq(t, "p"), Dir: t.TempDir(), Src: src, DB: db, Table: table, Snapshot: true, Workers: workers, Brokers: b.brokers}
				cfg := spec.write(t)
				must(t, b.adm.createTopic(ctx, dataTopic(cfg, src, db, table)))
				logf("snapshot %s: %d workers, in-process profiled run", src.Kind(), workers)
				prof, evs, el := b.profileInproc(t, cfg, fmt.Sprintf("snapshot-%s-%d", src.Kind(), workers), n)
				r.Profile = &prof
				r.InProcRows = float64(evs) / el.Seconds()
				if evs > 0 {
					r.AllocPerRow = float64(prof.AllocBytes) / float64(evs)
				}
				r.GCShare = prof.GCShare
			})
		}
		r.Load.End = loadAvg()
		if err != nil {
			r.Err = err.Error()
		}
		logf("snapshot %s: %d workers: %.0f rows/s (%s)", src.Kind(), workers, r.RowsSec, r.Err)
		record(r)
	}
}
