// Package runtime assembles a pipeline from its configuration and runs it:
// the embedded broker (when no Kafka cluster is configured), the capture
// stage (source -> Kafka) and one delivery loop per target (Kafka -> router
// -> target). It owns start-up order, shutdown, and error propagation.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/offsets"
	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/tracing"
)

// Stage selects what a process runs.
type Stage string

const (
	StageAll     Stage = "all"     // capture and delivery in one process
	StageCapture Stage = "capture" // one active reader per source
	StageRoute   Stage = "route"   // delivery to targets; scale out as consumers
)

// Pipeline is a running pipeline.
type Pipeline struct {
	Cfg   *config.Pipeline
	Log   *slog.Logger
	Stage Stage

	Store  *offsets.Store
	Broker *kafka.Embedded
	Client kafka.ClientConfig
	Router *router.Router
	topic  func(*event.Change) (string, error)

	srcMu        sync.Mutex
	src          capture.Source // the running source, nil between restarts
	CaptureStats capture.Stats
	TargetStats  map[string]*target.DeliveryStats
	// Routed counts the messages each route produced for each target
	// (target -> route -> count), for the metrics.
	Routed map[string]map[string]*atomic.Int64

	admMu sync.Mutex
	adm   *kadm.Client // for lag queries, created on first use

	tracer *tracing.Tracer // nil without tracing.otlp.endpoint
}

// ClientConfig maps the pipeline's kafka block to client settings. With the
// embedded broker, brokers is its address.
func ClientConfig(p *config.Pipeline, brokers []string) (kafka.ClientConfig, error) {
	cc := kafka.ClientConfig{
		Brokers:       brokers,
		Compression:   p.Kafka.Compression,
		SASLMechanism: p.Kafka.SASL.Mechanism,
		SASLUser:      p.Kafka.SASL.Username,
		SASLPassword:  p.Kafka.SASL.Password.Reveal(),
	}
	if p.Kafka.TLS.Enabled {
		t, err := p.Kafka.TLS.TLS.ClientConfig()
		if err != nil {
			return cc, fmt.Errorf("kafka.tls: %w", err)
		}
		cc.TLS = t
	}
	return cc, nil
}

// New prepares a pipeline: compiles routes, opens the offset store and
// starts the embedded broker if needed. Nothing is read or written before
// every check has passed.
func New(cfg *config.Pipeline, stage Stage, log *slog.Logger) (*Pipeline, error) {
	r, err := router.Compile(cfg.Routes)
	if err != nil {
		return nil, err
	}
	topic, err := TopicFunc(cfg)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{Cfg: cfg, Log: log, Stage: stage, Router: r, topic: topic, TargetStats: map[string]*target.DeliveryStats{},
		Routed: map[string]map[string]*atomic.Int64{}}
	if stage == StageAll || stage == StageRoute {
		for _, name := range cfg.TargetNames() {
			p.TargetStats[name] = &target.DeliveryStats{}
			p.Routed[name] = map[string]*atomic.Int64{}
		}
		for _, rt := range cfg.Routes {
			for _, to := range rt.To {
				if m := p.Routed[to]; m != nil {
					m[rt.Name] = new(atomic.Int64)
				}
			}
		}
	}
	p.Store, err = offsets.Open(filepath.Join(cfg.StateDir, "offsets"))
	if err != nil {
		return nil, err
	}
	if p.tracer, err = tracing.New(cfg.Name, cfg.Tracing, log); err != nil {
		p.Store.Close()
		return nil, err
	}
	brokers := cfg.Kafka.Brokers
	if cfg.Embedded() {
		p.Broker, err = kafka.StartEmbedded(cfg.StateDir, cfg.Kafka.Embedded.Listen, log)
		if err != nil {
			p.Store.Close()
			return nil, err
		}
		brokers = []string{p.Broker.Addr()}
	}
	p.Client, err = ClientConfig(cfg, brokers)
	if err != nil {
		p.Close()
		return nil, err
	}
	if err := p.checkBrokers(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// checkBrokers makes sure the brokers answer, with bounded retries.
func (p *Pipeline) checkBrokers() error {
	opts, err := p.Client.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = cl.Ping(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
	return fmt.Errorf("kafka brokers %v unreachable after 5 attempts: %w", p.Client.Brokers, last)
}

// Close releases the offset store and stops the embedded broker.
func (p *Pipeline) Close() {
	if p.tracer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := p.tracer.Close(ctx); err != nil {
			p.Log.Warn("tracing: flushing spans", "err", err)
		}
		cancel()
		p.tracer = nil
	}
	p.admMu.Lock()
	if p.adm != nil {
		p.adm.Close()
		p.adm = nil
	}
	p.admMu.Unlock()
	if p.Broker != nil {
		p.Broker.Close()
	}
	if p.Store != nil {
		p.Store.Close()
	}
}

// Run runs the pipeline's stages until ctx is cancelled (a clean shutdown,
// nil error) or a stage fails (the others are stopped and the error
// returned).
func (p *Pipeline) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	fail := func(err error) {
		if err == nil || errors.Is(err, context.Canceled) {
			return
		}
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		cancel(err)
	}
	if p.Stage == StageAll || p.Stage == StageCapture {
		wg.Add(1)
		go func() { defer wg.Done(); fail(p.runCapture(ctx)) }()
	}
	if p.Stage == StageAll || p.Stage == StageRoute {
		dlqClient, err := p.dlqClient()
		if err != nil {
			return err
		}
		defer dlqClient.Close()
		dlq := target.NewDLQ(dlqClient, p.Cfg.DLQTopic())
		// Build every target first: their internal topics are excluded from
		// every delivery loop.
		targets := map[string]target.Target{}
		exclude := []string{p.Cfg.CheckpointTopic(), p.Cfg.DLQTopic()}
		for _, name := range p.Cfg.TargetNames() {
			log := p.Log.With("stage", "deliver", "target", name)
			t, err := target.New(ctx, target.Env{Pipeline: p.Cfg, Name: name, Config: p.Cfg.Targets[name], Log: log, Kafka: p.Client})
			if err != nil {
				cancel(err)
				wg.Wait()
				return err
			}
			targets[name] = t
			if it, ok := t.(target.InternalTopics); ok {
				exclude = append(exclude, it.InternalTopics()...)
			}
		}
		for _, name := range p.Cfg.TargetNames() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fail(p.runTarget(ctx, name, targets[name], exclude, dlq, p.TargetStats[name]))
			}()
		}
	}
	wg.Wait()
	return first
}

func (p *Pipeline) dlqClient() (*kgo.Client, error) {
	opts, err := p.Client.Opts()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	adm := kadm.NewClient(cl)
	if err := kafka.EnsureTopics(context.Background(), adm, p.topicSpec(), p.Cfg.DLQTopic()); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// admin returns a Kafka admin client for lag queries, created on first use
// and closed by Close.
func (p *Pipeline) admin() (*kadm.Client, error) {
	p.admMu.Lock()
	defer p.admMu.Unlock()
	if p.adm != nil {
		return p.adm, nil
	}
	opts, err := p.Client.Opts()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	p.adm = kadm.NewClient(cl)
	return p.adm, nil
}

// TargetLag is how many offsets a target's consumer group is behind the
// last stable offsets of the partitions it has committed, summed: the
// standard Kafka consumer lag. Like every read_committed consumer's lag, it
// counts a transaction marker that follows the last record as one offset,
// so a caught-up target shows at most one per partition.
func (p *Pipeline) TargetLag(ctx context.Context, name string) (int64, error) {
	adm, err := p.admin()
	if err != nil {
		return 0, err
	}
	committed, err := adm.FetchOffsets(ctx, p.Cfg.ConsumerGroup(name))
	if err != nil {
		return 0, err
	}
	if err := committed.Error(); err != nil {
		return 0, err
	}
	topics := committed.Offsets().TopicsSet().Topics()
	if len(topics) == 0 {
		return 0, nil
	}
	ends, err := adm.ListCommittedOffsets(ctx, topics...)
	if err != nil {
		return 0, err
	}
	var lag int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			return
		}
		if c, ok := committed.Lookup(o.Topic, o.Partition); ok && c.Err == nil {
			lag += max(o.Offset-c.At, 0)
		} else {
			lag += max(o.Offset, 0) // nothing committed: the whole partition (an upper bound)
		}
	})
	return lag, nil
}

func (p *Pipeline) topicSpec() kafka.TopicSpec {
	t := p.Cfg.Kafka.Topics
	return kafka.TopicSpec{Partitions: t.Partitions, ReplicationFactor: t.ReplicationFactor, Configs: t.Configs}
}

// runCapture runs the capture stage, restarting it after Kafka-side
// failures (each restart re-fences and resumes from the committed
// checkpoint). Source failures and fencing stop the pipeline.
func (p *Pipeline) runCapture(ctx context.Context) error {
	backoff := time.Second
	for {
		src, err := capture.NewSource(p.Cfg, p.Log.With("stage", "capture"))
		if err != nil {
			return err
		}
		p.setSource(src)
		err = capture.Run(ctx, p.captureConfig(), src, p.Store, &p.CaptureStats, p.Log.With("stage", "capture"))
		p.setSource(nil)
		src.Close()
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || !capture.Retryable(err) {
			return err
		}
		p.Log.Warn("capture failed; restarting from the last committed checkpoint", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (p *Pipeline) captureConfig() capture.Config {
	k := p.Cfg.Kafka
	c := capture.Config{
		Pipeline:           p.Cfg.Name,
		Client:             p.Client,
		TransactionalID:    p.Cfg.TransactionalID(),
		CheckpointTopic:    p.Cfg.CheckpointTopic(),
		Topic:              p.topic,
		Structured:         k.Mode == config.ModeStructured,
		Tombstones:         k.Tombstones,
		TopicSpec:          p.topicSpec(),
		BatchMaxEvents:     k.BatchMaxEvents,
		BatchLinger:        k.BatchLinger.Duration,
		MaxBufferedBytes:   int(k.MaxBufferedBytes),
		MaxMessageBytes:    k.MaxMessageBytes,
		Oversize:           k.Oversize,
		DLQTopic:           p.Cfg.DLQTopic(),
		TransactionTimeout: 5 * time.Minute,
		TraceParent:        p.Cfg.Tracing.TraceParentOn(),
		TraceRatio:         p.traceRatio(),
	}
	if p.tracer != nil {
		c.Tracer = p.tracer
	}
	return c
}

func (p *Pipeline) traceRatio() float64 {
	if r := p.Cfg.Tracing.OTLP.SampleRatio; r != nil {
		return *r
	}
	return 1
}

func (p *Pipeline) runTarget(ctx context.Context, name string, t target.Target, exclude []string, dlq *target.DLQ, stats *target.DeliveryStats) error {
	log := p.Log.With("stage", "deliver", "target", name)
	dl, err := p.Cfg.Targets[name].Delivery()
	if err != nil {
		return err
	}
	cfg := target.DeliveryConfig{
		Pipeline:       p.Cfg.Name,
		Target:         name,
		Client:         p.Client,
		Group:          p.Cfg.ConsumerGroup(name),
		TopicRegex:     "^" + regexp.QuoteMeta(p.Cfg.TopicPrefix()+".") + ".*",
		ExcludeTopics:  exclude,
		BatchMaxEvents: dl.BatchMaxEvents,
		BatchMaxBytes:  dl.BatchMaxBytes,
		BatchLinger:    dl.BatchLinger.Duration,
		Coalesce:       dl.Coalesce, // nil: the target type's default
	}
	if p.tracer != nil {
		stats.AppliedObserver = p.tracer.Delivered(name)
	}
	return target.Deliver(ctx, cfg, t, routerAdapter{tr: p.Router.ForTarget(name), routed: p.Routed[name]}, p.Store, dlq, stats, log)
}

func (p *Pipeline) setSource(s capture.Source) {
	p.srcMu.Lock()
	p.src = s
	p.srcMu.Unlock()
}

func (p *Pipeline) source() capture.Source {
	p.srcMu.Lock()
	defer p.srcMu.Unlock()
	return p.src
}

// ErrNotCapturing is returned by source operations when this process does
// not run the capture stage, or the source is between restarts.
var ErrNotCapturing = errors.New("the capture stage is not running in this process")

// Resnapshot asks the running source to snapshot one table again while
// streaming continues (see docs/postgres.md and docs/mysql.md).
func (p *Pipeline) Resnapshot(table string) error {
	s, ok := p.source().(interface{ Resnapshot(string) error })
	if !ok {
		return ErrNotCapturing
	}
	return s.Resnapshot(table)
}

// SourceLag reports how far capture is behind the source: bytes of log
// (PostgreSQL slot lag; MySQL binlog distance) and seconds from the newest
// committed change's source commit to now (0 when idle and caught up).
func (p *Pipeline) SourceLag(ctx context.Context) (bytes int64, seconds float64, err error) {
	switch s := p.source().(type) {
	case interface {
		SlotLag(context.Context) (int64, error)
	}:
		bytes, err = s.SlotLag(ctx)
	case interface{ Lag() (float64, int64) }:
		seconds, bytes = s.Lag()
		return bytes, seconds, nil
	case nil:
		return 0, 0, ErrNotCapturing
	}
	if last := p.CaptureStats.LastSourceCommit.Load(); last > 0 && bytes > 0 {
		seconds = time.Since(time.Unix(0, last)).Seconds()
	}
	return bytes, seconds, err
}

// ResetCapture makes the next start a first start: an empty checkpoint is
// committed to the checkpoint topic (fencing any running instance) and the
// Badger mirror is cleared.
func (p *Pipeline) ResetCapture(ctx context.Context) error {
	return capture.ResetCheckpoint(ctx, p.captureConfig(), p.Store)
}
