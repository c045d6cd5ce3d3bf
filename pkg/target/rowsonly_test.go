package target

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/kafka"
)

// rowsTarget is a RowsOnly target. It rejects the messages at the offsets
// in reject (the rest of their batch is applied) and records what it was
// given; beforeReject runs before it rejects anything.
type rowsTarget struct {
	mu           sync.Mutex
	reject       map[int64]bool
	beforeReject func()
	applied      map[int64]bool
	problems     []string
	traceSlices  map[string]*Header // traceparent -> the first message's header slice
}

func (r *rowsTarget) RowsOnly() bool                        { return true }
func (r *rowsTarget) Open(context.Context) (Offsets, error) { return nil, nil }
func (r *rowsTarget) Close() error                          { return nil }
func (r *rowsTarget) Apply(_ context.Context, b *Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	failed := map[int]error{}
	for i, m := range b.Messages {
		if m.Value != nil {
			r.problems = append(r.problems, fmt.Sprintf("offset %d: a Value", m.Offset))
		}
		if len(m.Headers) != 1 || m.Headers[0].Key != traceParentHeader {
			r.problems = append(r.problems, fmt.Sprintf("offset %d: headers %v, want only ce_traceparent", m.Offset, m.Headers))
		} else {
			tp := string(m.Headers[0].Value)
			if first, ok := r.traceSlices[tp]; !ok {
				r.traceSlices[tp] = &m.Headers[0]
			} else if first != &m.Headers[0] {
				r.problems = append(r.problems, fmt.Sprintf("offset %d: its transaction's traceparent is not shared", m.Offset))
			}
		}
		if r.reject[m.Offset] {
			failed[i] = fmt.Errorf("row %d refused", m.Offset)
			continue
		}
		r.applied[m.Offset] = true
	}
	if len(failed) > 0 {
		if r.beforeReject != nil {
			r.beforeReject()
			r.beforeReject = nil
		}
		return &RecordErrors{Failed: failed, Applied: true}
	}
	return nil
}

// recordRouter routes every record as the router does: Value and Headers
// are the record's. It is an AppendRouter.
type recordRouter struct{}

func (r recordRouter) Eval(rec *kgo.Record) ([]Message, error) { return r.AppendEval(nil, rec) }
func (recordRouter) AppendEval(dst []Message, rec *kgo.Record) ([]Message, error) {
	return append(dst, Message{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Subject: string(rec.Key),
		Value: rec.Value, Headers: rec.Headers}), nil
}

// TestRowsOnlyDeadLettersGetTheirRecord checks that a RowsOnly target's
// messages carry no record (only a shared ce_traceparent header), and that
// the messages it rejects are dead-lettered with their record read again
// from Kafka: value and headers as consumed. A rejected record that was
// deleted in the meantime (DeleteRecords, as retention would) is
// dead-lettered without its value, saying so.
func TestRowsOnlyDeadLettersGetTheirRecord(t *testing.T) {
	const topic, dlqTopic, n = "p.db.t", "p.dlq", 200
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic, dlqTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	want := map[int64]*kgo.Record{}
	for i := 0; i < n; i++ {
		rec := &kgo.Record{Topic: topic, Key: []byte("id=" + strconv.Itoa(i)), Value: []byte(fmt.Sprintf(`{"after":{"id":%d}}`, i)),
			Headers: []kgo.RecordHeader{
				{Key: "ce_id", Value: []byte("ev-" + strconv.Itoa(i))},
				{Key: traceParentHeader, Value: []byte(fmt.Sprintf("00-%032x-%016x-01", i/10+1, i/10+1))}, // one per 10 events
				{Key: "ce_table", Value: []byte("t")},
			}}
		if err := cl.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
		want[rec.Offset] = rec
	}
	adm := kadm.NewClient(cl)
	tg := &rowsTarget{reject: map[int64]bool{3: true, 7: true, 150: true}, applied: map[int64]bool{}, traceSlices: map[string]*Header{}}
	// Offset 3 is deleted before the target rejects it.
	tg.beforeReject = func() {
		o := kadm.Offsets{}
		o.AddOffset(topic, 0, 5, -1)
		if _, err := adm.DeleteRecords(context.Background(), o); err != nil {
			t.Errorf("delete records: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Deliver(ctx, DeliveryConfig{Pipeline: "p", Target: "x", Client: kafka.ClientConfig{Brokers: c.ListenAddrs()},
			Group: "g", TopicRegex: `^p\.db\..*`, ExcludeTopics: []string{dlqTopic}, BatchLinger: 50 * time.Millisecond},
			tg, recordRouter{}, &memStore{o: map[string]Offsets{}}, NewDLQ(cl, dlqTopic), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		tg.mu.Lock()
		got := len(tg.applied)
		tg.mu.Unlock()
		if got == n-len(tg.reject) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages applied", got, n-len(tg.reject))
		}
	}
	tg.mu.Lock()
	for _, p := range tg.problems {
		t.Error(p)
	}
	if len(tg.traceSlices) != n/10 {
		t.Errorf("%d traceparents, want %d", len(tg.traceSlices), n/10)
	}
	tg.mu.Unlock()

	// The dead letters.
	rd, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(dlqTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := map[int64]*kgo.Record{}
	for deadline := time.Now().Add(20 * time.Second); len(got) < len(tg.reject); {
		pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
		fs := rd.PollFetches(pctx)
		pcancel()
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "ce_dlqoffset" {
					off, _ := strconv.ParseInt(string(h.Value), 10, 64)
					got[off] = r
				}
			}
		})
		if time.Now().After(deadline) {
			t.Fatalf("dead letters for offsets %v, want %v", reflect.ValueOf(got).MapKeys(), tg.reject)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	for off := range tg.reject {
		dl, orig := got[off], want[off]
		errText := ""
		var hs []kgo.RecordHeader
		for _, h := range dl.Headers {
			if h.Key == "ce_dlqerror" {
				errText = string(h.Value)
			}
			if !strings.HasPrefix(h.Key, "ce_dlq") {
				hs = append(hs, h)
			}
		}
		if off == 3 {
			// Only the header the message kept (ce_traceparent) is left.
			if len(dl.Value) != 0 || len(hs) != 1 || hs[0].Key != traceParentHeader || !strings.Contains(errText, "row 3 refused") || !strings.Contains(errText, "no longer in Kafka") {
				t.Errorf("offset 3 (deleted): value %q, headers %v, error %q", dl.Value, hs, errText)
			}
			continue
		}
		if string(dl.Value) != string(orig.Value) || string(dl.Key) != string(orig.Key) || !reflect.DeepEqual(hs, orig.Headers) {
			t.Errorf("offset %d: dead letter %q %q %v, want the record %q %q %v", off, dl.Key, dl.Value, hs, orig.Key, orig.Value, orig.Headers)
		}
		if errText != fmt.Sprintf("row %d refused", off) {
			t.Errorf("offset %d: ce_dlqerror %q", off, errText)
		}
	}
}

// TestCoalesceInPlace checks that the delivery layer's in-place coalescing
// keeps what Coalesce keeps, in the same order, and clears the rest.
func TestCoalesceInPlace(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		msgs := make([]Message, rng.IntN(60))
		for i := range msgs {
			subject := "id=" + strconv.Itoa(rng.IntN(8))
			if rng.IntN(15) == 0 {
				subject = "" // a truncate
			}
			msgs[i] = Message{Route: []string{"a", "b"}[rng.IntN(2)], Table: "t", Subject: subject, Offset: int64(i), Row: map[string]any{"i": i}}
		}
		want := Coalesce(msgs)
		in := append([]Message(nil), msgs...)
		got := coalesceInPlace(in)
		if !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("coalesceInPlace = %v, want %v", got, want)
		}
		for i := len(got); i < len(in); i++ {
			if in[i].Row != nil || in[i].Subject != "" {
				t.Fatalf("message %d past the kept ones not cleared: %+v", i, in[i])
			}
		}
	}
}
