package kafka

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func kfakeBrokers(t *testing.T) []string {
	t.Helper()
	return testharness.Kfake(t, kfake.NumBrokers(1)).ListenAddrs()
}

// endOffsets is where a target that applied msgs stands.
func endOffsets(msgs []target.Message) target.Offsets {
	o := target.Offsets{}
	for _, m := range msgs {
		tp := target.TopicPartition{Topic: m.Topic, Partition: m.Partition}
		o[tp] = max(o[tp], m.Offset+1)
	}
	return o
}

// resumeFrom returns the messages a delivery layer starting at offs would
// read again.
func resumeFrom(msgs []target.Message, offs target.Offsets) []target.Message {
	var out []target.Message
	for _, m := range msgs {
		if m.Offset >= offs[target.TopicPartition{Topic: m.Topic, Partition: m.Partition}] {
			out = append(out, m)
		}
	}
	return out
}

// TestReapplyIsIdempotent: re-applying batches that are already committed,
// whole or overlapping, writes nothing twice; a new instance resumes at the
// committed offsets. value: event keeps every record byte for byte.
func TestReapplyIsIdempotent(t *testing.T) {
	brokers := kfakeBrokers(t)
	tg := mustTarget(t, brokers, "    topic: erp.products\n")
	if offs := mustOpen(t, tg); len(offs) != 0 {
		t.Fatalf("first open: offsets %v, want none", offs)
	}
	in := makeInput(t, 90, false)
	bs := batches(in.msgs, 30)
	mustApply(t, tg, bs[0])
	mustApply(t, tg, bs[0]) // a replay of a committed batch
	mustApply(t, tg, bs[1])
	// A batch overlapping the committed one (the layer resumed behind).
	overlap := &target.Batch{Messages: append(bs[1].Messages[10:], bs[2].Messages...),
		Offsets: mergeOffsets(bs[1].Offsets, bs[2].Offsets)}
	mustApply(t, tg, overlap)
	mustApply(t, tg, overlap)

	out := readOutput(t, brokers, len(in.msgs), "erp.products")
	checkExactlyOnce(t, in.msgs, out)
	byID := map[string]*kgo.Record{}
	for _, r := range in.recs {
		byID[header(r, "ce_id")] = r
	}
	for _, r := range out {
		src := byID[header(r, "ce_id")]
		if !bytes.Equal(r.Key, src.Key) || !bytes.Equal(r.Value, src.Value) || len(r.Headers) != len(src.Headers) {
			t.Fatalf("output %s differs from its input", header(r, "ce_id"))
		}
		for i, h := range src.Headers {
			if r.Headers[i].Key != h.Key || !bytes.Equal(r.Headers[i].Value, h.Value) {
				t.Fatalf("output %s header %d: %s=%q, want %s=%q", header(r, "ce_id"), i, r.Headers[i].Key, r.Headers[i].Value, h.Key, h.Value)
			}
		}
	}

	// A second instance starts where the first stopped, and a replay of
	// everything through it is a no-op.
	tg.Close()
	tg2 := mustTarget(t, brokers, "    topic: erp.products\n")
	offs := mustOpen(t, tg2)
	if want := endOffsets(in.msgs); !maps.Equal(offs, want) {
		t.Fatalf("reopened at %v, want %v", offs, want)
	}
	for _, b := range bs {
		mustApply(t, tg2, b)
	}
	checkExactlyOnce(t, in.msgs, readOutput(t, brokers, len(in.msgs), "erp.products"))
}

// TestCrashResumesAtCommittedOffsets: a batch that does not commit (an
// error before the commit, a process dying with its transaction open, a
// commit whose reply is lost) leaves no output for read_committed readers,
// and the target resumes exactly at the last committed offsets.
func TestCrashResumesAtCommittedOffsets(t *testing.T) {
	for _, mode := range []string{"abort", "die", "lost-reply"} {
		t.Run(mode, func(t *testing.T) {
			brokers := kfakeBrokers(t)
			tg := mustTarget(t, brokers, "    topic: erp.products\n")
			mustOpen(t, tg)
			in := makeInput(t, 90, false)
			bs := batches(in.msgs, 30)
			mustApply(t, tg, bs[0])

			switch mode {
			case "abort":
				tg.beforeCommit = func() error { return errors.New("injected failure before commit") }
				if err := apply(tg, bs[1]); err == nil || target.IsPermanent(err) {
					t.Fatalf("apply: %v, want a retryable error", err)
				}
				tg.Close()
			case "die":
				tg.beforeCommit = func() error { return errCrash }
				if err := apply(tg, bs[1]); !errors.Is(err, errCrash) {
					t.Fatalf("apply: %v", err)
				}
				// The process is gone: no abort, no commit.
				tg.cl.Close()
				tg.cl = nil
			case "lost-reply":
				tg.afterCommit = func() error { return errors.New("injected: commit reply lost") }
				if err := apply(tg, bs[1]); err == nil || target.IsPermanent(err) {
					t.Fatalf("apply: %v, want a retryable error", err)
				}
				// The layer retries the batch on the same instance: it
				// re-fences, learns the commit happened, writes nothing.
				tg.afterCommit = nil
				mustApply(t, tg, bs[1])
				tg.Close()
			}

			committed := bs[0].Offsets
			if mode == "lost-reply" {
				committed = mergeOffsets(bs[0].Offsets, bs[1].Offsets)
			}
			tg2 := mustTarget(t, brokers, "    topic: erp.products\n")
			offs := mustOpen(t, tg2)
			if !maps.Equal(offs, committed) {
				t.Fatalf("reopened at %v, want %v", offs, committed)
			}
			// The delivery layer starts at offs.
			for _, b := range batches(resumeFrom(in.msgs, offs), 25) {
				mustApply(t, tg2, b)
			}
			checkExactlyOnce(t, in.msgs, readOutput(t, brokers, len(in.msgs), "erp.products"))
		})
	}
}

// TestSecondInstanceFencesFirst: a second instance fences the first, even
// mid-transaction; the first gets Permanent and its open transaction is
// aborted; the second resumes at the first's committed offsets.
func TestSecondInstanceFencesFirst(t *testing.T) {
	brokers := kfakeBrokers(t)
	a := mustTarget(t, brokers, "    topic: erp.products\n")
	mustOpen(t, a)
	all := makeInput(t, 120, false).msgs
	main, extra := all[:90], all[90:]
	bs := batches(main, 30)
	mustApply(t, a, bs[0])

	var b *Target
	var bOffs target.Offsets
	a.beforeCommit = func() error {
		// a has produced bs[1] and is about to commit when b starts.
		b = mustTarget(t, brokers, "    topic: erp.products\n")
		bOffs = mustOpen(t, b)
		return nil
	}
	err := apply(a, bs[1])
	if !target.IsPermanent(err) || !strings.Contains(err.Error(), "fenced") {
		t.Fatalf("first instance: %v, want a permanent fenced error", err)
	}
	if err := apply(a, bs[2]); !target.IsPermanent(err) {
		t.Fatalf("first instance, next batch: %v, want permanent", err)
	}
	if !maps.Equal(bOffs, bs[0].Offsets) {
		t.Fatalf("second instance opened at %v, want %v", bOffs, bs[0].Offsets)
	}
	for _, batch := range batches(resumeFrom(main, bOffs), 30) {
		mustApply(t, b, batch)
	}
	checkExactlyOnce(t, main, readOutput(t, brokers, len(main), "erp.products"))

	// A first instance that was idle when fenced finds out at its next
	// batch too.
	c := mustTarget(t, brokers, "    topic: erp.products\n")
	mustOpen(t, c)
	if err := apply(b, batches(extra, 30)[0]); !target.IsPermanent(err) {
		t.Fatalf("idle instance after being fenced: %v, want permanent", err)
	}
	checkExactlyOnce(t, main, readOutput(t, brokers, len(main), "erp.products"))
}

// TestValueRow: value row writes the row as JSON with the CloudEvents
// headers, content-type application/json.
func TestValueRow(t *testing.T) {
	brokers := kfakeBrokers(t)
	tg := mustTarget(t, brokers, "    topic: erp.rows\n    value: row\n")
	mustOpen(t, tg)
	in := makeInput(t, 40, false)
	for _, b := range batches(in.msgs, 15) {
		mustApply(t, tg, b)
	}
	out := readOutput(t, brokers, len(in.msgs), "erp.rows")
	checkExactlyOnce(t, in.msgs, out)
	rows := map[string]map[string]any{}
	for _, m := range in.msgs {
		rows[m.ID] = m.Row
	}
	for _, r := range out {
		if ct := header(r, "content-type"); ct != "application/json" {
			t.Fatalf("content-type %q", ct)
		}
		want, _ := json.Marshal(rows[header(r, "ce_id")])
		var got map[string]any
		dec := json.NewDecoder(bytes.NewReader(r.Value))
		dec.UseNumber()
		if err := dec.Decode(&got); err != nil {
			t.Fatal(err)
		}
		if g, _ := json.Marshal(got); !bytes.Equal(g, want) {
			t.Fatalf("row %s: got %s, want %s", header(r, "ce_id"), r.Value, want)
		}
		if header(r, "ce_type") == "" || header(r, "ce_source") == "" || header(r, "ce_subject") != string(r.Key) {
			t.Fatalf("CloudEvents headers missing: %v", fmtHeaders(r.Headers))
		}
	}
}

// TestTopicExprRoutesByTable: topic_expr sends each table to its own
// topic, created with the target's topics settings.
func TestTopicExprRoutesByTable(t *testing.T) {
	brokers := kfakeBrokers(t)
	tg := mustTarget(t, brokers, `    topic_expr: '"erp." + table'
    topics: { partitions: 2 }
`)
	mustOpen(t, tg)
	in := makeInput(t, 60, false)
	for _, b := range batches(in.msgs, 20) {
		mustApply(t, tg, b)
	}
	for _, table := range []string{"products", "orders"} {
		var want []target.Message
		for _, m := range in.msgs {
			if m.Table == table {
				want = append(want, m)
			}
		}
		out := readOutput(t, brokers, len(want), "erp."+table)
		checkExactlyOnce(t, want, out)
		parts := map[int32]bool{}
		for _, r := range out {
			parts[r.Partition] = true
		}
		if len(parts) != 2 {
			t.Errorf("erp.%s: records in partitions %v, want both of 2", table, parts)
		}
	}
}

// TestOversizeRecordIsRejected: a record larger than the topic's
// max.message.bytes (or max_message_bytes) is returned as a RecordErrors
// with nothing committed; the rest then applies.
func TestOversizeRecordIsRejected(t *testing.T) {
	for name, keys := range map[string]string{
		"topic config":      "    topics: { configs: { max.message.bytes: \"4096\" } }\n",
		"max_message_bytes": "    max_message_bytes: 4096\n",
	} {
		t.Run(name, func(t *testing.T) {
			brokers := kfakeBrokers(t)
			tg := mustTarget(t, brokers, "    topic: erp.products\n"+keys)
			mustOpen(t, tg)
			in := makeInput(t, 6, false)
			big := change(1)
			big.After[1] = strings.Repeat("x", 10000)
			rec := (&event.Encoder{Pipeline: "shop"}).Record(inputTopic(big.Table), big)
			rec.Partition, rec.Offset = in.msgs[1].Partition, in.msgs[1].Offset
			msgs, err := testRoutes(t).Eval(rec)
			if err != nil {
				t.Fatal(err)
			}
			in.msgs[1] = msgs[0]
			b := batches(in.msgs, 6)[0]

			err = apply(tg, b)
			var re *target.RecordErrors
			if !errors.As(err, &re) || re.Applied || len(re.Failed) != 1 || re.Failed[1] == nil {
				t.Fatalf("apply: %v, want RecordErrors for message 1 only", err)
			}
			if !strings.Contains(re.Failed[1].Error(), "too large") {
				t.Errorf("reason: %v", re.Failed[1])
			}
			// The layer dead-letters it and applies the rest, same offsets.
			rest := &target.Batch{Messages: append(append([]target.Message(nil), b.Messages[:1]...), b.Messages[2:]...), Offsets: b.Offsets}
			mustApply(t, tg, rest)
			checkExactlyOnce(t, rest.Messages, readOutput(t, brokers, len(rest.Messages), "erp.products"))
		})
	}
}
