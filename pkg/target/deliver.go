package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/plumecdc/plume/pkg/kafka"
)

// Router turns a record into the messages bound for one target. A
// *RouteError (or any error) makes the record a dead letter.
type Router interface {
	Eval(rec *kgo.Record) ([]Message, error)
}

// AppendRouter is a Router that appends a record's messages to dst (the
// batch being collected) instead of returning a slice of their own; the
// delivery layer uses it when the router has it.
type AppendRouter interface {
	AppendEval(dst []Message, rec *kgo.Record) ([]Message, error)
}

// RouteError is a routing failure of one record for one route.
type RouteError struct {
	Route string
	Err   error
}

func (e *RouteError) Error() string { return fmt.Sprintf("route %q: %v", e.Route, e.Err) }
func (e *RouteError) Unwrap() error { return e.Err }

// OffsetStore is the local offset store (pkg/offsets).
type OffsetStore interface {
	TargetOffsets(name string) (Offsets, error)
	SaveTargetOffsets(name string, o Offsets) error
}

// DeliveryConfig configures one target's delivery loop.
type DeliveryConfig struct {
	Pipeline string
	Target   string
	Client   kafka.ClientConfig
	// Group is the target's consumer group, "plume.<pipeline>.<target>".
	Group string
	// TopicRegex selects the pipeline's data topics.
	TopicRegex string
	// ExcludeTopics are never consumed (checkpoint and DLQ topics).
	ExcludeTopics []string

	BatchMaxEvents int           // default 1000
	BatchMaxBytes  int           // default 4 MiB
	BatchLinger    time.Duration // default 100ms
	RetryMin       time.Duration // default 100ms
	RetryMax       time.Duration // default 30s
	// Coalesce keeps, within each batch, only the last message of each
	// (route, table, key): a price changed ten times costs one write. nil:
	// the target type's default (DeliveryDefaulter), else off.
	Coalesce *bool
}

func (c *DeliveryConfig) defaults() {
	if c.BatchMaxEvents <= 0 {
		c.BatchMaxEvents = 1000
	}
	if c.BatchMaxBytes <= 0 {
		c.BatchMaxBytes = 4 << 20
	}
	if c.BatchLinger <= 0 {
		c.BatchLinger = 100 * time.Millisecond
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.Coalesce == nil {
		c.Coalesce = new(bool)
	}
}

// fetchMaxBytes bounds a delivery consumer's fetch (and the fetch of each
// partition). Fetch limits count compressed bytes, and kgo holds a fetch
// decompressed, with a Record and its headers per record, until every
// record of it has been polled, while the batch being applied may still
// reference records before it (zstd JSON expands about tenfold). 256 KiB is
// about 2.5 MiB decompressed, 6,000 events of 100-byte rows: several batches
// of the default size. In the bench's route stage, 1 MiB fetches peaked at
// 88-96 MB RSS and 256 KiB ones at 52-55 MB, at the same events/s. A record
// batch larger than this is still fetched whole (Kafka returns the first
// batch whatever the limit).
const fetchMaxBytes = 256 << 10

// DeliveryDefaults are a target type's own defaults for the delivery
// layer; zero values keep the layer's. A target's delivery block wins over
// them.
type DeliveryDefaults struct {
	BatchMaxEvents int
	BatchMaxBytes  int
	BatchLinger    time.Duration
	Coalesce       bool
}

// DeliveryDefaulter is implemented by a target type whose batches should
// default to other limits than the layer's (the salesforce target wants
// large, coalesced batches so that Bulk API jobs and full 200-record calls
// happen; the lake target's batches are its files).
type DeliveryDefaulter interface {
	DeliveryDefaults() DeliveryDefaults
}

// DeliveryStats counts a target's progress and carries its pause switch.
// Read with atomic loads.
type DeliveryStats struct {
	Delivered  atomic.Int64
	DeadLetter atomic.Int64
	Retries    atomic.Int64
	Batches    atomic.Int64
	// LastCheckpoint is when offsets were last saved (Unix ns).
	LastCheckpoint atomic.Int64
	// LastSourceTime is the source commit time (Unix ns) of the newest
	// message in the last applied batch: now minus it is the target's lag.
	LastSourceTime atomic.Int64
	// FailingSince is when the current run of failed attempts began (Unix
	// ns), 0 while the target works; LastError describes the last failure.
	FailingSince atomic.Int64
	LastError    atomic.Value // string
	// Paused stops the loop between batches while true: nothing is polled,
	// so the target's consumer falls behind and nothing else is affected.
	Paused atomic.Bool
	// BatchObserver, when set, observes each applied batch's size and
	// apply latency.
	BatchObserver func(size int, took time.Duration)
	// AppliedObserver, when set, sees the messages of each applied batch
	// and when applying began (tracing spans). It must not keep msgs.
	AppliedObserver func(msgs []Message, start time.Time)
}

// Deliver runs one target's loop until ctx is done or the target fails
// permanently: consume the pipeline's topics (read_committed), route, batch,
// apply, checkpoint.
//
// Checkpoint invariants:
//   - A batch's offsets are saved (in Badger, then the consumer group) only
//     after Apply returned success, so the saved offset of a partition is
//     never past a record the target has not durably applied or
//     dead-lettered.
//   - Dead letters are written to Kafka (synchronously) before the batch that
//     skips them is checkpointed, so a poison record is never lost; a crash
//     between the two re-sends it to the dead-letter queue (same id).
//   - Only one batch is in flight per target, and the consumer is not polled
//     while it is retried: a slow or dead target applies backpressure to its
//     own consumer only, and memory stays bounded by one batch plus the
//     client's fetch buffers.
//   - Start offsets, per partition: the target's own stored offsets when it
//     keeps them transactionally (authoritative: they were committed with the
//     data); otherwise the later of the Badger offset and the group's
//     committed offset (each records only applied positions); otherwise the
//     partition's start.
func Deliver(ctx context.Context, cfg DeliveryConfig, t Target, r Router, store OffsetStore, dlq *DLQ, stats *DeliveryStats, log *slog.Logger) error {
	if dd, ok := t.(DeliveryDefaulter); ok {
		def := dd.DeliveryDefaults()
		if cfg.BatchMaxEvents <= 0 {
			cfg.BatchMaxEvents = def.BatchMaxEvents
		}
		if cfg.BatchMaxBytes <= 0 {
			cfg.BatchMaxBytes = def.BatchMaxBytes
		}
		if cfg.BatchLinger <= 0 {
			cfg.BatchLinger = def.BatchLinger
		}
		if cfg.Coalesce == nil {
			cfg.Coalesce = &def.Coalesce
		}
	}
	cfg.defaults()
	if stats == nil {
		stats = new(DeliveryStats)
	}
	var targetOffsets Offsets
	if err := retry(ctx, cfg, stats, log, "open", func() error {
		var err error
		targetOffsets, err = t.Open(ctx)
		return err
	}); err != nil {
		return err
	}
	defer t.Close()
	stored, err := store.TargetOffsets(cfg.Target)
	if err != nil {
		return err
	}
	if targetOffsets != nil {
		stored = targetOffsets
		if err := store.SaveTargetOffsets(cfg.Target, targetOffsets); err != nil {
			return err
		}
	}
	base, err := cfg.Client.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(base,
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(cfg.TopicRegex),
		kgo.ConsumeExcludeTopics(excludePatterns(cfg.ExcludeTopics)...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.MetadataMaxAge(5*time.Second),
		// One fetch in flight or buffered at a time, of at most
		// fetchMaxBytes (see there).
		kgo.FetchMaxBytes(fetchMaxBytes),
		kgo.FetchMaxPartitionBytes(fetchMaxBytes),
		kgo.MaxConcurrentFetches(1),
		// A restarted process rejoins after the dead member's session
		// expires: keep that short (the default is 45 s).
		kgo.SessionTimeout(10*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.AdjustFetchOffsetsFn(func(_ context.Context, m map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
			for topic, parts := range m {
				for p, committed := range parts {
					tp := TopicPartition{topic, p}
					if off, ok := stored[tp]; ok && (targetOffsets != nil || off > committed.EpochOffset().Offset) {
						parts[p] = kgo.NewOffset().At(off).WithEpoch(-1)
					}
				}
			}
			return m, nil
		}),
	)...)
	if err != nil {
		return err
	}
	// With BlockRebalanceOnPoll, leaving the group waits for the rebalance
	// we may be blocking; CloseAllowingRebalance lifts it first.
	defer cl.CloseAllowingRebalance()

	d := &deliverer{cfg: cfg, t: t, r: r, store: store, dlq: dlq, cl: cl, stats: stats, log: log}
	if ro, ok := t.(RowsOnly); ok && ro.RowsOnly() {
		d.rowsOnly = true
	}
	return d.loop(ctx)
}

type deliverer struct {
	cfg   DeliveryConfig
	t     Target
	r     Router
	store OffsetStore
	dlq   *DLQ
	cl    *kgo.Client
	stats *DeliveryStats
	log   *slog.Logger
	// rowsOnly: the target reads no Value or Headers (RowsOnly), so its
	// messages are built without them.
	rowsOnly bool
	lastTP   []Header // see rowsOnlyMessages
	// spare is the last applied batch's message array, for the next.
	spare []Message
}

func (d *deliverer) loop(ctx context.Context) error {
	for {
		if !d.waitWhilePaused(ctx) {
			return nil
		}
		batch, dead, err := d.collect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		// A pause that came while polling holds this batch back too.
		if !d.waitWhilePaused(ctx) {
			return nil
		}
		if len(batch.Offsets) > 0 {
			msgs := batch.Messages
			if err := d.apply(ctx, batch, dead); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			// The next batch reuses the array (Apply keeps nothing of
			// a batch it applied), emptied of this one's rows and records.
			clear(msgs)
			d.spare = msgs[:0]
		}
		d.cl.AllowRebalance()
	}
}

// waitWhilePaused blocks while the target is paused; false means ctx ended.
func (d *deliverer) waitWhilePaused(ctx context.Context) bool {
	for d.stats.Paused.Load() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}

// collect polls until the batch is full or has lingered.
func (d *deliverer) collect(ctx context.Context) (*Batch, []DeadLetter, error) {
	b := &Batch{Offsets: Offsets{}, Messages: d.spare}
	d.spare = nil
	var dead []DeadLetter
	bytes := 0
	var deadline time.Time
	for {
		pollCtx := ctx
		var cancel context.CancelFunc = func() {}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				if *d.cfg.Coalesce {
					b.Messages = coalesceInPlace(b.Messages)
				}
				return b, dead, nil
			}
			pollCtx, cancel = context.WithTimeout(ctx, left)
		}
		fs := d.cl.PollRecords(pollCtx, d.cfg.BatchMaxEvents-len(b.Messages))
		cancel()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		for _, e := range fs.Errors() {
			if errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, context.Canceled) {
				continue
			}
			if errors.Is(e.Err, kgo.ErrClientClosed) {
				return nil, nil, e.Err
			}
			d.log.Warn("fetch error", "topic", e.Topic, "partition", e.Partition, "err", e.Err)
		}
		fs.EachRecord(func(rec *kgo.Record) {
			b.Offsets[TopicPartition{rec.Topic, rec.Partition}] = rec.Offset + 1
			bytes += len(rec.Value)
			n := len(b.Messages)
			var err error
			if ar, ok := d.r.(AppendRouter); ok {
				b.Messages, err = ar.AppendEval(b.Messages, rec)
			} else {
				var msgs []Message
				msgs, err = d.r.Eval(rec)
				b.Messages = append(b.Messages, msgs...)
			}
			for _, e := range splitErrors(err) {
				route := ""
				var re *RouteError
				if errors.As(e, &re) {
					route = re.Route
				}
				dead = append(dead, DeadLetter{Msg: rawMessage(rec), Route: route, Target: d.cfg.Target, Err: e, Attempts: 1})
			}
			if d.rowsOnly {
				d.rowsOnlyMessages(b.Messages[n:])
			}
		})
		if len(b.Offsets) > 0 && deadline.IsZero() {
			deadline = time.Now().Add(d.cfg.BatchLinger)
		}
		if len(b.Messages) >= d.cfg.BatchMaxEvents || bytes >= d.cfg.BatchMaxBytes {
			if *d.cfg.Coalesce {
				b.Messages = coalesceInPlace(b.Messages)
			}
			return b, dead, nil
		}
	}
}

func rawMessage(rec *kgo.Record) Message {
	m := Message{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Value: rec.Value, Headers: rec.Headers, Subject: string(rec.Key)}
	for _, h := range rec.Headers {
		if h.Key == "ce_id" {
			m.ID = string(h.Value)
		}
	}
	return m
}

// apply delivers one batch: dead letters first, then the target, then the
// checkpoint (see the invariants on Deliver).
func (d *deliverer) apply(ctx context.Context, b *Batch, dead []DeadLetter) error {
	attempts := 0
	start := time.Now()
	var applied []Message // applied by a call that also rejected records
	err := retry(ctx, d.cfg, d.stats, d.log, "apply", func() error {
		attempts++
		if len(dead) > 0 && d.dlq != nil {
			if err := d.reread(ctx, dead); err != nil {
				return err
			}
			if err := d.dlq.Send(ctx, dead); err != nil {
				return err
			}
			d.stats.DeadLetter.Add(int64(len(dead)))
			dead = nil
		}
		if len(b.Messages) == 0 {
			return nil
		}
		err := d.t.Apply(ctx, b)
		var re *RecordErrors
		if errors.As(err, &re) {
			var rest []Message
			var poison []DeadLetter
			for i, m := range b.Messages {
				if e, bad := re.Failed[i]; bad {
					poison = append(poison, DeadLetter{Msg: m, Route: m.Route, Target: d.cfg.Target, Err: e, Attempts: attempts, reread: d.rowsOnly})
				} else {
					rest = append(rest, m)
				}
			}
			d.log.Warn("target rejected records; sending them to the dead-letter queue", "target", d.cfg.Target, "count", len(poison))
			dead = poison
			if re.Applied {
				applied = rest
				b.Messages = nil
			} else {
				b.Messages = rest
			}
			return errRetryNow
		}
		return err
	})
	if err != nil {
		return err
	}
	if applied == nil {
		applied = b.Messages
	} else {
		applied = append(applied, b.Messages...)
	}
	d.stats.Delivered.Add(int64(len(applied)))
	d.stats.Batches.Add(1)
	if d.stats.BatchObserver != nil {
		d.stats.BatchObserver(len(applied), time.Since(start))
	}
	if d.stats.AppliedObserver != nil {
		d.stats.AppliedObserver(applied, start)
	}
	var newest time.Time
	for i := range applied {
		if t := applied[i].Time; t.After(newest) {
			newest = t
		}
	}
	if !newest.IsZero() {
		d.stats.LastSourceTime.Store(newest.UnixNano())
	}
	if err := d.store.SaveTargetOffsets(d.cfg.Target, b.Offsets); err != nil {
		return fmt.Errorf("offset store: %w", err)
	}
	d.stats.LastCheckpoint.Store(time.Now().UnixNano())
	// The group commit is for visibility and fail-over; Badger (or the
	// target) already holds the truth, so a failure here is only logged.
	offs := map[string]map[int32]kgo.EpochOffset{}
	for tp, o := range b.Offsets {
		if offs[tp.Topic] == nil {
			offs[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		offs[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: -1, Offset: o}
	}
	d.cl.CommitOffsets(ctx, offs, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil && ctx.Err() == nil {
			d.log.Debug("commit offsets to the consumer group", "err", err)
		}
	})
	return nil
}

// errRetryNow asks retry to run the function again at once (progress was made).
var errRetryNow = errors.New("retry now")

// retry runs fn until it succeeds, fails permanently, or ctx ends, backing
// off exponentially with full jitter between attempts.
func retry(ctx context.Context, cfg DeliveryConfig, stats *DeliveryStats, log *slog.Logger, what string, fn func() error) error {
	backoff := cfg.RetryMin
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			stats.FailingSince.Store(0)
			return nil
		}
		if errors.Is(err, errRetryNow) {
			attempt = 0
			continue
		}
		if IsPermanent(err) {
			return fmt.Errorf("target %q: %w", cfg.Target, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		stats.Retries.Add(1)
		stats.FailingSince.CompareAndSwap(0, time.Now().UnixNano())
		stats.LastError.Store(err.Error())
		// Equal jitter: between half and all of the current backoff.
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff/2)+1))
		log.Warn("target "+what+" failed; retrying", "target", cfg.Target, "attempt", attempt, "in", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(backoff*2, cfg.RetryMax)
	}
}

// excludePatterns turns topic names into exact-match regular expressions
// (ConsumeExcludeTopics takes patterns when consuming by regex).
func excludePatterns(topics []string) []string {
	out := make([]string, len(topics))
	for i, t := range topics {
		out[i] = "^" + regexp.QuoteMeta(t) + "$"
	}
	return out
}

// splitErrors returns the errors joined in err (errors.Join), or err alone.
func splitErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Coalesce keeps only the last message of each (route, table, key), in the
// order of those last messages. A message without a key (a truncate) is a
// barrier: nothing is coalesced across it. The batch's offsets are not
// affected: every dropped message is superseded by a later one that is
// applied in the same batch.
func Coalesce(msgs []Message) []Message {
	return coalesce(make([]Message, 0, len(msgs)), msgs)
}

// coalesceInPlace is Coalesce reusing msgs' array (a batch's messages are
// held at once: a copy would add a quarter of their size again). The tail it
// frees is cleared so that it holds no rows or records.
func coalesceInPlace(msgs []Message) []Message {
	out := coalesce(msgs[:0], msgs)
	clear(msgs[len(out):])
	return out
}

// coalesce appends the kept messages of msgs to out. out may share msgs'
// array from its start: a message is only ever written at or before the
// index it is read from, after it was read.
func coalesce(out, msgs []Message) []Message {
	type key struct{ route, db, schema, table, subject string }
	start := 0
	flush := func(seg []Message) {
		last := make(map[key]int, len(seg))
		for i, m := range seg {
			last[key{m.Route, m.Database, m.Schema, m.Table, m.Subject}] = i
		}
		for i, m := range seg {
			if last[key{m.Route, m.Database, m.Schema, m.Table, m.Subject}] == i {
				out = append(out, m)
			}
		}
	}
	for i, m := range msgs {
		if m.Subject == "" {
			flush(msgs[start:i])
			out = append(out, m)
			start = i + 1
		}
	}
	flush(msgs[start:])
	return out
}
