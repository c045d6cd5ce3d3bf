package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
)

// Config is the capture stage's configuration.
type Config struct {
	Pipeline string
	Client   kafka.ClientConfig
	// TransactionalID fences other instances of the same pipeline. It is
	// derived from the pipeline name: "plume.<name>.capture".
	TransactionalID string
	// CheckpointTopic is the compacted single-partition topic that holds the
	// source checkpoint, written in the same transactions as the events.
	CheckpointTopic string
	// Topic maps a change to its topic.
	Topic func(*event.Change) (string, error)
	// Structured selects the structured CloudEvents binding mode.
	Structured bool
	// Tombstones: follow each delete with a tombstone (null value, same key).
	Tombstones bool
	// TopicSpec is used to create missing topics.
	TopicSpec kafka.TopicSpec
	// BatchMaxEvents closes a Kafka transaction at the next source
	// transaction boundary once it holds this many events.
	BatchMaxEvents int
	// BatchLinger closes a Kafka transaction at a source transaction
	// boundary once it has been open this long.
	BatchLinger time.Duration
	// MaxBufferedBytes bounds the producer's in-flight bytes; Emit blocks
	// beyond it, which is the backpressure into the source reader.
	MaxBufferedBytes int
	// MaxMessageBytes is the largest record the brokers accept.
	MaxMessageBytes int
	// Oversize is what to do with a larger record: "fail" (stop with an error
	// naming the table and key) or "dlq" (write a reference record to the
	// DLQTopic instead, in the same transaction).
	Oversize string
	DLQTopic string
	// TransactionTimeout must cover the largest source transaction: a
	// source transaction is never split across Kafka transactions.
	TransactionTimeout time.Duration
	// TraceParent puts the source transaction's deterministic W3C trace
	// context (event.NewTraceContext) on every event that has none;
	// TraceRatio is the share marked sampled.
	TraceParent bool
	TraceRatio  float64
	// Tracer, when set, is told of every source transaction committed to
	// Kafka (the capture spans of OpenTelemetry export).
	Tracer TxnTracer
}

// TxnSpan is one source transaction committed to Kafka, for tracing.
type TxnSpan struct {
	Trace        event.TraceContext
	Position     string
	SourceCommit time.Time // the source's commit time
	Events       int
}

// TxnTracer receives the source transactions of each committed Kafka
// transaction. It must not keep the slice.
type TxnTracer interface {
	Captured(txns []TxnSpan, committed time.Time)
}

func (c *Config) defaults() {
	if c.BatchMaxEvents <= 0 {
		c.BatchMaxEvents = 5000
	}
	if c.BatchLinger <= 0 {
		c.BatchLinger = 50 * time.Millisecond
	}
	if c.MaxBufferedBytes <= 0 {
		c.MaxBufferedBytes = 16 << 20
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 1 << 20
	}
	if c.TransactionTimeout <= 0 {
		c.TransactionTimeout = 5 * time.Minute
	}
	if c.Oversize == "" {
		c.Oversize = "fail"
	}
}

// Mirror is the local copy of the committed source checkpoint (the Badger
// offset store). It is written after each Kafka commit, so it may lag the
// checkpoint topic but never lead it.
type Mirror interface {
	LoadCapture() ([]byte, error)
	SaveCapture(cp []byte) error
}

// ErrFenced means another instance of the pipeline took over the
// transactional id. This instance must stop; it must not retry.
var ErrFenced = errors.New("fenced: another instance of this pipeline is running")

// checkpointKey is the record key of checkpoint records; compaction keeps
// the last one.
var checkpointKey = []byte("checkpoint")

// Stats counts what capture committed. Read with atomic loads.
type Stats struct {
	Events       atomic.Int64 // events committed to Kafka
	Bytes        atomic.Int64 // record bytes (key, value, headers) committed to Kafka
	Transactions atomic.Int64 // Kafka transactions committed
	Aborted      atomic.Int64
	// LastCommit is when the last Kafka transaction committed (Unix ns).
	LastCommit atomic.Int64
	// LastSourceCommit is the source commit time (Unix ns) of the newest
	// event in the last committed Kafka transaction: now minus it is the
	// source lag in seconds while changes flow.
	LastSourceCommit atomic.Int64
	// CommitLatency observes how long each Kafka commit (flush + EndTxn)
	// took, when set.
	CommitLatency func(time.Duration)
	// Running is true while the source runs.
	Running atomic.Bool

	tc tableCounts // per table and op; snapshot progress (progress.go)
}

// Run captures src into Kafka until ctx is done or something fails.
//
// Start-up, in this order:
//  1. Fence: the transactional producer commits a fence record carrying a
//     fresh nonce to the checkpoint topic. Initialising the transactional id
//     bumps its epoch, which aborts any transaction an older instance left
//     open and makes every later write of that instance fail.
//  2. Resolve the position: read the checkpoint topic (read_committed) up to
//     our own fence record. The last checkpoint record before it is the
//     authoritative position, because it was committed atomically with the
//     events it covers; nothing after it was committed. The Badger mirror is
//     written only after a Kafka commit, so it can lag but never lead; it is
//     overwritten with the Kafka value. A mirror with no Kafka checkpoint
//     means the topics were lost or the broker changed: refuse to guess.
//  3. Run the source from that checkpoint.
func Run(ctx context.Context, cfg Config, src Source, mirror Mirror, stats *Stats, log *slog.Logger) error {
	cfg.defaults()
	if stats == nil {
		stats = new(Stats)
	}
	base, err := cfg.Client.Opts()
	if err != nil {
		return err
	}
	opts := append(base,
		kgo.TransactionalID(cfg.TransactionalID),
		kgo.TransactionTimeout(cfg.TransactionTimeout),
		kgo.MaxBufferedBytes(cfg.MaxBufferedBytes),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxMessageBytes)),
		kgo.RecordRetries(20),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// franz-go waits 10 ms by default to fill a batch. Records of a
		// transaction are invisible until it commits anyway, and under
		// load batches fill while the 5 requests in flight are busy, so a
		// short linger only adds latency at moderate rates.
		kgo.ProducerLinger(2*time.Millisecond),
		// The first produce to a topic created a moment ago can be answered
		// NOT_LEADER_FOR_PARTITION; franz-go retries after its next metadata
		// refresh, which it spaces at least MetadataMinAge apart (5 s by
		// default): capture would stall that long on every new table.
		kgo.MetadataMinAge(250*time.Millisecond),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	if err := kafka.EnsureTopics(ctx, adm, kafka.TopicSpec{
		Partitions: 1, ReplicationFactor: cfg.TopicSpec.ReplicationFactor,
		Configs: map[string]string{"cleanup.policy": "compact"},
	}, cfg.CheckpointTopic); err != nil {
		return err
	}
	from, err := fenceAndLoad(ctx, cl, cfg, log)
	if err != nil {
		return err
	}
	if err := reconcileMirror(from, mirror, log); err != nil {
		return err
	}

	// The stage is an eighth of the buffer: a memory choice. A fast
	// drain's commit outlasts it and the source waits; all the room the
	// client's buffer leaves would remove the waits, at about 6 MB more
	// peak RSS in snapshots (docs/capture.md, pipelined commits).
	p := &producer{cfg: cfg, cl: cl, adm: adm, src: src, mirror: mirror, stats: stats, log: log,
		topics: map[string]bool{}, stageLimit: int(cfg.MaxBufferedBytes / 8)}
	p.done.L = &p.mu
	p.promise = p.produced
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p.cancel, p.runCtx = cancel, runCtx
	// Binary-mode records are recycled once acknowledged (producer.produce).
	p.enc = event.Encoder{Pipeline: cfg.Pipeline, Structured: cfg.Structured, Context: runCtx}
	lingerDone := make(chan struct{})
	go func() { defer close(lingerDone); p.lingerLoop(runCtx) }()

	stats.Running.Store(true)
	srcErr := src.Run(runCtx, from, p)
	stats.Running.Store(false)
	cancel(srcErr)
	<-lingerDone

	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitCommitLocked() // it began the next transaction with what was staged
	if p.err != nil {
		return p.err
	}
	if srcErr != nil && ctx.Err() == nil {
		return srcErr
	}
	// Clean shutdown: commit what is complete, abort a partial source txn.
	if !p.inSourceTxn && p.cur.pending != nil {
		if err := p.startCommitLocked(); err != nil {
			return err
		}
		p.waitCommitLocked()
		return p.err
	} else if p.inTxn {
		p.abortLocked()
	}
	return nil
}

// fenceAndLoad implements steps 1 and 2 of Run.
func fenceAndLoad(ctx context.Context, cl *kgo.Client, cfg Config, log *slog.Logger) ([]byte, error) {
	nonce := []byte(strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := cl.BeginTransaction(); err != nil {
		return nil, classify(err)
	}
	res := cl.ProduceSync(ctx, &kgo.Record{Topic: cfg.CheckpointTopic, Partition: 0, Key: []byte("fence"), Value: nonce})
	if err := res.FirstErr(); err != nil {
		_ = cl.EndTransaction(context.Background(), kgo.TryAbort)
		return nil, classify(fmt.Errorf("fence the transactional id %q: %w", cfg.TransactionalID, err))
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return nil, classify(fmt.Errorf("commit the fence record: %w", err))
	}
	fenceOffset := res[0].Record.Offset

	rd, err := kgo.NewClient(append(mustOpts(cfg), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.CheckpointTopic: {0: kgo.NewOffset().AtStart()}}))...)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	var last []byte
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if time.Now().After(deadline) {
			return nil, classify(fmt.Errorf("reading checkpoint topic %q: did not reach the fence record at offset %d", cfg.CheckpointTopic, fenceOffset))
		}
		pollCtx, c := context.WithTimeout(ctx, 10*time.Second)
		fs := rd.PollFetches(pollCtx)
		c()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return nil, classify(fmt.Errorf("reading checkpoint topic %q: %w", cfg.CheckpointTopic, e.Err))
			}
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			if done {
				return
			}
			if string(r.Key) == string(checkpointKey) {
				last = r.Value
				if len(last) == 0 {
					last = nil // a reset: start afresh (ResetCheckpoint)
				}
			}
			if r.Offset >= fenceOffset {
				done = true
			}
		})
		if done {
			log.Info("capture position resolved", "checkpoint_topic", cfg.CheckpointTopic, "fence_offset", fenceOffset, "has_checkpoint", last != nil)
			return last, nil
		}
	}
}

func mustOpts(cfg Config) []kgo.Opt {
	o, _ := cfg.Client.Opts() // validated in Run
	return o
}

func reconcileMirror(kafkaCP []byte, mirror Mirror, log *slog.Logger) error {
	if mirror == nil {
		return nil
	}
	local, err := mirror.LoadCapture()
	if err != nil {
		return fmt.Errorf("offset store: %w", err)
	}
	if kafkaCP == nil && local != nil {
		return fmt.Errorf("the offset store in state_dir holds a capture checkpoint but the Kafka checkpoint topic has none: " +
			"the topics were deleted or this is a different Kafka cluster. Plume will not guess where to resume; " +
			"see docs/operations.md (moving to another Kafka cluster) or remove the capture checkpoint with `plume offsets reset --capture`")
	}
	if kafkaCP != nil && string(kafkaCP) != string(local) {
		log.Info("offset store lagged the checkpoint topic; updating it")
		return mirror.SaveCapture(kafkaCP)
	}
	return nil
}

// classify maps fencing errors to ErrFenced and marks every other Kafka
// failure retryable: capture can restart from the committed checkpoint.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
		return fmt.Errorf("%w: %v", ErrFenced, err)
	}
	return kafkaError{err}
}

// kafkaError is a Kafka-side failure of capture.
type kafkaError struct{ err error }

func (e kafkaError) Error() string { return e.err.Error() }
func (e kafkaError) Unwrap() error { return e.err }

// Retryable reports whether Run failed on the Kafka side in a way that a
// restart (re-fence, reload the checkpoint, resume) can recover from. Source
// errors, fencing and configuration errors are not retryable.
func Retryable(err error) bool {
	var k kafkaError
	return errors.As(err, &k) && !errors.Is(err, ErrFenced)
}

// ResetCheckpoint makes the pipeline's next start a first start (a new
// snapshot if configured): it commits an empty checkpoint record with the
// pipeline's transactional id, which also fences any instance still
// running, and clears the mirror. Use it after the source lost the position
// (a purged binlog, a dropped slot); see docs/operations.md.
func ResetCheckpoint(ctx context.Context, cfg Config, mirror interface{ ResetCapture() error }) error {
	base, err := cfg.Client.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(base, kgo.TransactionalID(cfg.TransactionalID))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := kafka.EnsureTopics(ctx, kadm.NewClient(cl), kafka.TopicSpec{
		Partitions: 1, ReplicationFactor: cfg.TopicSpec.ReplicationFactor,
		Configs: map[string]string{"cleanup.policy": "compact"},
	}, cfg.CheckpointTopic); err != nil {
		return err
	}
	if err := cl.BeginTransaction(); err != nil {
		return err
	}
	// A zero-length, non-nil value: an empty checkpoint, not a tombstone.
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: cfg.CheckpointTopic, Partition: 0, Key: checkpointKey, Value: []byte{}}).FirstErr(); err != nil {
		_ = cl.EndTransaction(context.Background(), kgo.TryAbort)
		return fmt.Errorf("reset the checkpoint in %q: %w", cfg.CheckpointTopic, err)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("reset the checkpoint in %q: %w", cfg.CheckpointTopic, err)
	}
	if mirror != nil {
		return mirror.ResetCapture()
	}
	return nil
}
