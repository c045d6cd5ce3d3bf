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
//
// Commits are pipelined: a full batch is committed (flush, EndTransaction,
// acknowledge, mirror) by a goroutine while the source goes on emitting the
// next batch. Its records wait in staged, encoded, and are produced only
// after that EndTransaction returned and the next transaction began. So a
// record never enters the transaction of a checkpoint it comes after, and
// the invariants above hold unchanged. At most one commit runs at a time;
// staged is bounded (stageLimit bytes), beyond which Emit waits for the
// commit: backpressure, not a growing queue.
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
	done        sync.Cond // broadcast when a commit finishes (L is &mu)
	inTxn       bool      // a Kafka transaction is open in the client
	txnBegun    time.Time // when it began (BeginTransaction)
	inSourceTxn bool      // Emit was called since the last Commit
	committing  bool      // a commit goroutine runs: new records are staged
	staged      []*kgo.Record
	stagedBytes int
	stageLimit  int
	cur         batch // the batch being filled

	lastTable  *event.Table // the table of the last Emit, and its name
	lastName   string
	topicTable *event.Table // the table and op the cached topic is for
	topicOp    event.Op
	topicName  string
	tracePos   string // the position (and, for snapshot rows, the table) of the cached trace context
	traceTable *event.Table
	traceSnap  bool
	trace      event.TraceContext
	traceStr   string
	err        error // first failure; sticky

	produceErr   error
	produceErrMu sync.Mutex
	promise      func(*kgo.Record, error) // p.produced, bound once: a closure per record would be an allocation per event
}

// batch is the content of one Kafka transaction: what it counts, and the
// checkpoint its commit will write.
type batch struct {
	start   time.Time         // first Emit or Commit into it (BatchLinger counts from here)
	events  int               // events in it
	bytes   int64             // their record bytes
	pending []byte            // checkpoint of the last complete source txn in it
	newest  time.Time         // newest source commit time in it
	tables  map[TableOp]int64 // events per table and op
	spans   []TxnSpan         // source transactions in it (with a Tracer)
}

func (p *producer) touchLocked() {
	if p.cur.start.IsZero() {
		p.cur.start = time.Now()
	}
}

func (p *producer) Emit(ctx context.Context, c *event.Change) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if err := p.produceError(); err != nil {
		return p.fail(p.classifyTxn(err, p.txnBegun))
	}
	for p.committing && p.stagedBytes >= p.stageLimit {
		p.done.Wait() // backpressure: staged is full until the commit ends
	}
	if p.err != nil {
		return p.err
	}
	if !p.committing {
		if err := p.beginLocked(); err != nil {
			return p.fail(err)
		}
	}
	p.touchLocked()
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
	p.send(rec, size)
	b := &p.cur
	b.events++
	if c.Table != p.lastTable {
		p.lastTable, p.lastName = c.Table, c.Table.QualifiedName()
	}
	if b.tables == nil {
		b.tables = map[TableOp]int64{}
	}
	b.tables[TableOp{p.lastName, c.Op}]++
	b.bytes += int64(size)
	if c.Commit.After(b.newest) {
		b.newest = c.Commit
	}
	if tombKey != nil {
		t := event.Tombstone(topic, tombKey)
		p.send(t, recordSize(t))
	}
	if err := p.produceError(); err != nil {
		return p.fail(p.classifyTxn(err, p.txnBegun))
	}
	return nil
}

// send produces r into the open transaction, or stages it while the
// previous batch commits (see producer).
func (p *producer) send(r *kgo.Record, size int) {
	if p.committing {
		p.staged = append(p.staged, r)
		p.stagedBytes += size
		return
	}
	p.produce(r)
}

func (p *producer) Commit(ctx context.Context, cp []byte) error {
	return p.endSourceTxn(ctx, cp, false)
}

// Sync implements Syncer (sync.go).
func (p *producer) Sync(ctx context.Context, cp []byte) error { return p.endSourceTxn(ctx, cp, true) }

// endSourceTxn closes a source transaction with its checkpoint cp, and
// commits the Kafka transaction if asked to (now: and waits for it) or if it
// is full or old enough.
func (p *producer) endSourceTxn(ctx context.Context, cp []byte, now bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.touchLocked()
	p.inSourceTxn = false
	p.cur.pending = cp
	if now || p.cur.events >= p.cfg.BatchMaxEvents || time.Since(p.cur.start) >= p.cfg.BatchLinger {
		if err := p.startCommitLocked(); err != nil {
			return err
		}
		if now {
			p.waitCommitLocked()
			return p.err
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
		if p.err == nil && !p.committing && !p.inSourceTxn && p.cur.pending != nil && time.Since(p.cur.start) >= p.cfg.BatchLinger {
			_ = p.startCommitLocked() // a failure is sticky in p.err
		}
		p.mu.Unlock()
	}
}

// classifyTxn is classify for a failure inside a Kafka transaction that
// began at begun.
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
func (p *producer) classifyTxn(err error, begun time.Time) error {
	if errors.Is(err, kerr.InvalidTxnState) && time.Since(begun) < p.cfg.TransactionTimeout {
		return fmt.Errorf("%w: %v (the transaction was aborted by the coordinator %s after it began, before the transaction timeout: another instance initialised the transactional id)",
			ErrFenced, err, time.Since(begun).Round(time.Millisecond))
	}
	return classify(err)
}

// beginLocked opens a Kafka transaction unless one is open. Only called
// while no commit runs: the client has one transaction at a time.
func (p *producer) beginLocked() error {
	if p.inTxn {
		return nil
	}
	if err := p.cl.BeginTransaction(); err != nil {
		return classify(err)
	}
	p.inTxn, p.txnBegun = true, time.Now()
	return nil
}

// startCommitLocked hands the current batch to a commit goroutine and
// starts a new batch. It first waits for a commit still running (one at a
// time keeps acknowledgements in order and bounds what is staged).
func (p *producer) startCommitLocked() error {
	p.waitCommitLocked()
	if p.err != nil {
		return p.err
	}
	if p.cur.pending == nil {
		// While we waited, lingerLoop committed this batch: the source is
		// at a boundary (a single goroutine emits), so nothing came since.
		return nil
	}
	if err := p.beginLocked(); err != nil { // a batch of checkpoints only has no transaction yet
		return p.fail(err)
	}
	b := p.cur
	p.cur = batch{tables: make(map[TableOp]int64, len(b.tables))}
	p.committing = true
	go p.commit(b, p.txnBegun)
	return nil
}

func (p *producer) waitCommitLocked() {
	for p.committing {
		p.done.Wait()
	}
}

// commit writes b's checkpoint record, flushes, commits, then acknowledges
// the source and mirrors the checkpoint; then it begins the next
// transaction with the records staged meanwhile. It runs without p.mu for
// the Kafka round trips; only this goroutine touches the client's
// transaction while committing is set.
func (p *producer) commit(b batch, begun time.Time) {
	start := time.Now()
	err := p.endTxn(b.pending, begun)
	if err == nil {
		p.committed(b, start)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.done.Broadcast()
	p.committing = false
	if err != nil {
		p.abortLocked()
		p.fail(err)
	} else {
		p.inTxn = false
	}
	staged := p.staged
	defer func() { clear(staged); p.staged, p.stagedBytes = staged[:0], 0 }()
	if p.err != nil || len(staged) == 0 {
		return // a failed run produces nothing more; Run returns p.err
	}
	if err := p.beginLocked(); err != nil {
		p.fail(err)
		return
	}
	for _, r := range staged {
		p.produce(r)
	}
}

// endTxn produces the checkpoint record cp as the transaction's last
// record, flushes and commits.
func (p *producer) endTxn(cp []byte, begun time.Time) error {
	p.produce(&kgo.Record{Topic: p.cfg.CheckpointTopic, Partition: 0, Key: checkpointKey, Value: cp})
	if err := p.cl.Flush(p.runCtx); err != nil {
		return p.classifyTxn(fmt.Errorf("flush: %w", err), begun)
	}
	if err := p.produceError(); err != nil {
		return p.classifyTxn(fmt.Errorf("produce: %w", err), begun)
	}
	// Do not let a cancelled context cancel the commit request: its outcome
	// would be unknown.
	endCtx, c := context.WithTimeout(context.WithoutCancel(p.runCtx), 60*time.Second)
	defer c()
	if err := p.cl.EndTransaction(endCtx, kgo.TryCommit); err != nil {
		return p.classifyTxn(fmt.Errorf("commit Kafka transaction: %w", err), begun)
	}
	return nil
}

// committed records a committed batch and only then releases it: the
// source's acknowledgement and the mirror (see the invariants).
func (p *producer) committed(b batch, start time.Time) {
	p.stats.Transactions.Add(1)
	p.stats.Events.Add(int64(b.events))
	p.stats.Bytes.Add(b.bytes)
	p.stats.addTableEvents(b.tables)
	now := time.Now()
	if p.cfg.Tracer != nil && len(b.spans) > 0 {
		p.cfg.Tracer.Captured(b.spans, now)
	}
	p.stats.LastCommit.Store(now.UnixNano())
	if !b.newest.IsZero() {
		p.stats.LastSourceCommit.Store(b.newest.UnixNano())
	}
	if p.stats.CommitLatency != nil {
		p.stats.CommitLatency(now.Sub(start))
	}
	// Committed: only now may the source release these changes.
	p.src.Ack(b.pending)
	if p.mirror != nil {
		if err := p.mirror.SaveCapture(b.pending); err != nil {
			// The mirror only lags; Kafka stays authoritative.
			p.log.Warn("could not mirror the capture checkpoint to the offset store", "err", err)
		}
	}
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
			p.cur.spans = append(p.cur.spans, TxnSpan{Trace: p.trace, Position: key, SourceCommit: c.Commit})
		}
	}
	if n := len(p.cur.spans); n > 0 && p.cfg.Tracer != nil {
		p.cur.spans[n-1].Events++
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
	p.cl.Produce(p.runCtx, r, p.promise)
}

// produced is every record's produce promise.
func (p *producer) produced(r *kgo.Record, err error) {
	if err != nil {
		p.produceErrMu.Lock()
		if p.produceErr == nil {
			p.produceErr = err
		}
		p.produceErrMu.Unlock()
		return
	}
	p.enc.Recycle(r)
}

func (p *producer) produceError() error {
	p.produceErrMu.Lock()
	defer p.produceErrMu.Unlock()
	return p.produceErr
}

// fail records the first error, aborts, and stops the source. While a
// commit runs, its goroutine owns the transaction and aborts it if the
// commit fails (a commit that succeeds is whole and stays).
func (p *producer) fail(err error) error {
	if p.err == nil {
		p.err = err
		if !p.committing {
			p.abortLocked()
		}
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
