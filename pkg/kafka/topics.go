package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// TopicSpec is how Plume creates a topic that does not exist yet.
type TopicSpec struct {
	Partitions        int32 // default 1
	ReplicationFactor int16 // -1: the broker's default
	Configs           map[string]string
}

// EnsureTopics creates the topics that are missing. Existing topics are left
// as they are.
func EnsureTopics(ctx context.Context, adm *kadm.Client, spec TopicSpec, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	parts := spec.Partitions
	if parts <= 0 {
		parts = 1
	}
	rf := spec.ReplicationFactor
	if rf == 0 {
		rf = -1
	}
	var cfg map[string]*string
	if len(spec.Configs) > 0 {
		cfg = make(map[string]*string, len(spec.Configs))
		for k, v := range spec.Configs {
			cfg[k] = kadm.StringPtr(v)
		}
	}
	resp, err := adm.CreateTopics(ctx, parts, rf, cfg, topics...)
	if err != nil {
		return fmt.Errorf("create topics %v: %w", topics, err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %q: %w (%s)", r.Topic, r.Err, r.ErrMessage)
		}
	}
	return nil
}
