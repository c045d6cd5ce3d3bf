package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
)

// producer is the Emitter that writes a source's changes into Kafka
// transactions.
//
// Invariants (they are what makes capture exactly-once):
//   - A Kafka transaction is only committed at a source transaction
//     boundary (inSourceTxn is false), so it holds whole source
//     transactions. A source transaction is never split: however large, it
//     streams into one Kafka transaction (bounded by TransactionTimeout).
//   - The last record of every Kafka transaction is the checkpoint record
//     carrying the checkpoint of the last source transaction in it. Data and
//     position therefore become visible to read_committed readers together,
//     or not at all.
//   - The source is acknowledged (and the Badger mirror written) only after
//     EndTransaction(TryCommit) returned success, so the database never
//     releases a change that is not committed in Kafka.
//   - Any produce or commit failure aborts and fails Run; the caller restarts
//     capture, which re-fences and resumes from the last committed
//     checkpoint. No state survives a failure but what Kafka committed.
type producer struct {
	cfg    Config
	cl     *kgo.Client
	adm    *kadm.Client
	src    Source
	mirror Mirror
	stats  *Stats
	log    *slog.Logger
	cancel context.CancelCauseFunc
	// runCtx is capture's own context. Records are produced with it, not
	// with the context a source passes to Emit: a record stays buffered
	// until the transaction's flush, and a source's per-call or per-worker
	// context may end before that.
	runCtx context.Context

	enc    event.Encoder
	topics map[string]bool // topics known to exist

	mu          sync.Mutex
	inTxn       bool              // a Kafka transaction is open
	inSourceTxn bool              // Emit was called since the last Commit
	txnStart    time.Time         // when the open Kafka transaction began
	txnEvents   int               // events in the open Kafka transaction
	txnBytes    int64             // record bytes in the open Kafka transaction
	pending     []byte            // checkpoint of the last complete source txn in it
	newest      time.Time         // newest source commit time in the open transaction
	txnTables   map[TableOp]int64 // events per table and op in the open transaction
	lastTable   *event.Table      // the table of the last Emit, and its name
	lastName    string
	topicTable  *event.Table // the table and op the cached topic is for
	topicOp     event.Op
	topicName   string
	tracePos    string // the position (and, for snapshot rows, the table) of the cached trace context
	traceTable  *event.Table
	traceSnap   bool
	trace       event.TraceContext
	traceStr    string
	txnSpans    []TxnSpan // source transactions in the open Kafka transaction (with a Tracer)
	err         error     // first failure; sticky

	produceErr   error
	produceErrMu sync.Mutex
}

func (p *producer) Emit(ctx context.Context, c *event.Change) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if err := p.beginLocked(); err != nil {
		return p.fail(err)
	}
	if err := p.produceError(); err != nil {
		return p.fail(p.classifyTxn(err))
	}
	p.inSourceTxn = true
	// The topic depends on the table and the op only (config.Kafka.Topic's
	// environment), so the last one is reused while they repeat.
	topic := p.topicName
	if c.Table != p.topicTable || c.Op != p.topicOp || topic == "" {
		var err error
		if topic, err = p.cfg.Topic(c); err != nil {
			return p.fail(fmt.Errorf("topic for %s: %w", c.Table.QualifiedName(), err))
		}
		p.topicTable, p.topicOp, p.topicName = c.Table, c.Op, topic
	}
	if !p.topics[topic] {
		if err := kafka.EnsureTopics(ctx, p.adm, p.cfg.TopicSpec, topic); err != nil {
			return p.fail(classify(err))
		}
		p.topics[topic] = true
	}
	if p.cfg.TraceParent && c.TraceParent == "" {
		p.traceFor(c)
		c.TraceParent = p.traceStr
	}
	rec := p.enc.Record(topic, c)
	size := recordSize(rec)
	if size > p.cfg.MaxMessageBytes {
		var err error
		if rec, err = p.oversize(rec, c, size); err != nil {
			return p.fail(err)
		}
		size = recordSize(rec)
	}
	// rec may be acknowledged and recycled as soon as it is produced: take
	// what the tombstone needs first (a copy: the key lives in rec's buffer).
	var tombKey []byte
	if c.Op == event.OpDelete && p.cfg.Tombstones && rec.Key != nil && rec.Topic == topic {
		tombKey = bytes.Clone(rec.Key)
	}
	p.produce(rec)
	p.txnEvents++
	if c.Table != p.lastTable {
		p.lastTable, p.lastName = c.Table, c.Table.QualifiedName()
	}
	if p.txnTables == nil {
		p.txnTables = map[TableOp]int64{}
	}
	p.txnTables[TableOp{p.lastName, c.Op}]++
	p.txnBytes += int64(size)
	if c.Commit.After(p.newest) {
		p.newest = c.Commit
	}
	if tombKey != nil {
		p.produce(event.Tombstone(topic, tombKey))
	}
	if err := p.produceError(); err != nil {
		return p.fail(p.classifyTxn(err))
	}
	return nil
}

func (p *producer) Commit(ctx context.Context, cp []byte) error {
	return p.endSourceTxn(ctx, cp, false)
}

// Sync implements Syncer (sync.go).
func (p *producer) Sync(ctx context.Context, cp []byte) error { return p.endSourceTxn(ctx, cp, true) }

// endSourceTxn closes a source transaction with its checkpoint cp, and
// commits the Kafka transaction now if asked to or if it is full or old
// enough.
func (p *producer) endSourceTxn(ctx context.Context, cp []byte, now bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if err := p.beginLocked(); err != nil {
		return p.fail(err)
	}
	p.inSourceTxn = false
	p.pending = cp
	if now || p.txnEvents >= p.cfg.BatchMaxEvents || time.Since(p.txnStart) >= p.cfg.BatchLinger {
		if err := p.commitLocked(ctx); err != nil {
			return p.fail(err)
		}
	}
	return nil
}

// lingerLoop commits an open Kafka transaction once it has lingered long
// enough and sits at a source transaction boundary, so a quiet source does
// not hold committed changes back.
func (p *producer) lingerLoop(ctx context.Context) {
	t := time.NewTicker(max(p.cfg.BatchLinger/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		if p.err == nil && p.inTxn && !p.inSourceTxn && p.pending != nil && time.Since(p.txnStart) >= p.cfg.BatchLinger {
			if err := p.commitLocked(ctx); err != nil {
				p.fail(err)
			}
		}
		p.mu.Unlock()
	}
}

// classifyTxn is classify for a failure inside the open Kafka transaction.
//
// The coordinator answers INVALID_TXN_STATE when the transaction this
// producer is producing into or ending is no longer the one it holds for the
// transactional id: it was aborted under us. Only two things abort it: the
// coordinator's transaction timeout, or another instance's InitProducerId
// for the same transactional id (fencing). Kafka 4's coordinator
// (transaction protocol v2) and kfake give a fenced producer's EndTxn this
// answer instead of PRODUCER_FENCED when the fencing bumped the epoch by
// exactly one.
//
// The coordinator starts its timeout clock no earlier than our
// BeginTransaction (at the first AddPartitions or produce), so a
// transaction that has been open locally for less than TransactionTimeout
// cannot have timed out: another instance fenced us. That error must be
// ErrFenced, not retryable: a restart would re-fence and take the pipeline
// back from the newer instance. An older transaction may have timed out;
// then a restart from the committed checkpoint is the recovery, and should
// another instance exist after all, its own next failure is within its
// timeout and it stops, so two instances still settle on one.
func (p *producer) classifyTxn(err error) error {
	if errors.Is(err, kerr.InvalidTxnState) && time.Since(p.txnStart) < p.cfg.TransactionTimeout {
		return fmt.Errorf("%w: %v (the transaction was aborted by the coordinator %s after it began, before the transaction timeout: another instance initialised the transactional id)",
			ErrFenced, err, time.Since(p.txnStart).Round(time.Millisecond))
	}
	return classify(err)
}

func (p *producer) beginLocked() error {
	if p.inTxn {
		return nil
	}
	if err := p.cl.BeginTransaction(); err != nil {
		return classify(err)
	}
	p.inTxn, p.txnStart, p.txnEvents, p.txnBytes, p.pending, p.newest = true, time.Now(), 0, 0, nil, time.Time{}
	clear(p.txnTables) // counts of an aborted transaction are not kept
	p.txnSpans = p.txnSpans[:0]
	return nil
}

// commitLocked writes the checkpoint record, flushes, commits, then acks.
func (p *producer) commitLocked(ctx context.Context) error {
	cp := p.pending
	start := time.Now()
	p.produce(&kgo.Record{Topic: p.cfg.CheckpointTopic, Partition: 0, Key: checkpointKey, Value: cp})
	if err := p.cl.Flush(p.runCtx); err != nil {
		p.abortLocked()
		return p.classifyTxn(fmt.Errorf("flush: %w", err))
	}
	if err := p.produceError(); err != nil {
		p.abortLocked()
		return p.classifyTxn(fmt.Errorf("produce: %w", err))
	}
	// Do not let ctx cancel the commit request: its outcome would be unknown.
	endCtx, c := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer c()
	if err := p.cl.EndTransaction(endCtx, kgo.TryCommit); err != nil {
		p.abortLocked()
		return p.classifyTxn(fmt.Errorf("commit Kafka transaction: %w", err))
	}
	p.stats.Transactions.Add(1)
	p.stats.Events.Add(int64(p.txnEvents))
	p.stats.Bytes.Add(p.txnBytes)
	p.stats.addTableEvents(p.txnTables)
	clear(p.txnTables)
	now := time.Now()
	if p.cfg.Tracer != nil && len(p.txnSpans) > 0 {
		p.cfg.Tracer.Captured(p.txnSpans, now)
	}
	p.txnSpans = p.txnSpans[:0]
	p.stats.LastCommit.Store(now.UnixNano())
	if !p.newest.IsZero() {
		p.stats.LastSourceCommit.Store(p.newest.UnixNano())
	}
	if p.stats.CommitLatency != nil {
		p.stats.CommitLatency(now.Sub(start))
	}
	p.inTxn, p.pending, p.txnEvents = false, nil, 0
	// Committed: only now may the source release these changes.
	p.src.Ack(cp)
	if p.mirror != nil {
		if err := p.mirror.SaveCapture(cp); err != nil {
			// The mirror only lags; Kafka stays authoritative.
			p.log.Warn("could not mirror the capture checkpoint to the offset store", "err", err)
		}
	}
	return nil
}

// traceFor sets p.trace and p.traceStr to the trace context of c's source
// transaction (one per position; snapshot rows: per snapshot and table),
// computing it once per transaction, and counts c into the tracer's spans.
func (p *producer) traceFor(c *event.Change) {
	if c.Pos != p.tracePos || (c.Snapshot && c.Table != p.traceTable) || c.Snapshot != p.traceSnap {
		p.tracePos, p.traceTable, p.traceSnap = c.Pos, c.Table, c.Snapshot
		key := c.Pos
		if c.Snapshot {
			key = c.Pos + "/" + c.Table.QualifiedName()
		}
		p.trace = event.NewTraceContext(p.cfg.Pipeline, c.Table.Connector, "", key, p.cfg.TraceRatio)
		p.traceStr = p.trace.String()
		if p.cfg.Tracer != nil {
			p.txnSpans = append(p.txnSpans, TxnSpan{Trace: p.trace, Position: key, SourceCommit: c.Commit})
		}
	}
	if n := len(p.txnSpans); n > 0 && p.cfg.Tracer != nil {
		p.txnSpans[n-1].Events++
	}
}

func (p *producer) abortLocked() {
	if !p.inTxn {
		return
	}
	p.inTxn = false
	p.stats.Aborted.Add(1)
	ctx, c := context.WithTimeout(context.Background(), 30*time.Second)
	defer c()
	_ = p.cl.AbortBufferedRecords(ctx)
	if err := p.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		p.log.Warn("abort Kafka transaction", "err", err)
	}
}

// produce buffers r in the open transaction. Once the broker has
// acknowledged a record, franz-go is done with it and so is capture (the
// source's change was encoded into it and is not read again), so its
// storage goes back to the encoder's pool (event.Encoder.Recycle).
func (p *producer) produce(r *kgo.Record) {
	p.cl.Produce(p.runCtx, r, func(r *kgo.Record, err error) {
		if err != nil {
			p.produceErrMu.Lock()
			if p.produceErr == nil {
				p.produceErr = err
			}
			p.produceErrMu.Unlock()
			return
		}
		p.enc.Recycle(r)
	})
}

func (p *producer) produceError() error {
	p.produceErrMu.Lock()
	defer p.produceErrMu.Unlock()
	return p.produceErr
}

// fail records the first error, aborts, and stops the source.
func (p *producer) fail(err error) error {
	if p.err == nil {
		p.err = err
		p.abortLocked()
		p.cancel(err)
	}
	return p.err
}

func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + 64
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// oversize applies the Oversize policy to a record too large for the broker.
func (p *producer) oversize(rec *kgo.Record, c *event.Change, size int) (*kgo.Record, error) {
	what := fmt.Sprintf("the change event for table %s key %q (id %s) is %d bytes, over kafka.max_message_bytes %d",
		c.Table.QualifiedName(), c.Subject(), c.ID(), size, p.cfg.MaxMessageBytes)
	if p.cfg.Oversize != "dlq" {
		return nil, fmt.Errorf("%s; raise the limit (and the broker's message.max.bytes) or set kafka.oversize: dlq", what)
	}
	if !p.topics[p.cfg.DLQTopic] {
		if err := kafka.EnsureTopics(context.Background(), p.adm, p.cfg.TopicSpec, p.cfg.DLQTopic); err != nil {
			return nil, err
		}
		p.topics[p.cfg.DLQTopic] = true
	}
	// The dead-letter record keeps the CloudEvents attributes (headers) and
	// says why the data is missing; the change itself is not in Kafka.
	d := &kgo.Record{Topic: p.cfg.DLQTopic, Key: rec.Key}
	// Binary-mode attribute headers, whatever the topic's mode: the dead
	// letter has no data, but keeps the event's identity.
	bin := (&event.Encoder{Pipeline: p.cfg.Pipeline}).Record(rec.Topic, c)
	for _, h := range bin.Headers {
		if h.Key != "content-type" {
			d.Headers = append(d.Headers, h)
		}
	}
	d.Headers = append(d.Headers,
		kgo.RecordHeader{Key: "ce_dlqreason", Value: []byte("oversize: " + what)},
		kgo.RecordHeader{Key: "ce_dlqstage", Value: []byte("capture")},
		kgo.RecordHeader{Key: "ce_dlqtopic", Value: []byte(rec.Topic)},
		kgo.RecordHeader{Key: "ce_dlqtime", Value: []byte(event.FormatTime(time.Now()))},
	)
	p.log.Warn("oversize change event sent to the dead-letter queue", "table", c.Table.QualifiedName(), "key", c.Subject(), "bytes", size)
	return d, nil
}
