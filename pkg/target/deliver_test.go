package target

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/kafka"
)

// recTarget records the offsets of the messages it is given.
type recTarget struct {
	mu    sync.Mutex
	first int64
	own   Offsets // returned by Open: a transactional target's offsets
	seen  int
}

func (r *recTarget) Open(context.Context) (Offsets, error) { return r.own, nil }
func (r *recTarget) Apply(_ context.Context, b *Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range b.Messages {
		if r.seen == 0 {
			r.first = m.Offset
		}
		r.seen++
	}
	return nil
}
func (r *recTarget) Close() error { return nil }

// passRouter turns every record into one message.
type passRouter struct{}

func (passRouter) Eval(rec *kgo.Record) ([]Message, error) {
	return []Message{{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Subject: string(rec.Key)}}, nil
}

type memStore struct {
	mu sync.Mutex
	o  map[string]Offsets
}

func (m *memStore) TargetOffsets(name string) (Offsets, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := Offsets{}
	for k, v := range m.o[name] {
		out[k] = v
	}
	return out, nil
}
func (m *memStore) SaveTargetOffsets(name string, o Offsets) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.o[name] == nil {
		m.o[name] = Offsets{}
	}
	for k, v := range o {
		m.o[name][k] = v
	}
	return nil
}

// TestStartOffsetRule checks the documented rule: the target's own offsets
// win; otherwise the later of the offset store and the consumer group.
func TestStartOffsetRule(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "p.db.t"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, _ := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	defer cl.Close()
	for i := 0; i < 100; i++ {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "p.db.t", Key: []byte(strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	tp := TopicPartition{"p.db.t", 0}
	cases := []struct {
		name         string
		store, group int64 // -1: none
		own          int64 // -1: not a transactional target
		want         int64
	}{
		{"nothing stored: from the start", -1, -1, -1, 0},
		{"store only", 40, -1, -1, 40},
		{"group only (fail-over to another replica)", -1, 30, -1, 30},
		{"store ahead of group", 60, 30, -1, 60},
		{"group ahead of store", 20, 70, -1, 70},
		{"the target's own offsets win", 80, 90, 25, 25},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			group := "g" + strconv.Itoa(i)
			store := &memStore{o: map[string]Offsets{}}
			if tc.store >= 0 {
				store.o["x"] = Offsets{tp: tc.store}
			}
			if tc.group >= 0 {
				off := kadm.Offsets{}
				off.AddOffset(tp.Topic, 0, tc.group, -1)
				if err := adm.CommitAllOffsets(context.Background(), group, off); err != nil {
					t.Fatal(err)
				}
			}
			tg := &recTarget{}
			if tc.own >= 0 {
				tg.own = Offsets{tp: tc.own}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Deliver(ctx, DeliveryConfig{Pipeline: "p", Target: "x", Client: kafka.ClientConfig{Brokers: c.ListenAddrs()},
					Group: group, TopicRegex: `^p\..*`, BatchLinger: 10 * time.Millisecond}, tg, passRouter{}, store, nil, nil,
					slog.New(slog.NewTextHandler(io.Discard, nil)))
			}()
			deadline := time.Now().Add(20 * time.Second)
			for {
				tg.mu.Lock()
				seen, first := tg.seen, tg.first
				tg.mu.Unlock()
				if seen > 0 && seen == int(100-first) {
					if first != tc.want {
						t.Errorf("started at %d, want %d", first, tc.want)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("delivered %d messages from %d, want from %d", seen, first, tc.want)
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			<-done
		})
	}
}
