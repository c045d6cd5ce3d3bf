package capture

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// firstStartSource does what a database source does on a first start: it
// closes a source transaction with its start position "p0" (by Sync, or
// by Commit alone), then emits a change and commits "p1".
type firstStartSource struct {
	sync  bool
	acked chan []byte
}

func (s *firstStartSource) Run(ctx context.Context, from []byte, em Emitter) error {
	commit := em.Commit
	if s.sync {
		commit = func(ctx context.Context, cp []byte) error { return Sync(ctx, em, cp) }
	}
	if err := commit(ctx, []byte("p0")); err != nil {
		return err
	}
	if err := em.Emit(ctx, row(event.OpCreate, 1, "x", 1, 0)); err != nil {
		return err
	}
	if err := em.Commit(ctx, []byte("p1")); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
func (s *firstStartSource) Ack(cp []byte) { s.acked <- cp }
func (s *firstStartSource) Close() error  { return nil }

// A first start's position must be committed even while the first data
// topic refuses writes, as a just-created topic does on a real broker
// (NOT_LEADER_FOR_PARTITION until the client's next metadata refresh,
// MetadataMinAge = 5s later). Commit alone leaves it in the same Kafka
// transaction as the stalled change; Sync commits it by itself.
func TestSyncCommitsWhileADataTopicStalls(t *testing.T) {
	for _, sync := range []bool{true, false} {
		name := "Commit"
		if sync {
			name = "Sync"
		}
		t.Run(name, func(t *testing.T) {
			c := testharness.Kfake(t, kfake.NumBrokers(1))
			brokers := testharness.KfakeBrokers(c)
			cfg := testConfig(brokers)
			cfg.BatchLinger = 10 * time.Millisecond
			stall := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "t.public.items", Err: kerr.NotLeaderForPartition, Count: -1})
			defer stall.Remove()
			src := &firstStartSource{sync: sync, acked: make(chan []byte, 4)}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Run(ctx, cfg, src, nil, nil, quiet) }()
			defer func() { cancel(); <-done }()

			var acked []byte
			select {
			case acked = <-src.acked:
			case <-time.After(3 * time.Second):
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := stall.Wait(wctx, 1)
			wcancel()
			if err != nil {
				t.Fatal("the change was not produced: the test did not reach the stall")
			}
			var committed []string
			for _, r := range readAll(t, brokers, cfg.CheckpointTopic, 1) {
				if string(r.Key) == string(checkpointKey) {
					committed = append(committed, string(r.Value))
				}
			}
			if sync {
				if string(acked) != "p0" || len(committed) != 1 || committed[0] != "p0" {
					t.Fatalf("Sync: acked %q, committed checkpoints %q; want p0 committed and acknowledged while the data topic stalls", acked, committed)
				}
			} else if acked != nil || len(committed) != 0 {
				// The mechanism behind Sync: if this ever commits, Commit
				// no longer shares the stalled transaction.
				t.Fatalf("Commit: acked %q, committed %q; want nothing committed while the change's topic stalls", acked, committed)
			}
			// Once the topic accepts writes, the change and p1 commit.
			stall.Remove()
			deadline := time.After(30 * time.Second)
			for got := false; !got; {
				select {
				case cp := <-src.acked:
					got = string(cp) == "p1"
				case <-deadline:
					t.Fatal("p1 was not acknowledged after the stall ended")
				}
			}
			if n := len(readAll(t, brokers, "t.public.items", 1)); n != 1 {
				t.Fatalf("%d records in the data topic, want 1", n)
			}
		})
	}
}
