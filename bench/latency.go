package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// LatencyResult is workload 2 at one rate: an open-loop writer, Plume
// streaming, latency from source commit to the Kafka append (the record's
// LogAppendTime) and to visibility (a read_committed consumer receives it).
type LatencyResult struct {
	Source    string      `json:"source"`
	Rate      int         `json:"target_rate"`
	Achieved  float64     `json:"achieved_rate"`
	Seconds   float64     `json:"seconds"`
	Changes   int64       `json:"changes"`
	Seen      int64       `json:"seen"`
	Append    Percentiles `json:"commit_to_append_ms"`
	Visible   Percentiles `json:"commit_to_visible_ms"`
	PlumeCPU  float64     `json:"plume_cpu_cores"` // CPU seconds per second during the phase
	PeakRSSMB float64     `json:"peak_rss_mb"`
	WriterLag float64     `json:"writer_max_lag_ms"` // how far the writer fell behind its schedule
	// Where a stall came from: when (seconds into the run) the writer fell
	// furthest behind, its longest statement and when that began, and the
	// commit time of the change slowest to reach Kafka. A long statement
	// at the time of the lag is the database holding commits; a lag without
	// one is the writer's own process not running.
	WriterLagAt     float64 `json:"writer_max_lag_at_s"`
	WriterStmt      float64 `json:"writer_max_statement_ms"`
	WriterStmtAt    float64 `json:"writer_max_statement_at_s"`
	SlowestAppendAt float64 `json:"slowest_append_at_s"`
	Load            LoadAvg `json:"load_avg"`
	Err             string  `json:"error,omitempty"`
}

// Percentiles of a latency distribution, in milliseconds.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
	N    int64   `json:"n"`
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 120_000_000, 3) } // 1 µs .. 120 s

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	ms := func(v int64) float64 { return float64(v) / 1000 }
	return Percentiles{P50: ms(h.ValueAtQuantile(50)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), N: h.TotalCount()}
}

// stamps holds, per id, when it was committed at the source, appended in
// Kafka and received by the consumer (Unix ns; 0 = not yet).
type stamps struct {
	base   int64
	commit []atomic.Int64
	append []atomic.Int64
	recv   []atomic.Int64
	seen   atomic.Int64
}

func newStamps(base, n int64) *stamps {
	return &stamps{base: base, commit: make([]atomic.Int64, n), append: make([]atomic.Int64, n), recv: make([]atomic.Int64, n)}
}

func (s *stamps) idx(id int64) (int64, bool) {
	i := id - s.base
	return i, i >= 0 && i < int64(len(s.commit))
}

// openLoop writes ids [lo, lo+total) at rate per second without ever waiting
// for Plume or for its own previous statements: every millisecond the rows
// that are due go, as one source transaction, to a pool of connections. If
// the pool falls behind, due rows accumulate into larger transactions; the
// schedule never slips. It returns what writerStats says, and the first
// error.
func openLoop(ctx context.Context, w writer, conns int, lo, total int64, rate int, st *stamps, limit time.Duration) (writerStats, error) {
	type batch struct {
		lo, hi int64
		due    time.Time
	}
	ch := make(chan batch, 1<<16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	var ws writerStats
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range ch {
				began := time.Now()
				lag := began.Sub(b.due)
				if err := w.Insert(ctx, i, b.lo, b.hi); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				now := time.Now()
				for id := b.lo; id <= b.hi; id++ {
					if j, ok := st.idx(id); ok {
						st.commit[j].Store(now.UnixNano())
					}
				}
				mu.Lock()
				if now.After(ws.last) {
					ws.last = now
				}
				if lag > ws.maxLag {
					ws.maxLag, ws.maxLagAt = lag, began.Sub(start)
				}
				if d := now.Sub(began); d > ws.maxStmt {
					ws.maxStmt, ws.maxStmtAt = d, began.Sub(start)
				}
				mu.Unlock()
			}
		}()
	}
	maxBatch := int64(max(rate/200, 1)) // 5 ms of rows
	var issued int64
	tick := time.NewTicker(time.Millisecond)
	for issued < total && time.Since(start) < limit && ctx.Err() == nil {
		<-tick.C
		due := min(int64(float64(rate)*time.Since(start).Seconds()), total)
		for issued < due {
			hi := min(issued+maxBatch, due)
			b := batch{lo: lo + issued, hi: lo + hi - 1, due: start.Add(time.Duration(float64(issued) / float64(rate) * float64(time.Second)))}
			select {
			case ch <- b:
				issued = hi
			default: // pool saturated: the rows wait for the next tick, in a larger batch
				due = issued
			}
		}
	}
	tick.Stop()
	close(ch)
	wg.Wait()
	return ws, firstErr
}

// writerStats is what an open-loop writer saw: the time its last commit
// returned, its largest lag of a statement's start behind the schedule and
// its longest statement, each with when (since the writer started).
type writerStats struct {
	last               time.Time
	maxLag, maxLagAt   time.Duration
	maxStmt, maxStmtAt time.Duration
}

// consume reads topic (read_committed) from the start and stamps each
// record's append time and receive time by the id in its key ("id=N").
func consume(ctx context.Context, brokers []string, topic string, st func() *stamps) (stop func(), err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now().UnixNano()
			s := st()
			fs.EachRecord(func(r *kgo.Record) {
				k := string(r.Key)
				if !strings.HasPrefix(k, "id=") || s == nil {
					return
				}
				id, err := strconv.ParseInt(k[3:], 10, 64)
				if err != nil {
					return
				}
				if j, ok := s.idx(id); ok && s.recv[j].Load() == 0 {
					s.append[j].Store(r.Timestamp.UnixNano())
					s.recv[j].Store(now)
					s.seen.Add(1)
				}
			})
		}
	}()
	return func() { cancel(); <-done; cl.Close() }, nil
}

func (b *bench) latency(t *tb, src source) []*LatencyResult {
	ctx := context.Background()
	db := src.NewDB(t)
	table := "lat"
	must(t, src.CreateTable(ctx, db, table, false))
	spec := pipeSpec{Name: uniq(t, "x"), Dir: t.TempDir(), Src: src, DB: db, Table: table, Brokers: b.brokers}
	cfg := spec.write(t)
	topic := dataTopic(cfg, src, db, table)
	must(t, b.adm.createTopic(ctx, topic))

	settled, err := src.Settle(ctx, db)
	must(t, err)
	logf("latency %s: server settled in %.1fs", src.Kind(), settled.Seconds())

	c := b.profiledChild(t, cfg, "capture", "latency-"+src.Kind())
	defer c.stop()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, err := b.ready(ctx, src, db, cfg, nil)
		must(t, err)
		if ok {
			break
		}
		must(t, c.exited())
		if time.Now().After(deadline) {
			t.Fatalf("plume not streaming after 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	var cur atomic.Pointer[stamps]
	stop, err := consume(ctx, b.brokers, topic, cur.Load)
	must(t, err)
	defer stop()
	w, err := src.Writer(ctx, db, table, 100, b.s.WriterConns)
	must(t, err)
	defer w.Close()

	// Warm-up, not measured: the first changes pay for topic metadata,
	// connections and the consumer's first fetch.
	warm := newStamps(1, 500)
	cur.Store(warm)
	_, err = openLoop(ctx, w, b.s.WriterConns, 1, 500, 500, warm, 30*time.Second)
	must(t, err)
	for wait := time.Now().Add(60 * time.Second); warm.seen.Load() < 500 && time.Now().Before(wait); {
		must(t, c.exited())
		time.Sleep(20 * time.Millisecond)
	}
	var out []*LatencyResult
	next := int64(501)
	for _, rate := range b.s.Rates {
		r := &LatencyResult{Source: src.Kind(), Rate: rate, Load: startLoad()}
		out = append(out, r)
		total := int64(float64(rate) * b.s.RateDuration.Seconds())
		st := newStamps(next, total)
		cur.Store(st)
		logf("latency %s: %d changes/s for %v", src.Kind(), rate, b.s.RateDuration)
		cpu0 := c.stat().CPU
		start := time.Now()
		ws, err := openLoop(ctx, w, b.s.WriterConns, next, total, rate, st, b.s.RateDuration+30*time.Second)
		r.Seconds = ws.last.Sub(start).Seconds()
		r.WriterLag = float64(ws.maxLag.Microseconds()) / 1000
		r.WriterLagAt, r.WriterStmtAt = ws.maxLagAt.Seconds(), ws.maxStmtAt.Seconds()
		r.WriterStmt = float64(ws.maxStmt.Microseconds()) / 1000
		written := int64(0)
		for i := range st.commit {
			if st.commit[i].Load() != 0 {
				written++
			}
		}
		r.Changes = written
		if r.Seconds > 0 {
			r.Achieved = float64(written) / r.Seconds
		}
		// Wait (bounded) until every committed change was seen.
		for wait := time.Now().Add(60 * time.Second); st.seen.Load() < written && time.Now().Before(wait); {
			if e := c.exited(); e != nil {
				err = e
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		ps := c.stat()
		r.PlumeCPU = (ps.CPU - cpu0).Seconds() / time.Since(start).Seconds()
		r.PeakRSSMB = float64(ps.PeakKB) / 1024
		r.Seen = st.seen.Load()
		ha, hv := newHist(), newHist()
		var slowest int64
		for i := range st.commit {
			cm, ap, rc := st.commit[i].Load(), st.append[i].Load(), st.recv[i].Load()
			if cm == 0 || rc == 0 {
				continue
			}
			if ap-cm > slowest {
				slowest = ap - cm
				r.SlowestAppendAt = time.Unix(0, cm).Sub(start).Seconds()
			}
			// LogAppendTime has millisecond resolution: an append in the
			// commit's millisecond can read as up to 1 ms before it.
			_ = ha.RecordValue(max((ap-cm)/1000, 1))
			_ = hv.RecordValue(max((rc-cm)/1000, 1))
		}
		r.Append, r.Visible = percentiles(ha), percentiles(hv)
		r.Load.End = loadAvg()
		if err != nil {
			r.Err = err.Error()
		} else if r.Seen < written {
			r.Err = fmt.Sprintf("%d of %d changes not seen in Kafka within 60 s", written-r.Seen, written)
		}
		logf("latency %s: %d/s achieved %.0f/s, append p50 %.1f p99 %.1f p99.9 %.1f ms; visible p99 %.1f ms",
			src.Kind(), rate, r.Achieved, r.Append.P50, r.Append.P99, r.Append.P999, r.Visible.P99)
		cur.Store(nil)
		next += total
		if err != nil {
			break
		}
	}
	return out
}
