// Package target defines the one interface every destination implements and
// the shared delivery layer around it: batching, bounded in-flight work,
// retries with backoff, dead-lettering and checkpoints. A new target is one
// folder in connectors/ plus a Register call.
package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
)

// Message is one routed change bound for a target.
type Message struct {
	// Topic, Partition and Offset locate the Kafka record the message came from.
	Topic     string
	Partition int32
	Offset    int64

	ID      string // CloudEvents id; stable across replays
	Source  string // CloudEvents source
	Op      event.Op
	Subject string // rendered primary key ("id=42")
	// Database, Schema and Table name the source table.
	Database, Schema, Table string
	// Time is the source commit time.
	Time time.Time
	// Position is the source position of the change's transaction.
	Position string
	// TxID is the source transaction id (the txid extension), "" for
	// snapshot rows.
	TxID string
	// Row is the route's output: the result of its `map` expression, or the
	// after image (the before image for a delete) when it has none.
	// Values are JSON-decoded: nil, bool, float64/json.Number, string,
	// []any, map[string]any.
	Row map[string]any
	// Route names the route that produced the message.
	Route string
	// Record is the original record value and headers, for targets that
	// forward the CloudEvent itself (http, kafka) and for the dead-letter
	// queue. Both are the consumed record's own, shared by every message
	// routed from it: read them, do not modify them.
	Value   []byte
	Headers []Header
}

// Header is a Kafka record header. It is franz-go's own type, so that a
// message shares its record's headers instead of holding a copy (about
// 500 bytes per message for Plume's CloudEvents headers).
type Header = kgo.RecordHeader

// TopicPartition names a partition of a topic.
type TopicPartition struct {
	Topic     string
	Partition int32
}

// Offsets maps a partition to the next offset to read from it: the offset
// after the last record that is done.
type Offsets map[TopicPartition]int64

// Sorted returns the entries in a stable order, for writing them out.
func (o Offsets) Sorted() []TopicPartition {
	tps := make([]TopicPartition, 0, len(o))
	for tp := range o {
		tps = append(tps, tp)
	}
	sort.Slice(tps, func(i, j int) bool {
		if tps[i].Topic != tps[j].Topic {
			return tps[i].Topic < tps[j].Topic
		}
		return tps[i].Partition < tps[j].Partition
	})
	return tps
}

// Batch is what a target applies in one call.
type Batch struct {
	Messages []Message
	// Offsets is where each partition stands once this batch is done. It
	// covers partitions whose records were all filtered out by the routes,
	// so a transactional target can store it with its rows.
	Offsets Offsets
}

// Target is a destination. The delivery layer calls its methods from a
// single goroutine.
type Target interface {
	// Open connects. A target that stores its read offsets atomically with
	// its data (a SQL transaction, a file commit) returns them: they are
	// authoritative over the offset store. Other targets return nil.
	Open(ctx context.Context) (Offsets, error)
	// Apply makes every message of the batch durable in the target, or
	// returns an error. A transactional target writes b.Offsets in the same
	// transaction as the rows, so a replay after a crash is a no-op.
	//
	// Errors: wrap with Permanent for a failure that retrying cannot fix for
	// the whole target (bad credentials: the pipeline stops); return
	// *RecordErrors for individual poison messages (the delivery layer
	// writes them to the dead-letter queue, then, unless the target says the
	// rest was applied, calls Apply again with the rest of the batch and the
	// same offsets); anything else is retried with backoff.
	//
	// Once Apply has returned nil, the layer reuses b.Messages' array for
	// the next batch: keep nothing of it.
	Apply(ctx context.Context, b *Batch) error
	// Close releases connections.
	Close() error
}

// Factory builds a target from its configuration block.
type Factory func(ctx context.Context, env Env) (Target, error)

// Env is what a target factory gets.
type Env struct {
	Pipeline *config.Pipeline
	Name     string        // the target's name in the config
	Config   config.Target // decode with Config.Decode(&yourStruct)
	Log      *slog.Logger
	// Kafka is the pipeline's own Kafka client settings, with the embedded
	// broker's actual address. It is zero when the target is built without
	// running the pipeline (plume validate).
	Kafka kafka.ClientConfig
}

// RowsOnly is implemented by a target type that reads only a message's Row
// and attributes, never Value or Headers (it writes rows, not the
// CloudEvent). When RowsOnly returns true, the delivery layer builds the
// target's messages without them: they reference the consumed record's
// decompressed batch and its headers, about half of what a batch holds. A
// message the target rejects (RecordErrors) gets its record again from
// Kafka, by topic, partition and offset, before it is dead-lettered.
type RowsOnly interface {
	RowsOnly() bool
}

// InternalTopics is implemented by targets that keep topics of their own
// under the pipeline's topic prefix (the kafka target's offsets topic);
// no delivery loop consumes them.
type InternalTopics interface {
	InternalTopics() []string
}

var (
	regMu     sync.Mutex
	factories = map[string]Factory{}
)

// Register makes a target type available to pipelines. Connectors call it
// from init.
func Register(typ string, f Factory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := factories[typ]; dup {
		panic("target type registered twice: " + typ)
	}
	factories[typ] = f
}

// New builds the named target of a pipeline.
func New(ctx context.Context, env Env) (Target, error) {
	regMu.Lock()
	f := factories[env.Config.Type]
	regMu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("target %q: unknown type %q (known: %v)", env.Name, env.Config.Type, Types())
	}
	return f(ctx, env)
}

// Types lists the registered target types.
func Types() []string {
	regMu.Lock()
	defer regMu.Unlock()
	var ts []string
	for t := range factories {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not retryable for the whole target.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// RecordErrors reports messages of a batch that the target rejected for
// good (a constraint violation, a 400).
type RecordErrors struct {
	// Failed maps an index into Batch.Messages to the target's reason.
	Failed map[int]error
	// Applied reports that every other message of the batch was applied
	// (and, for a transactional target, the offsets committed). When false,
	// nothing was committed and the layer re-applies the rest.
	Applied bool
}

func (e *RecordErrors) Error() string {
	return fmt.Sprintf("%d record(s) rejected by the target", len(e.Failed))
}
