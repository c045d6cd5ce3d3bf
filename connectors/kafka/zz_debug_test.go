package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestZZBaseline(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1))
	brokers := c.ListenAddrs()
	in := makeInput(t, 600, false)
	produceInput(t, brokers, in)
	want := endOffsets(in.msgs)
	store := &memStore{}
	start := time.Now()
	stop := deliver(t, brokers, store)
	half := target.Offsets{}
	for tp, o := range want {
		half[tp] = o / 2
	}
	waitApplied(t, store, half, 60*time.Second)
	t.Log("half", time.Since(start))
	stop()
	t.Log("stopped", time.Since(start))
	store = &memStore{}
	stop = deliver(t, brokers, store)
	waitApplied(t, store, want, 60*time.Second)
	t.Log("all", time.Since(start))
	stop()
}
