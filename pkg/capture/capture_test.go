package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// synthSource is a deterministic stand-in for a database log, used to test
// the Kafka side of capture in isolation: transaction n has 1 + n%7 rows
// (every 50th has 500), spread over three tables; its checkpoint is n. The
// database sources have their own tests against real servers.
type synthSource struct {
	txns   int
	acked  atomic.Int64
	tables []*event.Table
}

func newSynth(txns int) *synthSource {
	s := &synthSource{txns: txns}
	for _, name := range []string{"a", "b", "c"} {
		s.tables = append(s.tables, &event.Table{Connector: "postgresql", Database: "db", Schema: "public", Name: name,
			Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "v", Type: "bigint"}}, Key: []int{0}})
	}
	s.acked.Store(-1)
	return s
}

func (s *synthSource) rows(n int) int {
	if n%50 == 49 {
		return 500
	}
	return 1 + n%7
}

func (s *synthSource) Run(ctx context.Context, from []byte, em Emitter) error {
	start := 0
	if from != nil {
		last, err := strconv.Atoi(string(from))
		if err != nil {
			return err
		}
		start = last + 1
	}
	for n := start; n < s.txns; n++ {
		for i := 0; i < s.rows(n); i++ {
			key := int64((n*31 + i) % 200) // keys repeat, so per-key order matters
			c := &event.Change{Op: event.OpUpdate, Table: s.tables[(n+i)%3],
				Before: []event.Value{key, int64(n - 1)}, After: []event.Value{key, int64(n)},
				Commit: time.Unix(1700000000, 0).Add(time.Duration(n) * time.Millisecond),
				TxID:   strconv.Itoa(n), Pos: "lsn:" + strconv.Itoa(n), Index: int64(i), TableIndex: 1}
			if err := em.Emit(ctx, c); err != nil {
				return err
			}
		}
		if err := em.Commit(ctx, []byte(strconv.Itoa(n))); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

func (s *synthSource) Ack(cp []byte) {
	n, _ := strconv.Atoi(string(cp))
	if int64(n) < s.acked.Load() {
		panic("acks out of order")
	}
	s.acked.Store(int64(n))
}

func (s *synthSource) Close() error { return nil }

func (s *synthSource) totalRows() int {
	t := 0
	for n := 0; n < s.txns; n++ {
		t += s.rows(n)
	}
	return t
}

type memMirror struct {
	mu sync.Mutex
	cp []byte
}

func (m *memMirror) LoadCapture() ([]byte, error) { m.mu.Lock(); defer m.mu.Unlock(); return m.cp, nil }
func (m *memMirror) SaveCapture(cp []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cp = cp
	return nil
}

func testConfig(brokers []string) Config {
	return Config{
		Pipeline:        "t",
		Client:          kafka.ClientConfig{Brokers: brokers},
		TransactionalID: "plume.t.capture",
		CheckpointTopic: "t.t.checkpoints",
		Topic: func(c *event.Change) (string, error) {
			return "t.public." + c.Table.Name, nil
		},
		TopicSpec:      kafka.TopicSpec{Partitions: 3},
		BatchMaxEvents: 200,
		BatchLinger:    5 * time.Millisecond,
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// runUntil runs capture, restarting it after retryable failures as the
// runtime does, until the source's last transaction is acknowledged.
func runUntil(t *testing.T, cfg Config, src *synthSource, mirror Mirror, limit time.Duration) (restarts int) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for src.acked.Load() < int64(src.txns-1) {
		if time.Now().After(deadline) {
			t.Fatalf("capture did not finish within %v (acked %d of %d)", limit, src.acked.Load(), src.txns)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg, src, mirror, nil, quiet) }()
		for src.acked.Load() < int64(src.txns-1) {
			select {
			case err := <-done:
				cancel()
				if err != nil && !Retryable(err) {
					t.Fatalf("capture failed: %v", err)
				}
				restarts++
				time.Sleep(50 * time.Millisecond)
				goto next
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		<-done
	next:
	}
	return restarts
}

// verify reads every data topic with read_committed and checks: every
// change exactly once, whole transactions, per-key order.
func verify(t *testing.T, brokers []string, src *synthSource) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics("t.public.a", "t.public.b", "t.public.c"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seen := map[string]int{}
	perTxn := map[string]int{}
	lastVersion := map[string]int64{} // topic/partition/key -> last "v"
	want := src.totalRows()
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < want && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			rx, err := event.Decode(r)
			if err != nil || rx == nil {
				t.Fatalf("decode: %v", err)
			}
			seen[rx.ID]++
			perTxn[rx.Extensions["txid"]]++
			var env struct{ After map[string]int64 }
			if err := json.Unmarshal(rx.Data, &env); err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprintf("%s/%s", r.Topic, r.Key)
			if v := env.After["v"]; v < lastVersion[k] {
				t.Errorf("per-key order broken for %s: %d after %d", k, v, lastVersion[k])
			} else {
				lastVersion[k] = v
			}
		})
	}
	if len(seen) != want {
		t.Fatalf("read %d distinct changes, want %d", len(seen), want)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("change %s read %d times", id, n)
		}
	}
	for n := 0; n < src.txns; n++ {
		if got := perTxn[strconv.Itoa(n)]; got != src.rows(n) {
			t.Errorf("transaction %d: %d rows visible, want %d", n, got, src.rows(n))
		}
	}
}

func TestCaptureExactlyOnceWithoutFaults(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	src := newSynth(300)
	mirror := &memMirror{}
	runUntil(t, testConfig(c.ListenAddrs()), src, mirror, 60*time.Second)
	verify(t, c.ListenAddrs(), src)
	if string(mirror.cp) != strconv.Itoa(src.txns-1) {
		t.Errorf("mirror holds %q, want the last checkpoint", mirror.cp)
	}
}

// TestCaptureExactlyOnceUnderFaults injects produce errors, transaction
// coordinator errors and dropped connections (a broker going away
// mid-transaction), then checks nothing was lost or duplicated.
func TestCaptureExactlyOnceUnderFaults(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(3))
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	budget := map[string]int{"produce": 15, "endtxn": 8, "initpid": 1, "drop": 4}
	counts := map[string]int{}
	take := func(kind string, p float64) bool {
		mu.Lock()
		defer mu.Unlock()
		if budget[kind] > 0 && rng.Float64() < p {
			budget[kind]--
			counts[kind]++
			return true
		}
		return false
	}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !take("produce", 0.2) {
			return nil, nil, false
		}
		r := req.(*kmsg.ProduceRequest)
		resp := r.ResponseKind().(*kmsg.ProduceResponse)
		for _, tp := range r.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = tp.Topic, tp.TopicID
			for _, p := range tp.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = 6 // NOT_LEADER_FOR_PARTITION: retriable
				if rng.IntN(3) == 0 {
					rp.ErrorCode = 7 // REQUEST_TIMED_OUT
				}
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !take("endtxn", 0.3) {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.EndTxnResponse)
		resp.ErrorCode = 51 // CONCURRENT_TRANSACTIONS
		if rng.IntN(2) == 0 {
			resp.ErrorCode = 15 // COORDINATOR_NOT_AVAILABLE
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.InitProducerID), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !take("initpid", 1.0) { // the first one always fails
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.InitProducerIDResponse)
		resp.ErrorCode = 14 // COORDINATOR_LOAD_IN_PROGRESS
		return resp, nil, true
	})
	c.ControlKey(-1, func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !take("drop", 0.03) {
			return nil, nil, false
		}
		return nil, errors.New("injected: broker went away"), true
	})
	src := newSynth(400)
	cfg := testConfig(c.ListenAddrs())
	cfg.BatchMaxEvents = 40 // many small Kafka transactions: more places to fail
	restarts := runUntil(t, cfg, src, &memMirror{}, 3*time.Minute)
	mu.Lock()
	t.Logf("faults injected: %v; capture restarts: %d", counts, restarts)
	for _, kind := range []string{"produce", "endtxn", "initpid", "drop"} {
		if counts[kind] == 0 {
			t.Errorf("no %s fault was injected: the test did not exercise it", kind)
		}
	}
	mu.Unlock()
	verify(t, c.ListenAddrs(), src)
}

// TestSecondInstanceFencesFirst runs two captures of one pipeline at once:
// the second fences the first, which stops with ErrFenced, and the stream
// holds every change exactly once.
func TestSecondInstanceFencesFirst(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	src1, src2 := newSynth(200), newSynth(200)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() { first <- Run(ctx, cfg, &slowSource{synthSource: src1}, nil, nil, quiet) }()
	for src1.acked.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { second <- Run(ctx, cfg, src2, nil, nil, quiet) }()
	select {
	case err := <-first:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("first instance: %v, want ErrFenced", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("first instance was not fenced")
	}
	for src2.acked.Load() < int64(src2.txns-1) {
		select {
		case err := <-second:
			t.Fatalf("second instance stopped: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	<-second
	verify(t, c.ListenAddrs(), src2)
}

// TestFencedMidTransactionIsFenced pins the fencing answer that
// TestSecondInstanceFencesFirst only meets now and then: another instance's
// InitProducerId arrives between the first instance's flush and its EndTxn,
// aborts the open transaction and bumps the epoch by one, so the
// coordinator (kfake here; Apache Kafka's with transaction protocol v2 too)
// answers that EndTxn with INVALID_TXN_STATE rather than PRODUCER_FENCED.
// It must be ErrFenced and not retryable: a retry would re-fence and take
// the pipeline back from the newer instance.
func TestFencedMidTransactionIsFenced(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	src := newSynth(200)
	var armed, triggered atomic.Bool
	arrived, fenced := make(chan struct{}), make(chan struct{})
	c.ControlKey(int16(kmsg.EndTxn), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if req := kreq.(*kmsg.EndTxnRequest); req.Commit && armed.Load() && triggered.CompareAndSwap(false, true) {
			close(arrived)
			c.SleepControl(func() { <-fenced }) // the fencing InitProducerId is served meanwhile
		}
		return nil, nil, false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, &slowSource{synthSource: src}, nil, nil, quiet) }()
	for deadline := time.Now().Add(30 * time.Second); src.acked.Load() < 5; {
		if time.Now().After(deadline) {
			t.Fatal("capture did not commit 5 transactions")
		}
		time.Sleep(5 * time.Millisecond)
	}
	armed.Store(true)
	select {
	case <-arrived:
	case err := <-done:
		t.Fatalf("capture stopped early: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no commit reached the broker")
	}
	fencer, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.TransactionalID(cfg.TransactionalID))
	if err != nil {
		t.Fatal(err)
	}
	defer fencer.Close()
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	_, _, err = fencer.ProducerID(fctx) // InitProducerId: aborts the open transaction, epoch + 1
	close(fenced)
	if err != nil {
		t.Fatalf("fencing client: %v", err)
	}
	select {
	case err := <-done:
		if !strings.Contains(fmt.Sprint(err), "INVALID_TXN_STATE") {
			t.Fatalf("capture: %v; this test wants the coordinator's INVALID_TXN_STATE answer", err)
		}
		if !errors.Is(err, ErrFenced) || Retryable(err) {
			t.Fatalf("capture: %v (retryable %v), want ErrFenced", err, Retryable(err))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("fenced capture did not stop")
	}
	verify(t, c.ListenAddrs(), &synthSource{txns: int(src.acked.Load()) + 1, tables: src.tables})
}

// slowSource paces the synthetic source so the second instance starts
// while the first is mid-stream.
type slowSource struct{ *synthSource }

func (s *slowSource) Run(ctx context.Context, from []byte, em Emitter) error {
	return s.synthSource.Run(ctx, from, &slowEmitter{em})
}

type slowEmitter struct{ Emitter }

func (e *slowEmitter) Commit(ctx context.Context, cp []byte) error {
	time.Sleep(2 * time.Millisecond)
	return e.Emitter.Commit(ctx, cp)
}
