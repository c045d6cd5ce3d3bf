package capture

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// listSource emits fixed transactions once, then waits.
type listSource struct {
	txns  [][]*event.Change
	acked chan []byte
}

func (s *listSource) Run(ctx context.Context, from []byte, em Emitter) error {
	start := 0
	if from != nil {
		n, _ := strconv.Atoi(string(from))
		start = n + 1
	}
	for i := start; i < len(s.txns); i++ {
		for _, c := range s.txns[i] {
			if err := em.Emit(ctx, c); err != nil {
				return err
			}
		}
		if err := em.Commit(ctx, []byte(strconv.Itoa(i))); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}
func (s *listSource) Ack(cp []byte) { s.acked <- cp }
func (s *listSource) Close() error  { return nil }

var items = &event.Table{Connector: "mysql", Database: "shop", Name: "items",
	Columns: []event.Column{{Name: "id", Type: "int"}, {Name: "doc", Type: "longtext"}}, Key: []int{0}}

func row(op event.Op, id int64, doc string, txn int, idx int64) *event.Change {
	c := &event.Change{Op: op, Table: items, Commit: time.Unix(1700000000, 0), TxID: "t" + strconv.Itoa(txn),
		Pos: "gtid:0-1-" + strconv.Itoa(txn), Index: idx, TableIndex: idx + 1}
	img := []event.Value{id, doc}
	if op == event.OpDelete {
		c.Before = img
	} else {
		c.After = img
	}
	return c
}

// readAll reads topic read_committed from the start until a poll finds
// nothing new for 2 s, but waits up to 20 s for the first atLeast records:
// a new client's first fetch (metadata, offsets, then the fetch) can take
// more than 2 s under the race detector on a loaded machine, and an empty
// first poll once read a committed dead letter as missing.
func readAll(t *testing.T, brokers []string, topic string, atLeast int) []*kgo.Record {
	t.Helper()
	cl := testharness.KafkaClient(t, brokers, kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var out []*kgo.Record
	patience := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			if len(out) >= atLeast || time.Now().After(patience) {
				return out
			}
			continue
		}
		out = append(out, fs.Records()...)
	}
}

func waitAck(t *testing.T, src *listSource, want string) {
	t.Helper()
	for {
		select {
		case cp := <-src.acked:
			if string(cp) == want {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("checkpoint %s was never acknowledged", want)
		}
	}
}

func TestDeleteIsFollowedByTombstone(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	cfg.Tombstones = true
	src := &listSource{acked: make(chan []byte, 16), txns: [][]*event.Change{
		{row(event.OpCreate, 1, "a", 0, 0)},
		{row(event.OpDelete, 1, "a", 1, 0)},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, src, nil, nil, quiet) }()
	waitAck(t, src, "1")
	cancel()
	<-done
	recs := readAll(t, c.ListenAddrs(), "t.public.items", 1)
	if len(recs) != 3 {
		t.Fatalf("got %d records, want insert, delete, tombstone", len(recs))
	}
	tomb := recs[2]
	if tomb.Value != nil || len(tomb.Headers) != 0 || string(tomb.Key) != "id=1" {
		t.Errorf("tombstone = key %q value %q headers %v", tomb.Key, tomb.Value, tomb.Headers)
	}
}

func TestOversizeFailStopsWithTableAndKey(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	cfg.MaxMessageBytes = 4096
	src := &listSource{acked: make(chan []byte, 16), txns: [][]*event.Change{
		{row(event.OpCreate, 1, "small", 0, 0)},
		{row(event.OpCreate, 2, "fits", 1, 0), row(event.OpCreate, 3, strings.Repeat("x", 10000), 1, 1)},
	}}
	err := Run(context.Background(), cfg, src, nil, nil, quiet)
	if err == nil || Retryable(err) {
		t.Fatalf("Run = %v, want a non-retryable error", err)
	}
	for _, want := range []string{"shop.items", `"id=3"`, "max_message_bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// The source transaction holding the oversize row is not visible, not
	// even its first row: nothing is half-written.
	for _, r := range readAll(t, c.ListenAddrs(), "t.public.items", 0) {
		if k := string(r.Key); k == "id=2" || k == "id=3" {
			t.Fatalf("record %s of the failed transaction is visible", k)
		}
	}
	// After raising the limit, a restart resumes exactly there.
	cfg.MaxMessageBytes = 1 << 20
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, src, nil, nil, quiet) }()
	waitAck(t, src, "1")
	cancel()
	<-done
	var keys []string
	for _, r := range readAll(t, c.ListenAddrs(), "t.public.items", 3) {
		keys = append(keys, string(r.Key))
	}
	sort.Strings(keys) // the topic has 3 partitions: no order across them
	if strings.Join(keys, ",") != "id=1,id=2,id=3" {
		t.Fatalf("after the restart the topic holds %v", keys)
	}
}

func TestOversizeDLQKeepsTheStreamGoing(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	cfg.MaxMessageBytes = 4096
	cfg.Oversize = "dlq"
	cfg.DLQTopic = "t.t.dlq"
	src := &listSource{acked: make(chan []byte, 16), txns: [][]*event.Change{
		{row(event.OpCreate, 2, "fits", 0, 0), row(event.OpCreate, 3, strings.Repeat("x", 10000), 0, 1)},
		{row(event.OpCreate, 4, "after", 1, 0)},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, src, nil, nil, quiet) }()
	waitAck(t, src, "1")
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	data := readAll(t, c.ListenAddrs(), "t.public.items", 2)
	if len(data) != 2 {
		t.Fatalf("data topic holds %d records, want 2", len(data))
	}
	dlq := readAll(t, c.ListenAddrs(), "t.t.dlq", 1)
	if len(dlq) != 1 {
		t.Fatalf("DLQ holds %d records, want 1", len(dlq))
	}
	h := map[string]string{}
	for _, x := range dlq[0].Headers {
		h[x.Key] = string(x.Value)
	}
	if !strings.Contains(h["ce_dlqreason"], "id=3") || h["ce_id"] != "gtid:0-1-0/1" || h["ce_dlqtopic"] != "t.public.items" {
		t.Errorf("dead letter headers: %v", h)
	}
}

// recordingSource remembers the checkpoint Run was started from.
type recordingSource struct {
	listSource
	from chan []byte
}

func (s *recordingSource) Run(ctx context.Context, from []byte, em Emitter) error {
	s.from <- from
	return s.listSource.Run(ctx, from, em)
}

func TestResetCheckpointMakesAFirstStart(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	cfg := testConfig(c.ListenAddrs())
	mirror := &memMirror{}
	run := func() []byte {
		src := &recordingSource{listSource: listSource{acked: make(chan []byte, 16), txns: [][]*event.Change{
			{row(event.OpCreate, 1, "a", 0, 0)}, {row(event.OpCreate, 2, "b", 1, 0)},
		}}, from: make(chan []byte, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg, src, mirror, nil, quiet) }()
		from := <-src.from
		if from == nil {
			waitAck(t, &src.listSource, "1")
		}
		cancel()
		<-done
		return from
	}
	if from := run(); from != nil {
		t.Fatalf("first run started from %q", from)
	}
	if from := run(); string(from) != "1" {
		t.Fatalf("second run started from %q, want the committed checkpoint", from)
	}
	if err := ResetCheckpoint(context.Background(), cfg, mirrorReset{mirror}); err != nil {
		t.Fatal(err)
	}
	if mirror.cp != nil {
		t.Fatalf("mirror not cleared")
	}
	if from := run(); from != nil {
		t.Fatalf("after a reset the run started from %q, want a first start", from)
	}
}

type mirrorReset struct{ m *memMirror }

func (r mirrorReset) ResetCapture() error { r.m.SaveCapture(nil); return nil }
