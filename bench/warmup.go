package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
)

// Warmup is the broker warm-up that runs before the first workload.
//
// The broker is a JVM started at the beginning of the run: until its JIT
// has compiled the produce, transaction and fetch paths it spends more CPU
// per record, on cores it shares with Plume. Without a warm-up the first
// workload's first drain ran measurably slower than the later ones
// (MariaDB 100 B: 147,660 events/s, then 180,417 and 201,088; the broker
// used 0.91 cores in the first run and 0.66-0.81 in the next two), and
// after a warm-up of a fixed 1,000,000 records the drains still got faster
// run after run (216,033 -> 237,737 events/s). The per-request code paths
// are only compiled after thousands of requests. So the warm-up writes
// records shaped like the drain's through the same transactional path in
// rounds of warmupRound records until two rounds in a row were no more than
// 5% faster than the best before them and the broker's JIT compiler threads
// used under warmupJITQuiet cores in the last (the rate steadies well before
// the compiler does: 0.07-0.58 cores through 10,000,000 records), at most
// the configured number of records and 2 minutes; then it reads the last
// round back. A broker in production has long been warm.
type Warmup struct {
	Records      int64     `json:"records"`          // produced in all
	Rounds       []float64 `json:"rounds"`           // each round's records/s
	RoundsJIT    []float64 `json:"rounds_jit_cores"` // the broker's JIT compiler threads during each round, cores (-1: not measured)
	Steady       bool      `json:"steady"`           // it stopped because the rate stopped rising and the JIT was quiet
	ConsumeSec   float64   `json:"consume_events_per_sec"`
	TotalSeconds float64   `json:"seconds"`
	Err          string    `json:"error,omitempty"`
}

const warmupRound = 500_000

// warmupJITQuiet is the broker's JIT compilation, in cores, below which a
// round counts as warm (with a steady rate).
const warmupJITQuiet = 0.05

// warmBroker produces records shaped like the 100 B drain's (Plume's own
// encoder, transactional, zstd) until the rate is steady and the broker's
// JIT quiet, or limit records were written, and reads the last round back
// read_committed.
func (b *bench) warmBroker(limit int64) Warmup {
	ctx := context.Background()
	start := time.Now()
	var w Warmup
	enc := event.Encoder{Pipeline: "warmup"}
	tbl := &event.Table{Connector: "mysql", Database: "bench", Name: "warmup",
		Columns: []event.Column{{Name: "id"}, {Name: "payload"}}, Key: []int{0}}
	sample := make([]*kgo.Record, 1000)
	for i := range sample {
		c := &event.Change{Op: event.OpCreate, Table: tbl, After: []event.Value{int64(i), strings.Repeat("w", 100)},
			Commit: time.Now(), TxID: fmt.Sprint("0-1-", i/100), Pos: fmt.Sprint("gtid:0-1-", i/100), Index: int64(i % 100), TableIndex: int64(i%100 + 1)}
		sample[i] = enc.Record("", c)
	}
	var last string
	best, flat := 0.0, 0 // the best round's rate; rounds since one beat it by more than 5%
	for w.Records < limit && time.Since(start) < 2*time.Minute {
		last = fmt.Sprintf("warmup-%d", time.Now().UnixNano())
		n := min(warmupRound, limit-w.Records)
		b0 := b.brokerSample()
		p := rawProduce(ctx, b.brokers, b.adm, last, sample, n, 2*time.Minute)
		jit := -1.0 // not measured
		if l := b.brokerSample().since(b0); l != nil {
			jit = l.JITCores
		}
		if p.Err != "" {
			w.Err = p.Err
			return w
		}
		w.Records += n
		w.Rounds = append(w.Rounds, p.EventsSec)
		w.RoundsJIT = append(w.RoundsJIT, jit)
		if p.EventsSec > 1.05*best {
			flat = 0
		} else {
			flat++
		}
		best = max(best, p.EventsSec)
		if flat >= 2 && jit < warmupJITQuiet {
			w.Steady = true
			break
		}
	}
	n := min(warmupRound, w.Records)
	got, d, err := readFromStart(ctx, b.brokers, last+".data", n, 2*time.Minute, nil)
	if err != nil {
		w.Err = err.Error()
	}
	if d > 0 {
		w.ConsumeSec = float64(got) / d.Seconds()
	}
	w.TotalSeconds = time.Since(start).Seconds()
	return w
}
