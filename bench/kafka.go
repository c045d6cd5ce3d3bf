package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// admin is a kadm client on the harness's broker.
type admin struct {
	cl  *kgo.Client
	adm *kadm.Client
}

func newAdmin(brokers []string) (*admin, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	return &admin{cl: cl, adm: kadm.NewClient(cl)}, nil
}

func (a *admin) close() { a.cl.Close() }

// createTopic creates a one-partition topic whose record timestamps are the
// broker's append time (Plume would create it the same way from the
// pipeline's kafka.topics.configs; creating it first lets consumers attach).
func (a *admin) createTopic(ctx context.Context, topic string) error {
	v := "LogAppendTime"
	resp, err := a.adm.CreateTopic(ctx, 1, -1, map[string]*string{"message.timestamp.type": &v}, topic)
	if err == nil {
		err = resp.Err
	}
	if errors.Is(err, kerr.TopicAlreadyExists) {
		return nil
	}
	return err
}

// committedEnd returns the last stable offset (read_committed end) of
// partition 0 of topic; 0 if the topic does not exist yet.
func (a *admin) committedEnd(ctx context.Context, topic string) int64 {
	l, err := a.adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return 0
	}
	o, ok := l.Lookup(topic, 0)
	if !ok || o.Err != nil {
		return 0
	}
	return o.Offset
}

// capturedWatch counts what a capture process committed without reading the
// records: each capture transaction writes exactly one checkpoint record and
// one commit marker to the checkpoint topic, and one commit marker to the
// (single-partition) data topic. So, after the start's fence (one record,
// one marker), committed events = dataEnd - transactions.
type capturedWatch struct {
	a              *admin
	data, cp       string
	dataBase, base int64
	// first is when waitEvents first saw a committed event (to within its
	// 50 ms poll): a start-up of the pipeline ends before it.
	first time.Time
}

func (a *admin) watch(ctx context.Context, data, cp string) *capturedWatch {
	return &capturedWatch{a: a, data: data, cp: cp, dataBase: a.committedEnd(ctx, data), base: a.committedEnd(ctx, cp)}
}

func (w *capturedWatch) events(ctx context.Context) int64 {
	d := w.a.committedEnd(ctx, w.data) - w.dataBase
	c := w.a.committedEnd(ctx, w.cp) - w.base - 2
	if c < 0 {
		c = 0
	}
	return d - c/2
}

// waitEvents polls until at least n events are committed, or the count has
// not moved for 3 s while within 3 of n (transactions without data events
// make the count a lower bound), or the timeout passes. It returns when the
// count last changed, i.e. when the last event was committed.
func (w *capturedWatch) waitEvents(ctx context.Context, n int64, timeout time.Duration, alive func() error) (time.Time, int64, error) {
	deadline := time.Now().Add(timeout)
	var last int64 = -1
	lastChange := time.Now()
	for {
		got := w.events(ctx)
		now := time.Now()
		if got != last {
			last, lastChange = got, now
		}
		if got > 0 && w.first.IsZero() {
			w.first = now
		}
		if got >= n || (got >= n-3 && now.Sub(lastChange) > 3*time.Second) {
			return lastChange, got, nil
		}
		if err := alive(); err != nil {
			return lastChange, got, err
		}
		if now.After(deadline) {
			return lastChange, got, fmt.Errorf("timed out after %v with %d of %d events committed", timeout, got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sampleRecords reads up to n committed records of topic from its start.
func sampleRecords(ctx context.Context, brokers []string, topic string, n int) ([]*kgo.Record, error) {
	var out []*kgo.Record
	_, _, err := readFromStart(ctx, brokers, topic, int64(n), 60*time.Second, func(r *kgo.Record) { out = append(out, r) })
	switch {
	case ctx.Err() != nil:
		return out, ctx.Err()
	case len(out) == 0:
		return nil, fmt.Errorf("no records in %s: %v", topic, err)
	}
	return out, nil // fewer than n records is a smaller sample, not a failure
}

// readFromStart reads partition 0 of topic from its start, read_committed,
// passing each record to each, until n records arrived or the timeout
// passed. It returns how many arrived and how long that took; fewer than n
// is an error.
func readFromStart(ctx context.Context, brokers []string, topic string, n int64, timeout time.Duration, each func(*kgo.Record)) (int64, time.Duration, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	start := time.Now()
	var got int64
	for got < n && time.Since(start) < timeout {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fs := cl.PollRecords(pctx, int(n-got))
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			if got < n {
				got++
				if each != nil {
					each(r)
				}
			}
		})
		if ctx.Err() != nil {
			return got, time.Since(start), ctx.Err()
		}
	}
	if got < n {
		return got, time.Since(start), fmt.Errorf("read %d of %d records of %s in %v", got, n, topic, timeout)
	}
	return got, time.Since(start), nil
}

// pprofTop is the top of a profile as `go tool pprof -top` prints it.
func pprofTop(file, base, index string, extra ...string) string {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=12"}, extra...)
	if index != "" {
		args = append(args, "-sample_index="+index)
	}
	if base != "" {
		args = append(args, "-base", base)
	}
	out, err := exec.Command("go", append(args, file)...).Output()
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return strings.Join(lines, "\n")
}

// relResults shortens a path under the results dir for the report.
func relResults(p string) string {
	if r, err := filepath.Rel(resultsDir, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
