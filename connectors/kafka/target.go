package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	plumekafka "github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/target"
)

// Timeouts.
const (
	// transactionTimeout bounds one Apply's Kafka transaction; the broker
	// aborts a transaction left open longer (a hung or dead instance).
	transactionTimeout = time.Minute
	// produceTimeout bounds producing and flushing a batch, inside
	// transactionTimeout.
	produceTimeout = 45 * time.Second
	// endTimeout bounds a commit or abort request.
	endTimeout = 30 * time.Second
	// loadTimeout bounds reading the offsets topic up to the fence.
	loadTimeout = 2 * time.Minute
	// fenceConfirmWait is how long a producer-fenced error waits for
	// another instance's fence record before it is treated as transient.
	fenceConfirmWait = 10 * time.Second
)

// Record keys in the offsets topic; compaction keeps the last of each.
var (
	offsetsKey = []byte("offsets")
	fenceKey   = []byte("fence")
)

// Target writes routed messages to Kafka topics, exactly once for
// read_committed consumers. It implements target.Target.
//
// Invariants (they are what makes the target exactly-once):
//   - One transactional id per target, plume.<pipeline>.<target>.reroute:
//     at most one instance can commit at a time. Open fences older
//     instances: initialising the id bumps its epoch, which aborts any
//     transaction a previous instance left open and makes every later
//     write of that instance fail (it then stops with target.Permanent).
//   - Every Apply is one Kafka transaction: the batch's output records,
//     then one offsets record (key "offsets") in the compacted
//     single-partition offsets topic. The offsets record holds, for every
//     input partition the target has ever seen, the next input offset to
//     read: the committed offsets merged with the batch's, never moving
//     backwards. Output and input progress therefore become visible to
//     read_committed readers together, or not at all.
//   - Open commits a fence record (a fresh nonce), then reads the offsets
//     topic with read_committed up to it. Nothing of an older instance can
//     commit after the fence, so the last offsets record before it is
//     exactly the input position of the committed output: Open returns it
//     to the delivery layer as authoritative, and the layer resumes there.
//   - Apply skips a message whose input offset is below the committed
//     offset of its partition (a replay, or a commit whose reply was lost):
//     what was committed is never produced again.
//   - Any failure aborts the transaction and returns a plain error; the
//     layer retries the whole batch, and an aborted transaction's records
//     are never seen by read_committed readers. A commit whose outcome is
//     unknown (or an abort that failed) marks the client broken: the next
//     Apply re-fences and re-reads the offsets first, so it learns whether
//     the commit happened and skips what it covered.
//   - In-memory state (committed) changes only after a successful commit or
//     from the offsets topic itself.
type Target struct {
	set *settings
	log *slog.Logger
	rec recorder

	cl          *kgo.Client
	adm         *kadm.Client
	cc          plumekafka.ClientConfig
	nonce       string // value of this instance's fence record
	fenceOffset int64  // offset of the fence record in the offsets topic
	inTxn       bool   // a Kafka transaction is open

	// committed is what the last committed offsets record says.
	committed target.Offsets
	// topics are the output topics known to exist.
	topics map[string]bool
	// broken: the client's transactional state is unknown; re-fence and
	// re-read the offsets before the next transaction.
	broken bool
	// fenced is sticky: another instance took over.
	fenced error

	limitsMu sync.Mutex
	limits   map[string]int32 // topic -> max record batch bytes

	// beforeCommit, when set (tests), runs after the batch is flushed and
	// before the commit. An error aborts; errCrash leaves the transaction
	// open, as a process that dies there would.
	beforeCommit func() error
	// clientOpts (tests) are added to the producer's options.
	clientOpts []kgo.Opt
	// afterCommit, when set (tests), runs after a successful commit; an
	// error is returned as if the commit's reply had been lost.
	afterCommit func() error
}

var _ target.Target = (*Target)(nil)

// errCrash (tests) makes Apply return at once with the transaction open.
var errCrash = errors.New("simulated crash")

// newTarget returns the target of validated settings. It does not connect.
func newTarget(set *settings, log *slog.Logger) *Target {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Target{
		set:    set,
		log:    log.With("target", set.name),
		topics: map[string]bool{},
		limits: map[string]int32{},
	}
	t.rec.set = set
	return t
}

func (t *Target) errorf(format string, args ...any) error {
	return fmt.Errorf("kafka target %q: %s", t.set.name, fmt.Sprintf(format, args...))
}

func (t *Target) wrap(what string, err error) error {
	return fmt.Errorf("kafka target %q: %s: %w", t.set.name, what, err)
}

// Open connects, fences older instances and returns the committed input
// offsets (a non-nil map, empty on the first start): authoritative.
func (t *Target) Open(ctx context.Context) (target.Offsets, error) {
	if err := t.open(ctx); err != nil {
		return nil, err
	}
	return maps.Clone(t.committed), nil
}

func (t *Target) open(ctx context.Context) error {
	if t.fenced != nil {
		return t.fenced
	}
	t.closeClient()
	cc, err := t.set.client()
	if err != nil {
		return target.Permanent(t.wrap("kafka client", err))
	}
	opts, err := cc.Opts()
	if err != nil {
		return target.Permanent(t.wrap("kafka client", err))
	}
	if int64(t.set.maxBytes)+1<<20 > 100<<20 {
		opts = append(opts, kgo.BrokerMaxWriteBytes(t.set.maxBytes+1<<20))
	}
	opts = append(opts, t.clientOpts...)
	cl, err := kgo.NewClient(append(opts,
		kgo.TransactionalID(t.set.txnID),
		kgo.TransactionTimeout(transactionTimeout),
		kgo.RecordRetries(20),
		// A record batch never exceeds the limit in force for its topic,
		// so the broker does not reject a batch of records that each fit;
		// a record that alone exceeds it fails locally with
		// kerr.MessageTooLarge (and is dead-lettered).
		kgo.ProducerBatchMaxBytesFn(t.batchLimit),
	)...)
	if err != nil {
		return target.Permanent(t.wrap("kafka client", err))
	}
	t.cl, t.adm, t.cc = cl, kadm.NewClient(cl), cc
	t.topics = map[string]bool{}

	if err := plumekafka.EnsureTopics(ctx, t.adm, plumekafka.TopicSpec{
		Partitions: 1, ReplicationFactor: t.set.spec.ReplicationFactor,
		Configs: map[string]string{"cleanup.policy": "compact"},
	}, t.set.offsetsTopic); err != nil {
		return t.classify(ctx, "create the offsets topic", err)
	}
	if err := t.fence(ctx); err != nil {
		return err
	}
	offs, err := t.load(ctx)
	if err != nil {
		return err
	}
	t.committed, t.broken = offs, false
	t.log.Info("kafka target open", "offsets_topic", t.set.offsetsTopic, "transactional_id", t.set.txnID,
		"fence_offset", t.fenceOffset, "partitions", len(offs))
	return nil
}

// fence commits a fence record carrying a fresh nonce to the offsets topic.
// Its first produce initialises the transactional id, which fences every
// older instance and aborts any transaction one left open.
func (t *Target) fence(ctx context.Context) error {
	t.nonce = strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := t.cl.BeginTransaction(); err != nil {
		t.broken = true
		return t.classifyFence(fmt.Errorf("fence the transactional id %q: %w", t.set.txnID, err))
	}
	t.inTxn = true
	res := t.cl.ProduceSync(ctx, &kgo.Record{Topic: t.set.offsetsTopic, Key: fenceKey, Value: []byte(t.nonce)})
	if err := res.FirstErr(); err != nil {
		t.abort()
		t.broken = true
		return t.classifyFence(fmt.Errorf("fence the transactional id %q: %w", t.set.txnID, err))
	}
	if err := t.commit(ctx); err != nil {
		t.broken = true
		return t.classifyFence(fmt.Errorf("commit the fence record: %w", err))
	}
	t.fenceOffset = res[0].Record.Offset
	return nil
}

// classifyFence classifies an error of fencing: fenced during our own fence
// means another instance is starting at the same time, and it wins.
func (t *Target) classifyFence(err error) error {
	if isFenceError(err) {
		t.fenced = target.Permanent(t.wrap("fenced: another instance of this target is starting", err))
		return t.fenced
	}
	if isConfigError(err) {
		return target.Permanent(t.wrap("open", err))
	}
	return t.wrap("open", err)
}

// load reads the offsets topic (read_committed) up to this instance's fence
// record; the last offsets record before it is authoritative.
func (t *Target) load(ctx context.Context) (target.Offsets, error) {
	opts, err := t.cc.Opts()
	if err != nil {
		return nil, target.Permanent(t.wrap("kafka client", err))
	}
	rd, err := kgo.NewClient(append(opts,
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{t.set.offsetsTopic: {0: kgo.NewOffset().AtStart()}}),
	)...)
	if err != nil {
		return nil, target.Permanent(t.wrap("kafka client", err))
	}
	defer rd.Close()
	var last []byte
	var lastOffset int64 = -1
	deadline := time.Now().Add(loadTimeout)
	for {
		if time.Now().After(deadline) {
			return nil, t.errorf("reading offsets topic %q: did not reach the fence record at offset %d within %v",
				t.set.offsetsTopic, t.fenceOffset, loadTimeout)
		}
		pollCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fs := rd.PollFetches(pollCtx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return nil, t.classify(ctx, fmt.Sprintf("reading offsets topic %q", t.set.offsetsTopic), e.Err)
			}
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			if done {
				return
			}
			if string(r.Key) == string(offsetsKey) {
				last, lastOffset = r.Value, r.Offset
			}
			if r.Offset >= t.fenceOffset {
				done = true
			}
		})
		if !done {
			continue
		}
		offs, err := decodeOffsets(last)
		if err != nil {
			// Refuse to guess: resuming anywhere else could lose or
			// duplicate output.
			return nil, target.Permanent(t.errorf("offsets topic %q: the record at offset %d is unreadable: %v",
				t.set.offsetsTopic, lastOffset, err))
		}
		return offs, nil
	}
}

// Apply writes the batch's messages and its offsets in one transaction.
//
// Errors: *target.RecordErrors (Applied false, nothing committed) for
// messages that cannot be written: a topic_expr that fails or gives an
// unusable topic, a record larger than the topic's limit; target.Permanent
// when fenced by another instance or for a configuration the cluster
// refuses (authorization, invalid topic settings); a plain error (the layer
// retries the batch) for everything else.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	if t.fenced != nil {
		return t.fenced
	}
	if t.cl == nil || t.broken {
		if err := t.open(ctx); err != nil {
			return err
		}
	}

	// Build the output records, skipping what is already committed.
	var (
		recs   []*kgo.Record
		index  []int // recs[j] is the output of b.Messages[index[j]]
		failed map[int]error
		newTop []string
	)
	for i := range b.Messages {
		m := &b.Messages[i]
		if next, ok := t.committed[target.TopicPartition{Topic: m.Topic, Partition: m.Partition}]; ok && m.Offset < next {
			continue // committed by an earlier transaction
		}
		rec, err := t.rec.record(m)
		if err != nil {
			if failed == nil {
				failed = map[int]error{}
			}
			failed[i] = err
			continue
		}
		if !t.topics[rec.Topic] && !slices.Contains(newTop, rec.Topic) {
			newTop = append(newTop, rec.Topic)
		}
		recs = append(recs, rec)
		index = append(index, i)
	}
	if len(failed) > 0 {
		// Nothing was started: the layer dead-letters these and calls
		// Apply again with the rest.
		return &target.RecordErrors{Failed: failed}
	}
	next := mergeOffsets(t.committed, b.Offsets)
	if len(recs) == 0 && maps.Equal(next, t.committed) {
		return nil
	}
	if len(newTop) > 0 {
		if err := t.ensureTopics(ctx, newTop); err != nil {
			return err
		}
	}
	value, err := encodeOffsets(next)
	if err != nil {
		return t.wrap("encode offsets", err)
	}

	// One transaction: the records, then the offsets record, then commit.
	if err := t.cl.BeginTransaction(); err != nil {
		t.broken = true
		return t.classify(ctx, "begin transaction", err)
	}
	t.inTxn = true
	pctx, cancel := context.WithTimeout(ctx, produceTimeout)
	defer cancel()
	var (
		mu      sync.Mutex
		errs    = make([]error, len(recs)+1) // the last is the offsets record's
		pending sync.WaitGroup
	)
	pending.Add(len(recs) + 1)
	promise := func(j int) func(*kgo.Record, error) {
		return func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				errs[j] = err
				mu.Unlock()
			}
			pending.Done()
		}
	}
	for j, rec := range recs {
		t.cl.Produce(pctx, rec, promise(j))
	}
	t.cl.Produce(pctx, &kgo.Record{Topic: t.set.offsetsTopic, Key: offsetsKey, Value: value}, promise(len(recs)))
	flushErr := t.cl.Flush(pctx)
	if flushErr != nil {
		// Abort fails what is still buffered.
		t.abort()
	}
	// Flush does not wait for the promises of records failed before they
	// were buffered (a record too large fails at once, asynchronously):
	// wait for every promise, or a failed record could go unnoticed and
	// its offset be committed.
	if !waitGroup(&pending, endTimeout) {
		t.abort()
		t.broken = true
		return t.errorf("produce: records still unresolved %v after the flush", endTimeout)
	}
	mu.Lock()
	var first error
	var poison map[int]error
	for j, err := range errs {
		if err == nil {
			continue
		}
		if errors.Is(err, kerr.UnknownTopicOrPartition) && j < len(recs) {
			delete(t.topics, recs[j].Topic) // deleted meanwhile: create it again
		}
		if j < len(recs) && errors.Is(err, kerr.MessageTooLarge) {
			if poison == nil {
				poison = map[int]error{}
			}
			poison[index[j]] = fmt.Errorf("the record for topic %q is too large (the limit is %d bytes): %w",
				recs[j].Topic, t.batchLimit(recs[j].Topic), err)
			continue
		}
		if first == nil || isFenceError(err) {
			first = err
		}
	}
	mu.Unlock()
	if flushErr != nil || first != nil || poison != nil {
		t.abort()
		switch {
		case first != nil:
			return t.classify(ctx, "produce", first)
		case poison != nil:
			t.log.Warn("records too large for their topic; transaction aborted", "count", len(poison))
			return &target.RecordErrors{Failed: poison}
		default:
			return t.classify(ctx, "flush", flushErr)
		}
	}
	if t.beforeCommit != nil {
		if err := t.beforeCommit(); err != nil {
			if errors.Is(err, errCrash) {
				return err
			}
			t.abort()
			return err
		}
	}
	if err := t.commit(ctx); err != nil {
		// The outcome is unknown: re-fence and re-read the offsets first.
		t.broken = true
		return t.classify(ctx, "commit", err)
	}
	if t.afterCommit != nil {
		if err := t.afterCommit(); err != nil {
			t.broken = true
			return t.wrap("commit", err)
		}
	}
	t.committed = next
	return nil
}

// commit commits the open transaction. On failure it aborts (which, for an
// unconfirmed commit, bumps the epoch and aborts whatever is still open).
func (t *Target) commit(ctx context.Context) error {
	// Do not let ctx cancel the commit request: its outcome would be unknown.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
	defer cancel()
	err := t.cl.EndTransaction(endCtx, kgo.TryCommit)
	if err != nil {
		t.abort()
		return err
	}
	t.inTxn = false
	return nil
}

// abort aborts the open transaction, best effort; a failure marks the
// client broken.
func (t *Target) abort() {
	if !t.inTxn {
		return
	}
	t.inTxn = false
	ctx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	if err := t.cl.AbortBufferedRecords(ctx); err != nil {
		t.broken = true
	}
	if err := t.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.broken = true
		t.log.Warn("abort Kafka transaction", "err", err)
	}
}

// ensureTopics creates missing output topics and learns their
// max.message.bytes, before anything is produced to them.
func (t *Target) ensureTopics(ctx context.Context, topics []string) error {
	if err := plumekafka.EnsureTopics(ctx, t.adm, t.set.spec, topics...); err != nil {
		return t.classify(ctx, "create output topics", err)
	}
	rcs, err := t.adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		t.log.Debug("cannot read the output topics' max.message.bytes; using max_message_bytes", "err", err)
	}
	t.limitsMu.Lock()
	for _, rc := range rcs {
		if rc.Err != nil {
			continue
		}
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" || c.Value == nil {
				continue
			}
			if n, err := strconv.ParseInt(*c.Value, 10, 32); err == nil && n >= minMessageBytes && n < int64(t.set.maxBytes) {
				t.limits[rc.Name] = int32(n)
			}
		}
	}
	t.limitsMu.Unlock()
	for _, topic := range topics {
		t.topics[topic] = true
	}
	return nil
}

// batchLimit is the largest record batch for a topic: max_message_bytes, or
// the topic's max.message.bytes if smaller. franz-go asks once per
// partition, when it first produces to it.
func (t *Target) batchLimit(topic string) int32 {
	t.limitsMu.Lock()
	defer t.limitsMu.Unlock()
	if l, ok := t.limits[topic]; ok {
		return l
	}
	return t.set.maxBytes
}

// waitGroup waits for wg, at most d; it reports whether wg finished.
func waitGroup(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// InternalTopics returns the topics the target keeps its own state in (the
// offsets topic). On the pipeline's own cluster it is under the topic
// prefix, so no delivery loop of the pipeline may consume it.
func (t *Target) InternalTopics() []string { return []string{t.set.offsetsTopic} }

// Close aborts an open transaction and closes the client.
func (t *Target) Close() error {
	t.closeClient()
	return nil
}

func (t *Target) closeClient() {
	if t.cl == nil {
		return
	}
	t.abort()
	t.cl.Close()
	t.cl, t.adm, t.inTxn = nil, nil, false
}

// classify maps a Kafka error: fenced by another instance (confirmed by its
// fence record) and configuration errors are permanent; the rest is
// retried.
func (t *Target) classify(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case isFenceError(err):
		if t.confirmFenced(ctx) {
			t.fenced = target.Permanent(t.wrap("fenced: another instance of this target took over the transactional id "+
				strconv.Quote(t.set.txnID), err))
			return t.fenced
		}
		// No other instance: the epoch was bumped by the broker (a
		// transaction timed out). Start over with a new fence.
		t.broken = true
		t.log.Warn("producer epoch bumped but no other instance fenced this one; re-fencing", "err", err)
	case isConfigError(err):
		return target.Permanent(t.wrap(what, err))
	}
	return t.wrap(what, err)
}

// confirmFenced reports whether another instance committed a fence record
// after ours: then it took over. A producer-fenced error without one comes
// from the broker (a transaction timeout bumped the epoch). When the offsets
// topic cannot be read it assumes fenced.
func (t *Target) confirmFenced(ctx context.Context) bool {
	opts, err := t.cc.Opts()
	if err != nil {
		return true
	}
	rd, err := kgo.NewClient(append(opts,
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{t.set.offsetsTopic: {0: kgo.NewOffset().At(t.fenceOffset + 1)}}),
	)...)
	if err != nil {
		return true
	}
	defer rd.Close()
	deadline := time.Now().Add(fenceConfirmWait)
	for time.Now().Before(deadline) {
		pollCtx, cancel := context.WithDeadline(ctx, deadline)
		fs := rd.PollFetches(pollCtx)
		cancel()
		if ctx.Err() != nil {
			return true
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return true
			}
		}
		found := false
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) == string(fenceKey) && string(r.Value) != t.nonce {
				found = true
			}
		})
		if found {
			return true
		}
	}
	return false
}

// isFenceError reports an error that means this producer's epoch is stale.
func isFenceError(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch)
}

// isConfigError reports errors that retrying cannot fix: authentication,
// authorization, topic settings the cluster refuses.
func isConfigError(err error) bool {
	for _, e := range []error{
		kerr.SaslAuthenticationFailed, kerr.TransactionalIDAuthorizationFailed, kerr.TopicAuthorizationFailed,
		kerr.ClusterAuthorizationFailed, kerr.InvalidReplicationFactor, kerr.InvalidPartitions,
		kerr.InvalidConfig, kerr.PolicyViolation, kerr.InvalidTopicException, kerr.InvalidTransactionTimeout,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
