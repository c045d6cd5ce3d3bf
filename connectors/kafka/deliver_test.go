package kafka

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	plumekafka "github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

// produceInput writes the input records to 3-partition topics as capture
// would have, and checks the broker gave them the offsets makeInput
// assigned.
func produceInput(t *testing.T, brokers []string, in *input) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := plumekafka.EnsureTopics(ctx, kadm.NewClient(cl), plumekafka.TopicSpec{Partitions: 3},
		inputTopic(productsTable), inputTopic(ordersTable)); err != nil {
		t.Fatal(err)
	}
	recs := make([]*kgo.Record, len(in.recs))
	index := map[*kgo.Record]int{}
	for i, r := range in.recs {
		recs[i] = &kgo.Record{Topic: r.Topic, Partition: r.Partition, Key: r.Key, Value: r.Value, Headers: r.Headers}
		index[recs[i]] = i
	}
	res := cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	for _, r := range res { // in completion order
		i := index[r.Record]
		if r.Record.Offset != in.recs[i].Offset {
			t.Fatalf("input record %d at %d@%d, want %d@%d", i, r.Record.Partition, r.Record.Offset, in.recs[i].Partition, in.recs[i].Offset)
		}
	}
}

// deliver runs the delivery layer (target.Deliver, as the runtime does)
// with a fresh instance of the target until stop is called.
func deliver(t *testing.T, brokers []string, store *memStore) (stop func() error) {
	t.Helper()
	tg := mustTarget(t, brokers, "    topic: erp.products\n")
	// A produce error refreshes metadata first; by default at most every
	// 5s, which would make this test slow.
	tg.clientOpts = []kgo.Opt{kgo.MetadataMinAge(50 * time.Millisecond)}
	cfg := target.DeliveryConfig{
		Pipeline:   "shop",
		Target:     "out",
		Client:     plumekafka.ClientConfig{Brokers: brokers},
		Group:      "plume.shop.out",
		TopicRegex: `^shop\..*`,
		// The offsets topic is under the topic prefix: the runtime must
		// exclude it like the checkpoint and DLQ topics.
		ExcludeTopics:  tg.InternalTopics(),
		BatchMaxEvents: 25,
		BatchLinger:    10 * time.Millisecond,
		RetryMin:       5 * time.Millisecond,
		RetryMax:       100 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- target.Deliver(ctx, cfg, tg, routerFor{testRoutes(t)}, store, nil, nil, quiet) }()
	return func() error {
		cancel()
		return <-done
	}
}

// waitApplied waits until the store (saved by the layer after each
// successful Apply) reaches want.
func waitApplied(t *testing.T, store *memStore, want target.Offsets, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		got, _ := store.TargetOffsets("out")
		done := true
		for tp, o := range want {
			if got[tp] < o {
				done = false
			}
		}
		if done {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := store.TargetOffsets("out")
	t.Fatalf("delivery did not finish within %v: at %v, want %v", limit, got, want)
}

// TestDeliverExactlyOnceUnderFaults runs the real delivery layer over the
// target while kfake fails produce requests (retriable and not), commit
// requests (errors and dropped connections) and producer id requests, with
// a restart of the pipeline in the middle; the output holds every input
// event exactly once, in per-key order.
func TestDeliverExactlyOnceUnderFaults(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	brokers := c.ListenAddrs()
	in := makeInput(t, 600, false)
	produceInput(t, brokers, in)

	rng := rand.New(rand.NewPCG(7, 11))
	var mu sync.Mutex
	budget := map[string]int{"produce": 10, "produce-fatal": 4, "endtxn": 6, "endtxn-drop": 3, "initpid": 2}
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
		r := req.(*kmsg.ProduceRequest)
		if r.TransactionID == nil { // only the target's transactional produces
			return nil, nil, false
		}
		code := int16(0)
		switch {
		case take("produce", 0.2):
			code = 6 // NOT_LEADER_FOR_PARTITION: retried by the client
		case take("produce-fatal", 0.1):
			code = 2 // CORRUPT_MESSAGE: fails the records
		default:
			return nil, nil, false
		}
		resp := r.ResponseKind().(*kmsg.ProduceResponse)
		for _, tp := range r.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = tp.Topic, tp.TopicID
			for _, p := range tp.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		switch {
		case take("endtxn", 0.25):
			resp := req.ResponseKind().(*kmsg.EndTxnResponse)
			resp.ErrorCode = 51 // CONCURRENT_TRANSACTIONS
			if rng.IntN(2) == 0 {
				resp.ErrorCode = 15 // COORDINATOR_NOT_AVAILABLE
			}
			return resp, nil, true
		case take("endtxn-drop", 0.15):
			return nil, errors.New("injected: connection lost before the commit"), true
		}
		return nil, nil, false
	})
	c.ControlKey(int16(kmsg.InitProducerID), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if req.(*kmsg.InitProducerIDRequest).TransactionalID == nil || !take("initpid", 0.5) {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.InitProducerIDResponse)
		resp.ErrorCode = 14 // COORDINATOR_LOAD_IN_PROGRESS
		return resp, nil, true
	})

	want := endOffsets(in.msgs)
	half := target.Offsets{}
	for tp, o := range want {
		half[tp] = o / 2
	}
	store := &memStore{}
	stop := deliver(t, brokers, store)
	waitApplied(t, store, half, 60*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}
	// Restart with an empty local offset store: the target's own offsets
	// are authoritative.
	store = &memStore{}
	stop = deliver(t, brokers, store)
	waitApplied(t, store, want, 60*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("second run: %v", err)
	}

	mu.Lock()
	t.Logf("faults injected: %v", counts)
	for kind := range budget {
		if counts[kind] == 0 {
			t.Errorf("no %s fault was injected: the test did not exercise it", kind)
		}
	}
	mu.Unlock()
	checkExactlyOnce(t, in.msgs, readOutput(t, brokers, len(in.msgs), "erp.products"))
}
