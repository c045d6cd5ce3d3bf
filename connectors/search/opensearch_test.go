package search

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestOpenSearchBulkVersions writes inserts, updates, deletes and a primary
// key change into a real OpenSearch, then replays them and older versions:
// replays count as applied (version conflicts), stale writes change
// nothing, deleted documents stay deleted, and every document's _version
// is the offset of its last change plus one.
func TestOpenSearchBulkVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("needs OpenSearch")
	}
	srv := testharness.OpenSearch(t)
	index := testharness.UniqueName(t)
	e := es{t, srv.URL()}
	tg := newTestTarget(t, cfgFor(srv.URL(), index))
	ctx := context.Background()
	if _, err := tg.Open(ctx); err != nil {
		t.Fatal(err)
	}
	var msgs []target.Message
	for i := range int64(5) {
		msgs = append(msgs, message(t, ins(row(i+1, "SKU-"+strconv.FormatInt(i+1, 10), "1.00", i)), i%2 == 0, i))
	}
	msgs = append(msgs,
		message(t, upd(row(2, "SKU-2", "1.00", int64(1)), row(2, "SKU-2", "9.99", int64(7))), false, 5),
		message(t, del(row(3, "SKU-3", "1.00", int64(2))), false, 6),
		message(t, upd(row(4, "SKU-4", "1.00", int64(3)), row(40, "SKU-4", "1.00", int64(3))), true, 7), // key 4 -> 40
	)
	want := map[string]doc{
		"1":  {true, 1, map[string]any{"id": 1.0, "sku": "SKU-1", "price": "1.00", "qty": 0.0}},
		"2":  {true, 6, map[string]any{"id": 2.0, "sku": "SKU-2", "price": "9.99", "qty": 7.0}},
		"5":  {true, 5, map[string]any{"id": 5.0, "sku": "SKU-5", "price": "1.00", "qty": 4.0}},
		"40": {true, 8, map[string]any{"id": 40.0, "sku": "SKU-4", "price": "1.00", "qty": 3.0}},
	}
	check := func(what string) {
		t.Helper()
		got := e.all(index)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: index holds\n%v\nwant\n%v", what, got, want)
		}
	}
	if err := tg.Apply(ctx, batchOf(msgs...)); err != nil {
		t.Fatal(err)
	}
	check("first apply")

	// The same batch again (a replay after a crash): every item is a
	// version conflict, counted as applied.
	if err := tg.Apply(ctx, batchOf(msgs...)); err != nil {
		t.Fatalf("replay: %v", err)
	}
	check("replay")

	// Older writes arriving late: an older version of 2, the insert of the
	// deleted 3, the insert of 4 before its key changed.
	stale := []target.Message{
		message(t, ins(row(2, "SKU-2", "0.01", int64(0))), false, 1),
		message(t, ins(row(3, "SKU-3", "1.00", int64(2))), false, 2),
		message(t, ins(row(4, "SKU-4", "1.00", int64(3))), false, 3),
	}
	if err := tg.Apply(ctx, batchOf(stale...)); err != nil {
		t.Fatalf("stale: %v", err)
	}
	check("stale writes")

	// Each write of a batch coalesced per document keeps the highest
	// version, whatever the order.
	if err := tg.Apply(ctx, batchOf(
		message(t, upd(row(1, "SKU-1", "1.00", int64(0)), row(1, "SKU-1", "3.00", int64(0))), false, 20),
		message(t, upd(row(1, "SKU-1", "3.00", int64(0)), row(1, "SKU-1", "2.00", int64(0))), false, 19),
	)); err != nil {
		t.Fatal(err)
	}
	want["1"] = doc{true, 21, map[string]any{"id": 1.0, "sku": "SKU-1", "price": "3.00", "qty": 0.0}}
	check("coalesced")
}

// TestOpenSearchMappingConflict: with a strict mapping, a document that
// does not fit is dead-lettered with OpenSearch's reason through the real
// delivery layer, while the rest of the stream is indexed.
func TestOpenSearchMappingConflict(t *testing.T) {
	if testing.Short() {
		t.Skip("needs OpenSearch")
	}
	srv := testharness.OpenSearch(t)
	index := testharness.UniqueName(t)
	e := es{t, srv.URL()}
	const topic, dlqTopic, n = "shop-sync.shop.products", "shop-sync.dlq", 200
	cluster := testharness.Kfake(t, kfake.NumBrokers(1), kfake.SeedTopics(1, topic, dlqTopic))
	brokers := testharness.KfakeBrokers(cluster)
	prod := testharness.KafkaClient(t, brokers)
	enc := &event.Encoder{Pipeline: pipeline}
	poison := map[string]bool{}
	for i := range int64(n) {
		var qty event.Value = i
		if i%50 == 7 {
			qty = "not a number"
			poison[strconv.FormatInt(i, 10)] = true
		}
		c := ins(row(i, "SKU", "1.00", qty))
		c.Index = i
		if err := prod.ProduceSync(context.Background(), enc.Record(topic, c)).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := cfgFor(srv.URL(), index)
	cfg.CreateIndex = &CreateIndex{
		Settings: map[string]any{"number_of_shards": 1, "number_of_replicas": 0},
		Mappings: map[string]any{"dynamic": "strict", "properties": map[string]any{
			"id": map[string]any{"type": "long"}, "sku": map[string]any{"type": "keyword"},
			"price": map[string]any{"type": "keyword"}, "qty": map[string]any{"type": "long"}}},
	}
	tg := newTestTarget(t, cfg)
	stats := deliver(t, tg, brokers, dlqTopic, "g1", func(st *target.DeliveryStats) bool {
		return st.Delivered.Load()+st.DeadLetter.Load() >= n
	})
	if d := stats.DeadLetter.Load(); d != int64(len(poison)) {
		t.Fatalf("%d dead letters, want %d", d, len(poison))
	}
	got := e.all(index)
	if len(got) != n-len(poison) {
		t.Fatalf("%d documents, want %d", len(got), n-len(poison))
	}
	for id := range poison {
		if got[id].Found {
			t.Fatalf("poison document %s indexed", id)
		}
	}
	// The dead letters carry OpenSearch's reason.
	cons := testharness.KafkaClient(t, brokers, kgo.ConsumeTopics(dlqTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs := cons.PollFetches(pctx).Records()
	if len(recs) != len(poison) {
		t.Fatalf("%d dead letters in the topic", len(recs))
	}
	for _, r := range recs {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		if !poison[strings.TrimPrefix(h["ce_subject"], "id=")] || !strings.Contains(h["ce_dlqerror"], "status 400") ||
			!(strings.Contains(h["ce_dlqerror"], "mapper_parsing_exception") || strings.Contains(h["ce_dlqerror"], "document_parsing_exception")) {
			t.Fatalf("dead letter %v", h)
		}
	}
}

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
	offs target.Offsets
}

func (s *memStore) TargetOffsets(string) (target.Offsets, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := target.Offsets{}
	for k, v := range s.offs {
		c[k] = v
	}
	return c, nil
}

func (s *memStore) SaveTargetOffsets(_ string, o target.Offsets) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offs == nil {
		s.offs = target.Offsets{}
	}
	for k, v := range o {
		s.offs[k] = v
	}
	return nil
}

// deliver runs tg under target.Deliver until done(stats) (at most 90s).
func deliver(t *testing.T, tg *Target, brokers []string, dlqTopic, group string, done func(*target.DeliveryStats) bool) *target.DeliveryStats {
	t.Helper()
	prod := testharness.KafkaClient(t, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stats := &target.DeliveryStats{}
	end := make(chan error, 1)
	go func() {
		end <- target.Deliver(ctx, target.DeliveryConfig{
			Pipeline: pipeline, Target: "idx", Client: kafka.ClientConfig{Brokers: brokers}, Group: group,
			TopicRegex: `^shop-sync\..*`, ExcludeTopics: []string{dlqTopic}, BatchMaxEvents: 64,
			BatchLinger: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		}, tg, decodeRouter{t}, &memStore{}, target.NewDLQ(prod, dlqTopic), stats, slog.New(slog.DiscardHandler))
	}()
	for !done(stats) {
		select {
		case err := <-end:
			t.Fatalf("Deliver ended: %v (delivered %d, dead %d)", err, stats.Delivered.Load(), stats.DeadLetter.Load())
		case <-ctx.Done():
			t.Fatalf("not done within 90s: delivered %d, dead %d, last error %v", stats.Delivered.Load(), stats.DeadLetter.Load(), stats.LastError.Load())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-end; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Deliver: %v", err)
	}
	return stats
}

// TestOpenSearchRestartMidStream streams changes of 300 keys (inserts,
// updates, deletes, re-inserts) through the delivery layer while the
// OpenSearch server is restarted: afterwards every document equals the
// last change of its key, with the version of that change, and every
// deleted key is absent.
func TestOpenSearchRestartMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("needs OpenSearch")
	}
	srv := testharness.NewOpenSearch(t)
	index := testharness.UniqueName(t)
	e := es{t, srv.URL()}
	const topic, dlqTopic, keys, changes = "shop-sync.shop.products", "shop-sync.dlq", 300, 6000
	cluster := testharness.Kfake(t, kfake.NumBrokers(1), kfake.SeedTopics(3, topic), kfake.SeedTopics(1, dlqTopic))
	brokers := testharness.KfakeBrokers(cluster)
	prod := testharness.KafkaClient(t, brokers, kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	enc := &event.Encoder{Pipeline: pipeline}

	// The model: per key, the last change and its record's offset.
	type last struct {
		deleted bool
		qty     int64
		version int64
	}
	var mu sync.Mutex
	model := map[string]last{}
	live := map[int64]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	var produced atomic.Int64
	produce := func(ctx context.Context, count int) {
		for i := 0; i < count && ctx.Err() == nil; i++ {
			k := rng.Int64N(keys)
			q := int64(i)
			var c *event.Change
			switch {
			case !live[k]:
				c, live[k] = ins(row(k, "SKU", "1.00", q)), true
			case rng.IntN(5) == 0:
				c, live[k] = del(row(k, "SKU", "1.00", nil)), false
			default:
				c = upd(row(k, "SKU", "1.00", nil), row(k, "SKU", "2.00", q))
			}
			rec := enc.Record(topic, c)
			res := prod.ProduceSync(ctx, rec)
			if err := res.FirstErr(); err != nil {
				t.Errorf("produce: %v", err)
				return
			}
			r := res[0].Record
			mu.Lock()
			model[strconv.FormatInt(k, 10)] = last{deleted: c.Op == event.OpDelete, qty: q, version: r.Offset + 1}
			mu.Unlock()
			produced.Add(1)
			if i%50 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}

	tg := newTestTarget(t, cfgFor(srv.URL(), index))
	var restarted atomic.Bool
	go func() {
		produce(context.Background(), changes/2)
		if err := srv.Stop(); err != nil {
			t.Errorf("stop OpenSearch: %v", err)
		}
		time.Sleep(2 * time.Second) // the target retries meanwhile
		if err := srv.Start(); err != nil {
			t.Errorf("start OpenSearch: %v", err)
		}
		restarted.Store(true)
		produce(context.Background(), changes/2)
	}()
	stats := deliver(t, tg, brokers, dlqTopic, "g1", func(st *target.DeliveryStats) bool {
		return restarted.Load() && produced.Load() == changes && st.Delivered.Load() >= changes
	})
	if stats.Retries.Load() == 0 {
		t.Logf("no retries: the restart fell between batches")
	}
	if d := stats.DeadLetter.Load(); d != 0 {
		t.Fatalf("%d dead letters", d)
	}
	got := e.all(index)
	var bad []string
	for k, l := range model {
		d := got[k]
		switch {
		case l.deleted && d.Found:
			bad = append(bad, fmt.Sprintf("%s: deleted, but indexed at version %d", k, d.Version))
		case !l.deleted && !d.Found:
			bad = append(bad, fmt.Sprintf("%s: missing", k))
		case !l.deleted && (d.Version != l.version || d.Source["qty"] != float64(l.qty)):
			bad = append(bad, fmt.Sprintf("%s: version %d qty %v, want version %d qty %d", k, d.Version, d.Source["qty"], l.version, l.qty))
		}
	}
	for k := range got {
		if _, ok := model[k]; !ok {
			bad = append(bad, k+": not in the stream")
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d differences after the restart (retries %d):\n%s", len(bad), stats.Retries.Load(), strings.Join(bad, "\n"))
	}
	t.Logf("%d changes of %d keys, %d documents, %d retries across the restart", changes, keys, len(got), stats.Retries.Load())
}
