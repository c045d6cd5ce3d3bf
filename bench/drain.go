package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	pruntime "github.com/plumecdc/plume/pkg/runtime"
)

// DrainResult is workload 1: a backlog of changes written while Plume is
// stopped, then captured into Kafka.
type DrainResult struct {
	Source         string         `json:"source"`
	RowBytes       int            `json:"row_payload_bytes"`
	Events         int64          `json:"events"`
	TxnRows        int            `json:"rows_per_source_txn"`
	LoadSeconds    float64        `json:"load_seconds"`
	Runs           []DrainRun     `json:"runs"`    // the plume binary's runs, in order; the figures are the median run's
	Seconds        float64        `json:"seconds"` // plume process start -> last event committed
	EventsSec      float64        `json:"events_per_sec"`
	MBSec          float64        `json:"mb_per_sec"` // record bytes (key+value+headers) per second
	RecordBytes    float64        `json:"avg_record_bytes"`
	CPUUsPerEvt    float64        `json:"cpu_us_per_event"` // plume process CPU / events
	ProcessCPU     float64        `json:"process_cpu_seconds"`
	PeakRSSMB      float64        `json:"peak_rss_mb"` // the highest of the runs
	InProcEvtSec   float64        `json:"in_process_events_per_sec,omitempty"`
	AllocPerEvt    float64        `json:"alloc_bytes_per_event,omitempty"`
	AllocObjEvt    float64        `json:"alloc_objects_per_event,omitempty"`
	GCShare        float64        `json:"gc_share,omitempty"`
	Profile        *ProfileResult `json:"profile,omitempty"`
	Reader         RawResult      `json:"raw_reader"`
	Producer       RawResult      `json:"raw_producer"`                  // the median run
	ProducerRuns   []float64      `json:"raw_producer_runs,omitempty"`   // every run, records/s
	ProducerBroker []BrokerLoad   `json:"raw_producer_broker,omitempty"` // the broker's CPU during each
	WarmupRuns     []DrainRun     `json:"warmup_runs,omitempty"`         // the binary's unmeasured runs (DrainWarmup)
	WarmupProducer []RawRun       `json:"warmup_raw_producer,omitempty"` // and the bare producer's
	Limit          float64        `json:"raw_limit_events_per_sec"`
	Ratio          float64        `json:"ratio_to_limit"`
	Load           LoadAvg        `json:"load_avg"`
	Err            string         `json:"error,omitempty"`
}

// DrainRun is one run of the plume binary over the whole backlog.
type DrainRun struct {
	Seconds     float64     `json:"seconds"`
	EventsSec   float64     `json:"events_per_sec"`
	CPUSeconds  float64     `json:"process_cpu_seconds"`
	CPUUsPerEvt float64     `json:"cpu_us_per_event"`
	PeakRSSMB   float64     `json:"peak_rss_mb"`
	Broker      *BrokerLoad `json:"broker,omitempty"` // the broker's CPU during the run
	// FirstSeconds is the time from starting the process to its first
	// committed event, seen to within 50 ms.
	FirstSeconds float64 `json:"first_commit_seconds,omitempty"`
}

// RawRun is one unmeasured run of the bare producer.
type RawRun struct {
	EventsSec float64     `json:"events_per_sec"`
	Broker    *BrokerLoad `json:"broker,omitempty"`
}

// LoadAvg is the machine's 1-minute load average around a workload.
type LoadAvg struct {
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	At    string  `json:"measured_at"`
}

func startLoad() LoadAvg {
	return LoadAvg{Start: loadAvg(), At: time.Now().UTC().Format(time.RFC3339)}
}

func (b *bench) drain(t *tb, src source, size int) *DrainResult {
	ctx := context.Background()
	n := int64(b.s.Rows)
	res := &DrainResult{Source: src.Kind(), RowBytes: size, Events: n, TxnRows: b.s.TxnRows}
	db := src.NewDB(t)
	table := fmt.Sprintf("drain%d", size)
	must(t, src.CreateTable(ctx, db, table, false))

	// Pipelines over the same backlog: X1..Xk run one after another as the
	// plume binary (DrainWarmup unmeasured runs, then DrainRuns measured:
	// the figures, CPU and RSS; the median run is reported, every run is
	// listed), P in this process (profiles, GC, allocations).
	specP := pipeSpec{Name: uniq(t, "p"), Dir: t.TempDir(), Src: src, DB: db, Table: table, Brokers: b.brokers}
	cfgP := specP.write(t)
	cfgXs := make([]*config.Pipeline, b.s.DrainWarmup+b.s.DrainRuns)
	for i := range cfgXs {
		specX := specP
		specX.Name = uniq(t, "x")
		cfgXs[i] = specX.write(t)
	}
	for _, cfg := range append([]*config.Pipeline{cfgP}, cfgXs...) {
		must(t, b.prepare(ctx, t, src, db, cfg))
		must(t, b.adm.createTopic(ctx, dataTopic(cfg, src, db, table)))
	}
	topicX := dataTopic(cfgXs[0], src, db, table)

	// The raw readers start where Plume does: before the backlog.
	rawSlot := uniq(t, "raw")
	var binlogStart mysql.Position
	switch s := src.(type) {
	case *pgSource:
		must(t, pgCreateSlot(ctx, s.pg, db, rawSlot))
	case *mysqlSource:
		var err error
		binlogStart, err = binlogPos(ctx, s.m)
		must(t, err)
	}

	logf("drain %s %dB: loading %d rows (%d per transaction)", src.Kind(), size, n, b.s.TxnRows)
	t0 := time.Now()
	must(t, src.Load(ctx, db, table, 1, n, size, b.s.TxnRows))
	res.LoadSeconds = time.Since(t0).Seconds()

	// In process, profiled: once, after the first run of the binary and
	// before the first bare producer's. Run after the producers (which run
	// in this process), the same pipeline allocated more per event, all of
	// it in franz-go's request and zstd output buffers (MariaDB 100 B: 601
	// against 517 bytes; PostgreSQL 1 KB: 2,286 against 1,743), and its GC
	// share rose to 9.7%.
	inProc := func() {
		if !b.s.ProfileInProc {
			return
		}
		logf("drain %s %dB: in-process profiled run", src.Kind(), size)
		prof, evs, el := b.profileInproc(t, cfgP, fmt.Sprintf("drain-%s-%d", src.Kind(), size), n)
		res.Profile = &prof
		res.InProcEvtSec = float64(evs) / el.Seconds()
		if evs > 0 {
			res.AllocPerEvt = float64(prof.AllocBytes) / float64(evs)
			res.AllocObjEvt = float64(prof.AllocObjects) / float64(evs)
		}
		res.GCShare = prof.GCShare
	}

	// The plume binary drains the backlog, and after each of its runs the
	// bare producer writes the same number of Plume's records (sampled from
	// the first run). The two alternate so that they meet the broker in the
	// same state, and the first DrainWarmup pairs are not measured: the
	// broker's JIT compiler keeps recompiling its produce and transaction
	// paths for a while after it first sees Plume's request mix. Measured
	// one block after the other and without these runs, the binary's runs
	// came first, next to 0.15-0.44 cores of JIT compilation in the broker,
	// and the producer's last, next to 0.08 (see BrokerLoad).
	var sample []*kgo.Record
	producing := true
	for i, cfgX := range cfgXs {
		warm := i < b.s.DrainWarmup
		what := fmt.Sprintf("run %d of %d", i-b.s.DrainWarmup+1, b.s.DrainRuns)
		if warm {
			what = fmt.Sprintf("warm-up run %d of %d, not measured", i+1, b.s.DrainWarmup)
		}
		logf("drain %s %dB: plume binary draining (%s)", src.Kind(), size, what)
		w := b.adm.watch(ctx, dataTopic(cfgX, src, db, table), cfgX.CheckpointTopic())
		b0 := b.brokerSample()
		c := startChild(t, b.bin, cfgX, "capture")
		var st procStat
		end, got, err := w.waitEvents(ctx, n, b.s.DrainTimeout, func() error {
			st = c.stat()
			return c.exited()
		})
		if s := c.stat(); s.CPU > 0 {
			st = s
		}
		_ = c.stop()
		must(t, err)
		d := end.Sub(c.start)
		run := DrainRun{Seconds: d.Seconds(), EventsSec: float64(got) / d.Seconds(), CPUSeconds: st.CPU.Seconds(),
			CPUUsPerEvt: float64(st.CPU.Microseconds()) / float64(got), PeakRSSMB: float64(st.PeakKB) / 1024,
			Broker: b.brokerSample().since(b0)}
		if !w.first.IsZero() {
			run.FirstSeconds = w.first.Sub(c.start).Seconds()
		}
		if warm {
			res.WarmupRuns = append(res.WarmupRuns, run)
		} else {
			res.Runs = append(res.Runs, run)
			res.PeakRSSMB = max(res.PeakRSSMB, run.PeakRSSMB)
		}

		if sample == nil {
			sample, err = sampleRecords(ctx, b.brokers, topicX, min(10000, int(n)))
			must(t, err)
			var sum int64
			for _, r := range sample {
				sum += int64(len(r.Key) + len(r.Value))
				for _, h := range r.Headers {
					sum += int64(len(h.Key) + len(h.Value))
				}
			}
			res.RecordBytes = float64(sum) / float64(len(sample))
			inProc()
		}
		if !producing {
			continue
		}
		// The bare producer's median run is the limit: a single run of it
		// varied from 277,000 to 420,000 records/s within an hour on this
		// machine (it waits on the broker for every flush and commit, so it
		// takes the broker's hiccups one by one), which moved the ratio by
		// +-10 points.
		logf("drain %s %dB: bare producer (%s)", src.Kind(), size, what)
		b0 = b.brokerSample()
		r := rawProduce(ctx, b.brokers, b.adm, uniq(t, "prod"), sample, n, b.s.DrainTimeout)
		bl := b.brokerSample().since(b0)
		if r.Err != "" {
			res.Producer = r
			producing = false
			continue
		}
		if warm {
			res.WarmupProducer = append(res.WarmupProducer, RawRun{EventsSec: r.EventsSec, Broker: bl})
			continue
		}
		if len(res.ProducerRuns) == 0 {
			res.Producer = r
		}
		res.ProducerRuns = append(res.ProducerRuns, r.EventsSec)
		if bl != nil {
			res.ProducerBroker = append(res.ProducerBroker, *bl)
		}
	}
	med := medianRun(res.Runs)
	res.Seconds, res.EventsSec, res.CPUUsPerEvt, res.ProcessCPU = med.Seconds, med.EventsSec, med.CPUUsPerEvt, med.CPUSeconds
	res.MBSec = res.EventsSec * res.RecordBytes / 1e6

	// The bare reader on the same data (the producer ran above).
	logf("drain %s %dB: bare reader", src.Kind(), size)
	switch s := src.(type) {
	case *pgSource:
		res.Reader = pgRawRead(ctx, s.pg, db, rawSlot, cfgP.Source.Publication, n, b.s.DrainTimeout)
	case *mysqlSource:
		res.Reader = mysqlRawRead(ctx, s.m, binlogStart, table, n, b.s.DrainTimeout)
	}
	if res.Producer.Err == "" {
		res.Producer.EventsSec = median(res.ProducerRuns)
		res.Producer.Seconds = float64(n) / res.Producer.EventsSec
	}
	res.Producer.MBSec = res.Producer.EventsSec * res.RecordBytes / 1e6
	res.Limit = minPositive(res.Reader.EventsSec, res.Producer.EventsSec)
	if res.Limit > 0 {
		res.Ratio = res.EventsSec / res.Limit
	}
	return res
}

// prepare runs the pipeline once in this process so that its start position
// exists before the backlog is written: the PostgreSQL slot, or the MySQL
// checkpoint committed at first start. Then it stops it.
func (b *bench) prepare(ctx context.Context, t *tb, src source, db string, cfg *config.Pipeline) error {
	ip, err := startInproc(cfg, pruntime.StageCapture)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if err := ip.failed(); err != nil {
			return fmt.Errorf("prepare %s: %w", cfg.Name, err)
		}
		ok, err := b.ready(ctx, src, db, cfg, func() bool { return ip.P.CaptureStats.Transactions.Load() >= 1 })
		if err != nil {
			_ = ip.stop()
			return err
		}
		if ok {
			return ip.stop()
		}
		if time.Now().After(deadline) {
			_ = ip.stop()
			return fmt.Errorf("prepare %s: not streaming after 90s", cfg.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ready reports whether a freshly started pipeline is streaming: its
// PostgreSQL slot exists, or its MySQL first-start checkpoint is committed
// (committed() reports that, or the checkpoint topic shows it).
func (b *bench) ready(ctx context.Context, src source, db string, cfg *config.Pipeline, committed func() bool) (bool, error) {
	switch s := src.(type) {
	case *pgSource:
		c, err := pgx.Connect(ctx, s.pg.DSN(db))
		if err != nil {
			return false, err
		}
		defer c.Close(context.Background())
		var n int
		err = c.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, cfg.Source.Slot).Scan(&n)
		return n > 0, err
	default:
		if committed != nil && committed() {
			return true, nil
		}
		return b.adm.committedEnd(ctx, cfg.CheckpointTopic()) >= 4, nil
	}
}

func minPositive(a, b float64) float64 {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}

func must(t *tb, err error) {
	if err != nil {
		t.Fatalf("%v", err)
	}
}

// median is the middle value (the lower middle one of an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sorted := append([]float64(nil), xs...)
	sort.Float64s(sorted)
	return sorted[(len(sorted)-1)/2]
}

// medianRun is the run with the median events/s (the lower middle one of an
// even count).
func medianRun(runs []DrainRun) DrainRun {
	sorted := append([]DrainRun(nil), runs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].EventsSec < sorted[j].EventsSec })
	return sorted[(len(sorted)-1)/2]
}
