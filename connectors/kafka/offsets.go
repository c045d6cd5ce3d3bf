package kafka

import (
	"encoding/json"
	"fmt"

	"github.com/plumecdc/plume/pkg/target"
)

// The offsets topic, <topic_prefix>.<pipeline>.<target>.offsets, has one
// partition and cleanup.policy=compact. It holds two kinds of records, each
// written in a transaction:
//
//   - key "offsets": the target's input position, as JSON
//     {"<topic>": {"<partition>": <next offset>, ...}, ...}. One is the last
//     record of every Apply transaction; it covers every input partition the
//     target has seen (not only the batch's), so the last one alone is the
//     whole position.
//   - key "fence": a nonce committed by Open, marking where an instance
//     took over. Open reads up to its own fence; an instance that sees a
//     later fence with another nonce knows it was replaced.

// encodeOffsets renders offsets as the offsets record's value.
func encodeOffsets(o target.Offsets) ([]byte, error) {
	m := make(map[string]map[int32]int64, len(o))
	for tp, next := range o {
		if m[tp.Topic] == nil {
			m[tp.Topic] = map[int32]int64{}
		}
		m[tp.Topic][tp.Partition] = next
	}
	return json.Marshal(m)
}

// decodeOffsets parses an offsets record's value; nil (no record yet) gives
// an empty map. The result is never nil.
func decodeOffsets(v []byte) (target.Offsets, error) {
	o := target.Offsets{}
	if v == nil {
		return o, nil
	}
	var m map[string]map[int32]int64
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, err
	}
	for topic, parts := range m {
		for p, next := range parts {
			if next < 0 {
				return nil, fmt.Errorf("negative offset %d for %s/%d", next, topic, p)
			}
			o[target.TopicPartition{Topic: topic, Partition: p}] = next
		}
	}
	return o, nil
}

// mergeOffsets returns committed updated with a batch's offsets, keeping
// the larger offset of each partition: offsets never move backwards.
func mergeOffsets(committed, batch target.Offsets) target.Offsets {
	out := make(target.Offsets, len(committed)+len(batch))
	for tp, o := range committed {
		out[tp] = o
	}
	for tp, o := range batch {
		if o > out[tp] {
			out[tp] = o
		}
	}
	return out
}
