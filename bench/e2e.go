package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// E2EResult is workload 4: source -> Kafka -> router -> sql target, in one
// plume process (stage all). Throughput is a backlog drained into the target
// table; latency is source commit -> row applied in the target (its
// applied_at column defaults to the insert time) under an open-loop writer.
type E2EResult struct {
	Source     string      `json:"source"`
	Target     string      `json:"target"`
	Rows       int64       `json:"rows"`
	Seconds    float64     `json:"seconds"`
	EventsSec  float64     `json:"events_per_sec"`
	CPUUsEvent float64     `json:"cpu_us_per_event"`
	PeakRSSMB  float64     `json:"peak_rss_mb"`
	Rate       int         `json:"latency_rate"`
	Achieved   float64     `json:"latency_achieved_rate"`
	Latency    Percentiles `json:"commit_to_applied_ms"`
	Load       LoadAvg     `json:"load_avg"`
	Err        string      `json:"error,omitempty"`
}

func (b *bench) e2e(t *tb, src source, r *E2EResult) {
	ctx := context.Background()
	n := int64(b.s.E2ERows)
	r.Source, r.Target, r.Rows, r.Rate = src.Kind(), "sql ("+src.Kind()+")", n, b.s.E2ERate
	db, tdb := src.NewDB(t), src.NewDB(t)
	table := "e2e"
	must(t, src.CreateTable(ctx, db, table, false))
	must(t, src.CreateTable(ctx, tdb, "sink", true))
	extra := fmt.Sprintf(`routes:
  - name: all
    to: [sink]
targets:
  sink: { type: sql, dsn: %q, table: sink, key: [id] }
`, src.TargetDSN(tdb))
	spec := pipeSpec{Name: uniq(t, "x"), Dir: t.TempDir(), Src: src, DB: db, Table: table, Brokers: b.brokers, Extra: extra}
	cfg := spec.write(t)
	must(t, b.adm.createTopic(ctx, dataTopic(cfg, src, db, table)))
	must(t, b.prepare(ctx, t, src, db, cfg))

	logf("e2e %s: loading %d rows", src.Kind(), n)
	must(t, src.Load(ctx, db, table, 1, n, 100, b.s.TxnRows))
	logf("e2e %s: plume (capture + router + sql target) draining", src.Kind())
	c := b.profiledChild(t, cfg, "all", "e2e-"+src.Kind())
	defer c.stop()
	var st procStat
	var got int64
	var end time.Time
	for deadline := time.Now().Add(b.s.DrainTimeout); ; {
		var err error
		got, err = src.Count(ctx, tdb, "sink")
		must(t, err)
		st = c.stat()
		if got >= n {
			end = time.Now()
			break
		}
		must(t, c.exited())
		if time.Now().After(deadline) {
			t.Fatalf("e2e: %d of %d rows in the target after %v", got, n, b.s.DrainTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d := end.Sub(c.start)
	r.Seconds, r.EventsSec = d.Seconds(), float64(got)/d.Seconds()
	r.CPUUsEvent = float64(st.CPU.Microseconds()) / float64(got)
	r.PeakRSSMB = float64(st.PeakKB) / 1024

	// Latency at a fixed rate.
	total := int64(float64(b.s.E2ERate) * b.s.RateDuration.Seconds())
	stm := newStamps(n+1, total)
	w, err := src.Writer(ctx, db, table, 100, b.s.WriterConns)
	must(t, err)
	defer w.Close()
	logf("e2e %s: %d changes/s for %v", src.Kind(), b.s.E2ERate, b.s.RateDuration)
	start := time.Now()
	ws, err := openLoop(ctx, w, b.s.WriterConns, n+1, total, b.s.E2ERate, stm, b.s.RateDuration+30*time.Second)
	last := ws.last
	must(t, err)
	r.Achieved = float64(total) / last.Sub(start).Seconds()
	for deadline := time.Now().Add(60 * time.Second); ; {
		got, err = src.Count(ctx, tdb, "sink")
		must(t, err)
		if got >= n+total {
			break
		}
		must(t, c.exited())
		if time.Now().After(deadline) {
			r.Err = fmt.Sprintf("latency phase: %d of %d rows applied after 60 s", got-n, total)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	applied, err := appliedAt(ctx, src, tdb, n)
	must(t, err)
	h := newHist()
	for id, at := range applied {
		if j, ok := stm.idx(id); ok {
			if cm := stm.commit[j].Load(); cm != 0 {
				_ = h.RecordValue(max((at-cm)/1000, 1))
			}
		}
	}
	r.Latency = percentiles(h)
	logf("e2e %s: drain %.0f events/s; at %d/s commit->applied p50 %.1f p99 %.1f ms", src.Kind(), r.EventsSec, b.s.E2ERate, r.Latency.P50, r.Latency.P99)
}

// appliedAt returns the target rows' applied_at (Unix ns) by id, for ids > after.
func appliedAt(ctx context.Context, src source, db string, after int64) (map[int64]int64, error) {
	out := map[int64]int64{}
	switch s := src.(type) {
	case *pgSource:
		c, err := pgx.Connect(ctx, s.pg.DSN(db))
		if err != nil {
			return nil, err
		}
		defer c.Close(context.Background())
		rows, err := c.Query(ctx, `SELECT id, applied_at FROM sink WHERE id > $1`, after)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var at time.Time
			if err := rows.Scan(&id, &at); err != nil {
				return nil, err
			}
			out[id] = at.UnixNano()
		}
		return out, rows.Err()
	case *mysqlSource:
		d, err := sql.Open("mysql", s.m.DSN(db))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		conn, err := d.Conn(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		// The sql target writes in UTC (time_zone '+00:00').
		if _, err := conn.ExecContext(ctx, "SET time_zone = '+00:00'"); err != nil {
			return nil, err
		}
		rows, err := conn.QueryContext(ctx, "SELECT id, CAST(UNIX_TIMESTAMP(applied_at) * 1000000 AS SIGNED) FROM sink WHERE id > ?", after)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var id, us int64
			if err := rows.Scan(&id, &us); err != nil {
				return nil, err
			}
			out[id] = us * 1000
		}
		return out, rows.Err()
	}
	return nil, fmt.Errorf("unknown source")
}
