package http

import (
	"context"
	"errors"
	"log/slog"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

// decodeRouter routes every record to the target as one message.
type decodeRouter struct{ t testing.TB }

func (r decodeRouter) Eval(rec *kgo.Record) ([]target.Message, error) {
	ev, err := event.Decode(rec)
	if err != nil || ev == nil {
		return nil, err
	}
	return []target.Message{fromRecord(r.t, rec, "all")}, nil
}

type memStore struct {
	mu   sync.Mutex
	offs map[string]target.Offsets
}

func (s *memStore) TargetOffsets(name string) (target.Offsets, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offs[name], nil
}

func (s *memStore) SaveTargetOffsets(name string, o target.Offsets) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offs == nil {
		s.offs = map[string]target.Offsets{}
	}
	c := target.Offsets{}
	for k, v := range s.offs[name] {
		c[k] = v
	}
	for k, v := range o {
		c[k] = v
	}
	s.offs[name] = c
	return nil
}

// TestThroughDeliveryLayer runs the target under target.Deliver with an
// in-process Kafka: a receiver that fails the first requests with 503 and
// rejects one event with 422. Every other event is delivered, the rejected
// one lands in the dead-letter topic with the receiver's reason, and a
// replay from scratch (a lost offset store) redelivers with the same
// Idempotency-Keys.
func TestThroughDeliveryLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process Kafka")
	}
	const topic, dlqTopic, n = "shop-sync.public.products", "shop-sync.dlq", 30
	cluster := testharness.Kfake(t, kfake.NumBrokers(1), kfake.SeedTopics(1, topic, dlqTopic))
	brokers := testharness.KfakeBrokers(cluster)
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	enc := &event.Encoder{Pipeline: pipeline}
	var poisonID string
	for i := range n {
		c := insert(int64(i%7), int64(i))
		if i == 11 {
			c.After[0] = int64(999)
			poisonID = c.ID()
		}
		rec := enc.Record(topic, c)
		if err := prod.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	rc := receiver.New()
	rc.Strict, rc.Keep = true, true
	var mu sync.Mutex
	unavailable := 2
	rc.Respond = func(r *nethttp.Request, evs []receiver.Event) int {
		mu.Lock()
		defer mu.Unlock()
		if unavailable > 0 {
			unavailable--
			return nethttp.StatusServiceUnavailable
		}
		for _, e := range evs {
			if e.ID == poisonID {
				return nethttp.StatusUnprocessableEntity
			}
		}
		return 0
	}
	srv := serve(t, rc)

	// Wait on the receiver and the dead letters: the layer's Delivered
	// counter misses the rest of a batch that had a rejected record.
	run := func(store *memStore, group string, finished func() bool) *target.DeliveryStats {
		cfg := cfgFor(srv.URL)
		cfg.Concurrency = 3
		tg := newTestTarget(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stats := &target.DeliveryStats{}
		dlq := target.NewDLQ(prod, dlqTopic)
		done := make(chan error, 1)
		go func() {
			done <- target.Deliver(ctx, target.DeliveryConfig{
				Pipeline: pipeline, Target: "erp", Client: kafka.ClientConfig{Brokers: brokers}, Group: group,
				TopicRegex: `^shop-sync\..*`, ExcludeTopics: []string{dlqTopic},
				BatchLinger: 20 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
			}, tg, decodeRouter{t}, store, dlq, stats, slog.New(slog.DiscardHandler))
		}()
		for !finished() || stats.DeadLetter.Load() < 1 {
			select {
			case err := <-done:
				t.Fatalf("Deliver ended: %v (delivered %d, dead %d, rc %+v)", err, stats.Delivered.Load(), stats.DeadLetter.Load(), rc.Stats())
			case <-time.After(10 * time.Millisecond):
			}
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Deliver: %v", err)
		}
		return stats
	}

	stats := run(&memStore{}, "g1", func() bool { return rc.Stats().Unique >= n-1 })
	if stats.DeadLetter.Load() != 1 || stats.Retries.Load() == 0 {
		t.Fatalf("dead letters %d, retries %d", stats.DeadLetter.Load(), stats.Retries.Load())
	}
	st := rc.Stats()
	if st.Unique != n-1 || st.Overlaps != 0 {
		t.Fatalf("receiver %+v", st)
	}
	keys := map[string]string{}
	for _, e := range rc.Events() {
		keys[e.ID] = e.IdempotencyKey
	}

	// The dead letter carries the receiver's reason.
	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(dlqTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	fs := cons.PollFetches(pctx)
	recs := fs.Records()
	if len(recs) != 1 {
		t.Fatalf("%d dead letters (%v)", len(recs), fs.Errors())
	}
	hdr := map[string]string{}
	for _, h := range recs[0].Headers {
		hdr[h.Key] = string(h.Value)
	}
	if hdr["ce_id"] != poisonID || !strings.Contains(hdr["ce_dlqerror"], "HTTP 422") || hdr["ce_dlqtarget"] != "erp" {
		t.Fatalf("dead letter headers %v", hdr)
	}

	// Replay everything (offsets lost): same keys, counted as duplicates.
	run(&memStore{}, "g2", func() bool { return rc.Stats().Duplicates >= n-1 })
	st = rc.Stats()
	if st.Unique != n-1 || st.Duplicates != n-1 || st.Overlaps != 0 {
		t.Fatalf("after replay %+v", st)
	}
	for _, e := range rc.Events() {
		if keys[e.ID] != e.IdempotencyKey {
			t.Fatalf("Idempotency-Key of %s changed on replay", e.ID)
		}
	}
}
