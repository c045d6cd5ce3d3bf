package testharness

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Kfake starts a fresh in-process kfake Kafka cluster for t, closed at
// t.Cleanup. opts pass through to kfake.NewCluster (its defaults: 3 brokers
// on random 127.0.0.1 ports, no auto topic creation unless
// kfake.AllowAutoTopicCreation is given).
func Kfake(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("testharness: kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// KfakeBrokers returns the seed broker addresses of a kfake cluster.
func KfakeBrokers(c *kfake.Cluster) []string { return c.ListenAddrs() }
