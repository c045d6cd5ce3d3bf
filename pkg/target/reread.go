package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
)

// rereadTimeout bounds one reading of rejected records from Kafka; past it,
// apply fails and is retried with backoff.
const rereadTimeout = 30 * time.Second

const traceParentHeader = "ce_" + event.ExtTraceParent

// rowsOnlyMessages strips what a RowsOnly target does not read from the
// messages routed from one record: Value and Headers, which reference the
// record's decompressed batch. Only the ce_traceparent header stays (the
// tracer reads it), copied, and shared by the messages of one source
// transaction.
func (d *deliverer) rowsOnlyMessages(msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	var kept []Header
	for _, h := range msgs[0].Headers {
		if h.Key == traceParentHeader {
			if d.lastTP == nil || !bytes.Equal(d.lastTP[0].Value, h.Value) {
				d.lastTP = []Header{{Key: traceParentHeader, Value: bytes.Clone(h.Value)}}
			}
			kept = d.lastTP
			break
		}
	}
	for i := range msgs {
		msgs[i].Value, msgs[i].Headers = nil, kept
	}
}

// reread gives the dead letters marked reread (messages a RowsOnly target
// rejected) their record's Value and Headers again, read from Kafka by
// topic, partition and offset: read_committed, from the lowest such offset
// of each partition on, so at most the span of one batch is read. The
// records were consumed moments ago and are normally still there; one that
// is not (deleted by retention or compaction since) is dead-lettered
// without its value, with an error that says so. The read is bounded by
// rereadTimeout; an error makes apply retry with backoff, and a retry reads
// only what is still missing.
func (d *deliverer) reread(ctx context.Context, dead []DeadLetter) error {
	wants := map[TopicPartition]map[int64][]int{} // offset -> indexes into dead
	for i := range dead {
		if !dead[i].reread {
			continue
		}
		m := &dead[i].Msg
		tp := TopicPartition{m.Topic, m.Partition}
		if wants[tp] == nil {
			wants[tp] = map[int64][]int{}
		}
		wants[tp][m.Offset] = append(wants[tp][m.Offset], i)
	}
	if len(wants) == 0 {
		return nil
	}
	starts := map[string]map[int32]kgo.Offset{}
	for tp, offs := range wants {
		lo := int64(-1)
		for o := range offs {
			if lo < 0 || o < lo {
				lo = o
			}
		}
		if starts[tp.Topic] == nil {
			starts[tp.Topic] = map[int32]kgo.Offset{}
		}
		starts[tp.Topic][tp.Partition] = kgo.NewOffset().At(lo)
	}
	base, err := d.cfg.Client.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(base,
		kgo.ConsumePartitions(starts),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxBytes(fetchMaxBytes),
		kgo.FetchMaxPartitionBytes(fetchMaxBytes),
		kgo.MaxConcurrentFetches(1),
	)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	rctx, cancel := context.WithTimeout(ctx, rereadTimeout)
	defer cancel()

	// found fills the dead letters of one offset (rec nil: the record is gone).
	found := func(tp TopicPartition, off int64, rec *kgo.Record) {
		for _, i := range wants[tp][off] {
			dl := &dead[i]
			if rec != nil {
				dl.Msg.Value, dl.Msg.Headers = rec.Value, rec.Headers
			} else {
				dl.Err = fmt.Errorf("%w (the record is no longer in Kafka: dead-lettered without its value)", dl.Err)
			}
			dl.reread = false
		}
		delete(wants[tp], off)
		if len(wants[tp]) == 0 {
			delete(wants, tp)
		}
	}
	for len(wants) > 0 {
		fs := cl.PollFetches(rctx)
		if err := rctx.Err(); err != nil {
			n := 0
			for _, offs := range wants {
				n += len(offs)
			}
			return fmt.Errorf("dead-letter queue: reading %d rejected record(s) again from Kafka: %w", n, err)
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) && !errors.Is(e.Err, context.Canceled) {
				d.log.Warn("dead-letter queue: reading rejected records again from Kafka", "topic", e.Topic, "partition", e.Partition, "err", e.Err)
			}
		}
		fs.EachRecord(func(rec *kgo.Record) {
			tp := TopicPartition{rec.Topic, rec.Partition}
			offs := wants[tp]
			for o := range offs {
				switch {
				case o == rec.Offset:
					found(tp, o, rec)
				case o < rec.Offset: // passed: not in the log any more
					found(tp, o, nil)
				}
			}
		})
	}
	return nil
}
