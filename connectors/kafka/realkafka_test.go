package kafka

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestRealKafka runs the exactly-once scenarios against Apache Kafka:
// replays, a batch aborted before its commit, a second instance fencing the
// first, resumption at the committed offsets.
func TestRealKafka(t *testing.T) {
	k := testharness.Kafka(t)
	brokers := k.Brokers()
	name := testharness.UniqueName(t) // pipeline name: transactional id and offsets topic
	topic := "erp." + name
	newInstance := func() *Target {
		p, err := config.Parse("pipeline.yaml", []byte(namedPipelineYAML(name, brokers,
			"    type: kafka\n    topic: "+topic+"\n")))
		if err != nil {
			t.Fatal(err)
		}
		tg, err := build(t, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tg.Close() })
		return tg
	}

	in := makeInput(t, 120, false)
	bs := batches(in.msgs, 30)
	a := newInstance()
	if offs := mustOpen(t, a); len(offs) != 0 {
		t.Fatalf("first open: %v", offs)
	}
	mustApply(t, a, bs[0])
	mustApply(t, a, bs[0]) // replay
	a.beforeCommit = func() error { return errors.New("injected failure before commit") }
	if err := apply(a, bs[1]); err == nil || target.IsPermanent(err) {
		t.Fatalf("apply: %v, want a retryable error", err)
	}
	a.beforeCommit = nil
	mustApply(t, a, bs[1]) // the layer's retry

	b := newInstance()
	offs := mustOpen(t, b)
	if want := mergeOffsets(bs[0].Offsets, bs[1].Offsets); !maps.Equal(offs, want) {
		t.Fatalf("second instance opened at %v, want %v", offs, want)
	}
	if err := apply(a, bs[2]); !target.IsPermanent(err) {
		t.Fatalf("fenced instance: %v, want permanent", err)
	}
	for _, batch := range batches(resumeFrom(in.msgs, offs), 25) {
		mustApply(t, b, batch)
	}
	mustApply(t, b, bs[3]) // replay

	out := readOutput(t, brokers, len(in.msgs), topic)
	checkExactlyOnce(t, in.msgs, out)
	byID := map[string]int{}
	for i, r := range in.recs {
		byID[header(r, "ce_id")] = i
	}
	for _, r := range out {
		src := in.recs[byID[header(r, "ce_id")]]
		if !bytes.Equal(r.Value, src.Value) || !bytes.Equal(r.Key, src.Key) || fmtHeaders(r.Headers) != fmtHeaders(src.Headers) {
			t.Fatalf("output %s differs from its input", header(r, "ce_id"))
		}
	}
}
