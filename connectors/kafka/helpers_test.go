package kafka

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// quiet discards logs unless PLUME_TEST_LOG is set.
var quiet = func() *slog.Logger {
	if os.Getenv("PLUME_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}()

// pipelineYAML returns a pipeline file named shop whose only route sends
// everything to the target "out", defined by targetYAML (indented by 4).
// brokers are the pipeline's kafka.brokers (none: the embedded broker).
func pipelineYAML(brokers []string, targetYAML string) string {
	return namedPipelineYAML("shop", brokers, targetYAML)
}

func namedPipelineYAML(name string, brokers []string, targetYAML string) string {
	var b strings.Builder
	b.WriteString("name: " + name + "\n")
	b.WriteString(`state_dir: ./data
source:
  type: postgres
  dsn: "postgres://plume@db:5432/shop"
  tables: ["public.*"]
`)
	if len(brokers) > 0 {
		b.WriteString("kafka:\n  brokers: [")
		for i, br := range brokers {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Quote(br))
		}
		b.WriteString("]\n")
	}
	b.WriteString(`routes:
  - name: all
    to: [out]
targets:
  out:
`)
	b.WriteString(targetYAML)
	return b.String()
}

func parsePipeline(t testing.TB, brokers []string, targetYAML string) *config.Pipeline {
	t.Helper()
	p, err := config.Parse("pipeline.yaml", []byte(pipelineYAML(brokers, targetYAML)))
	if err != nil {
		t.Fatalf("pipeline config: %v", err)
	}
	return p
}

// build builds the target "out" of p through the registry, as the runtime
// does.
func build(t testing.TB, p *config.Pipeline) (*Target, error) {
	t.Helper()
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "out", Config: p.Targets["out"], Log: quiet})
	if err != nil {
		return nil, err
	}
	return tg.(*Target), nil
}

// mustTarget builds the target "out" writing to the pipeline's own cluster
// at brokers, with the given target keys (indented by 4). It is closed at
// cleanup.
func mustTarget(t testing.TB, brokers []string, keys string) *Target {
	t.Helper()
	tg, err := build(t, parsePipeline(t, brokers, "    type: kafka\n"+keys))
	if err != nil {
		t.Fatalf("build target: %v", err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

func mustOpen(t testing.TB, tg *Target) target.Offsets {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	offs, err := tg.Open(ctx)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if offs == nil {
		t.Fatal("Open returned nil offsets: a transactional target must return a non-nil map")
	}
	return offs
}

func apply(tg *Target, b *target.Batch) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return tg.Apply(ctx, b)
}

func mustApply(t testing.TB, tg *Target, b *target.Batch) {
	t.Helper()
	if err := apply(tg, b); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// The source tables of the synthetic input.
var (
	productsTable = &event.Table{Connector: "postgresql", Database: "shopdb", Schema: "public", Name: "products",
		Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "name", Type: "text"}, {Name: "price", Type: "numeric(10,2)"}},
		Key:     []int{0}}
	ordersTable = &event.Table{Connector: "postgresql", Database: "shopdb", Schema: "public", Name: "orders",
		Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "note", Type: "text"}, {Name: "qty", Type: "integer"}},
		Key:     []int{0}}
)

// change returns the n-th synthetic change: products and orders
// alternately, keys repeating so that per-key order matters, inserts,
// updates and deletes, values with characters JSON encoders like to escape.
func change(n int) *event.Change {
	tbl := productsTable
	if n%3 == 2 {
		tbl = ordersTable
	}
	key := int64(n % 17)
	row := []event.Value{key, fmt.Sprintf("item <%d> & \"more\" é", n), event.Decimal(fmt.Sprintf("%d.%02d", n, n%100))}
	if tbl == ordersTable {
		row = []event.Value{key, fmt.Sprintf("note %d", n), int64(n)}
	}
	c := &event.Change{Table: tbl, Commit: time.Date(2024, 5, 1, 12, 0, 0, n*1000, time.UTC),
		TxID: strconv.Itoa(1000 + n), Pos: "lsn:0/" + strconv.FormatInt(int64(0x1000+n), 16), Index: 0, TableIndex: 1}
	switch n % 5 {
	case 3:
		c.Op, c.Before, c.After = event.OpUpdate, row, row
	case 4:
		c.Op, c.Before = event.OpDelete, row
	default:
		c.Op, c.After = event.OpCreate, row
	}
	return c
}

// inputTopic is where capture would put a table's events.
func inputTopic(tbl *event.Table) string { return "shop.public." + tbl.Name }

// input is a synthetic stream: the records capture would have written and
// the messages the router makes of them for the target.
type input struct {
	recs []*kgo.Record
	msgs []target.Message
}

// makeInput encodes n changes (binary or structured mode) as records of
// 3-partition input topics, partitioned by key, with offsets assigned as a
// broker would, and routes each through the pipeline's router.
func makeInput(t testing.TB, n int, structured bool) *input {
	t.Helper()
	tr := testRoutes(t)
	enc := event.Encoder{Pipeline: "shop", Structured: structured}
	next := map[target.TopicPartition]int64{}
	in := &input{}
	for i := 0; i < n; i++ {
		c := change(i)
		rec := enc.Record(inputTopic(c.Table), c)
		h := fnv.New32a()
		h.Write(rec.Key)
		rec.Partition = int32(h.Sum32() % 3)
		tp := target.TopicPartition{Topic: rec.Topic, Partition: rec.Partition}
		rec.Offset = next[tp]
		next[tp]++
		msgs, err := tr.Eval(rec)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("route record %d: %d messages, %v", i, len(msgs), err)
		}
		in.recs = append(in.recs, rec)
		in.msgs = append(in.msgs, msgs[0])
	}
	return in
}

// testRoutes compiles the routes of pipelineYAML: everything to "out".
func testRoutes(t testing.TB) *router.TargetRoutes {
	t.Helper()
	rt, err := router.Compile(parsePipeline(t, nil, "    type: kafka\n").Routes)
	if err != nil {
		t.Fatal(err)
	}
	return rt.ForTarget("out")
}

// batches cuts msgs into batches of size messages, each with the offsets
// the delivery layer would give it.
func batches(msgs []target.Message, size int) []*target.Batch {
	var out []*target.Batch
	for len(msgs) > 0 {
		n := min(size, len(msgs))
		b := &target.Batch{Messages: msgs[:n:n], Offsets: target.Offsets{}}
		for _, m := range b.Messages {
			b.Offsets[target.TopicPartition{Topic: m.Topic, Partition: m.Partition}] = m.Offset + 1
		}
		out = append(out, b)
		msgs = msgs[n:]
	}
	return out
}

// readOutput reads topics from the start with read_committed until it has
// at least want records and nothing more arrives for a while, or the
// timeout passes.
func readOutput(t testing.TB, brokers []string, want int, topics ...string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.MetadataMinAge(100*time.Millisecond), kgo.MetadataMaxAge(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	quietSince := time.Time{}
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				t.Logf("read %s: %v", e.Topic, e.Err)
			}
		}
		switch {
		case n > 0 || len(out) < want:
			quietSince = time.Time{}
		case quietSince.IsZero():
			quietSince = time.Now()
		case time.Since(quietSince) > 700*time.Millisecond:
			return out
		}
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// checkExactlyOnce checks that out holds the output of every message of in
// exactly once, and that each (table, key)'s output keeps the input order.
func checkExactlyOnce(t testing.TB, in []target.Message, out []*kgo.Record) {
	t.Helper()
	seen := map[string]int{}
	perKey := map[string][]string{}
	for _, r := range out {
		id := header(r, "ce_id")
		seen[id]++
		k := header(r, "ce_table") + "/" + string(r.Key)
		perKey[k] = append(perKey[k], id)
	}
	wantKey := map[string][]string{}
	for _, m := range in {
		if seen[m.ID] != 1 {
			t.Errorf("event %s (%s/%d@%d) written %d times", m.ID, m.Topic, m.Partition, m.Offset, seen[m.ID])
		}
		delete(seen, m.ID)
		k := m.Table + "/" + m.Subject
		wantKey[k] = append(wantKey[k], m.ID)
	}
	for id, n := range seen {
		t.Errorf("unexpected output event %q (%d times)", id, n)
	}
	if t.Failed() {
		t.FailNow()
	}
	for k, want := range wantKey {
		if got := perKey[k]; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("order of %s: got %v, want %v", k, got, want)
		}
	}
}

// memStore is an in-memory target.OffsetStore.
type memStore struct {
	mu sync.Mutex
	m  map[string]target.Offsets
}

func (s *memStore) TargetOffsets(name string) (target.Offsets, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := target.Offsets{}
	for tp, v := range s.m[name] {
		o[tp] = v
	}
	return o, nil
}

func (s *memStore) SaveTargetOffsets(name string, o target.Offsets) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]target.Offsets{}
	}
	cur := s.m[name]
	if cur == nil {
		cur = target.Offsets{}
		s.m[name] = cur
	}
	for tp, v := range o {
		cur[tp] = v
	}
	return nil
}

// routerFor adapts the pipeline's router to the delivery layer.
type routerFor struct{ tr *router.TargetRoutes }

func (r routerFor) Eval(rec *kgo.Record) ([]target.Message, error) { return r.tr.Eval(rec) }
