package http

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	nethttp "net/http"
	"strings"
	"sync"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// Target is the http target. Build it with New (or through the registry).
type Target struct {
	name   string
	set    *settings
	client *nethttp.Client
	auth   *authenticator
	red    *redactor
	log    *slog.Logger
	header nethttp.Header // User-Agent and the configured headers

	// memo remembers, for the batch being applied, the messages already
	// delivered or rejected, so that Apply called again with the same batch
	// after a retryable error sends only the rest.
	mu        sync.Mutex
	memoBatch *target.Batch
	memo      map[msgKey]memoEntry
}

var _ target.Target = (*Target)(nil)

// msgKey identifies a message of a batch across Apply calls.
type msgKey struct {
	topic     string
	partition int32
	offset    int64
	route, id string
}

type memoEntry struct {
	kind outcome // delivered or poison
	err  error   // the reason, for poison
}

func keyOf(m *target.Message) msgKey {
	return msgKey{m.Topic, m.Partition, m.Offset, m.Route, m.ID}
}

// New validates cfg and builds the target without connecting. dir resolves
// relative TLS file names ("" leaves them as they are). log may be nil.
func New(cfg Config, name, dir string, log *slog.Logger) (*Target, error) {
	return newTarget(cfg, name, dir, log, func(_, key, format string, args ...any) error {
		return fmt.Errorf("targets.%s.%s: %s", name, key, fmt.Sprintf(format, args...))
	})
}

func newTarget(cfg Config, name, dir string, log *slog.Logger, errf func(top, key, format string, args ...any) error) (*Target, error) {
	set, err := cfg.validate(dir, errf)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	tr := nethttp.DefaultTransport.(*nethttp.Transport).Clone()
	if set.tls != nil {
		tr.TLSClientConfig = set.tls
	}
	tr.MaxIdleConnsPerHost = set.concurrency + 1
	client := &nethttp.Client{
		Transport: tr,
		// Only redirects that keep the method and body are followed: a
		// 301/302/303 would turn the POST into a GET and "deliver" nothing.
		// Those responses are then retryable statuses.
		CheckRedirect: func(req *nethttp.Request, via []*nethttp.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if c := req.Response.StatusCode; c == nethttp.StatusTemporaryRedirect || c == nethttp.StatusPermanentRedirect {
				return nil
			}
			return nethttp.ErrUseLastResponse
		},
	}
	red := &redactor{}
	t := &Target{
		name:   name,
		set:    set,
		client: client,
		red:    red,
		log:    log,
		auth:   newAuthenticator(set.auth, client, set.timeout, red),
		header: nethttp.Header{"User-Agent": {"plume/" + event.Version}},
	}
	for _, h := range set.headers {
		t.header[h[0]] = []string{h[1]}
		red.add(h[1], 8)
	}
	if set.url.Scheme == "http" && (set.auth.Bearer.IsSet() || set.auth.Basic != nil || set.auth.OAuth2 != nil) {
		log.Warn("http target sends credentials over plain http", "target", name, "origin", set.origin)
	}
	if o := set.auth.OAuth2; o != nil && strings.HasPrefix(strings.ToLower(strings.TrimSpace(o.TokenURL)), "http:") {
		log.Warn("http target sends its OAuth2 client secret over plain http", "target", name)
	}
	return t, nil
}

// Open does nothing: the target keeps no offsets of its own (it returns
// nil) and connects on the first request.
func (t *Target) Open(context.Context) (target.Offsets, error) {
	t.log.Info("http target ready", "target", t.name, "origin", t.set.origin, "mode", t.set.mode,
		"body", t.set.body, "concurrency", t.set.concurrency)
	return nil, nil
}

// Close releases idle connections.
func (t *Target) Close() error {
	t.client.CloseIdleConnections()
	return nil
}

// item is a message to send.
type item struct {
	key     msgKey
	ev      *ce
	subject string // ordering key; "" makes the item a barrier
}

// run is the shared state of one Apply's workers.
type run struct {
	mu         sync.Mutex
	stop       bool
	retry      error
	perm       error
	retryAfter time.Duration
}

func (r *run) stopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stop
}

func (r *run) fail(res result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stop = true
	if res.kind == permanent {
		if r.perm == nil {
			r.perm = res.err
		}
	} else if r.retry == nil {
		r.retry = res.err
	}
	r.retryAfter = max(r.retryAfter, res.retryAfter)
}

// Apply delivers every message of b not delivered yet: up to concurrency
// requests at a time, never two at a time for the same subject, in batch
// order per subject. A message without a subject (a truncate) is a barrier:
// the requests before it complete first and those after it start after it.
//
// It returns nil when all were delivered; *target.RecordErrors with
// Applied set when some were rejected with a 4xx (the rest delivered);
// a Permanent error when the receiver refuses the credentials; a plain
// error otherwise (after waiting for a Retry-After), which makes the
// delivery layer call Apply again with the same batch: messages delivered
// by earlier calls are then skipped.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	if len(b.Messages) == 0 {
		return nil
	}
	t.mu.Lock()
	if t.memoBatch != b {
		t.memoBatch, t.memo = b, make(map[msgKey]memoEntry, len(b.Messages))
	}
	var items []*item
	for i := range b.Messages {
		m := &b.Messages[i]
		k := keyOf(m)
		if _, done := t.memo[k]; done {
			continue
		}
		e, err := eventOf(m, t.set.body)
		if err != nil {
			t.memo[k] = memoEntry{kind: poison, err: err}
			continue
		}
		subj := m.Subject
		if subj == "" {
			subj = e.subject
		}
		items = append(items, &item{key: k, ev: e, subject: subj})
	}
	t.mu.Unlock()

	r := &run{}
	for len(items) > 0 && !r.stopped() && ctx.Err() == nil {
		// The next segment: up to a barrier, or the barrier alone.
		n := 0
		for n < len(items) && items[n].subject != "" {
			n++
		}
		if n == 0 {
			n = 1
		}
		t.runSegment(ctx, r, items[:n])
		items = items[n:]
	}

	if r.perm != nil {
		t.forget()
		if target.IsPermanent(r.perm) {
			return r.perm
		}
		return target.Permanent(r.perm)
	}
	if r.retry != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.retryAfter > 0 {
			timer := time.NewTimer(r.retryAfter)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
			timer.Stop()
		}
		t.mu.Lock()
		done := len(t.memo)
		t.mu.Unlock()
		return fmt.Errorf("%w (%d of %d messages of the batch done, the rest will be retried)", r.retry, done, len(b.Messages))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	failed := map[int]error{}
	t.mu.Lock()
	for i := range b.Messages {
		if e := t.memo[keyOf(&b.Messages[i])]; e.kind == poison && e.err != nil {
			failed[i] = e.err
		}
	}
	t.mu.Unlock()
	t.forget()
	if len(failed) > 0 {
		return &target.RecordErrors{Failed: failed, Applied: true}
	}
	return nil
}

func (t *Target) forget() {
	t.mu.Lock()
	t.memoBatch, t.memo = nil, nil
	t.mu.Unlock()
}

// runSegment sends items (none of them a barrier, or one barrier alone):
// items are sharded by a hash of their subject, each shard sent in order by
// its own goroutine.
func (t *Target) runSegment(ctx context.Context, r *run, items []*item) {
	conc := min(t.set.concurrency, len(items))
	if t.set.mode == ModeBatch {
		// No more shards than requests: a small batch is one request.
		conc = min(conc, (len(items)+t.set.maxBatch-1)/t.set.maxBatch)
	}
	if conc <= 1 {
		t.runShard(ctx, r, items)
		return
	}
	shards := make([][]*item, conc)
	for _, it := range items {
		h := fnv.New32a()
		_, _ = h.Write([]byte(it.subject))
		s := h.Sum32() % uint32(conc)
		shards[s] = append(shards[s], it)
	}
	var wg sync.WaitGroup
	for _, sh := range shards {
		if len(sh) > 0 {
			wg.Go(func() { t.runShard(ctx, r, sh) })
		}
	}
	wg.Wait()
}

// runShard sends items one request after the other, until done or stopped.
func (t *Target) runShard(ctx context.Context, r *run, items []*item) {
	if t.set.mode == ModeBatch {
		for start := 0; start < len(items); start += t.set.maxBatch {
			if !t.sendChunk(ctx, r, items[start:min(start+t.set.maxBatch, len(items))]) {
				return
			}
		}
		return
	}
	for _, it := range items {
		if r.stopped() || ctx.Err() != nil {
			return
		}
		if !t.record(r, t.send(ctx, t.singleRequest(it)), it) {
			return
		}
	}
}

// sendChunk sends items as one batch request. When the receiver rejects the
// batch with a 4xx it is split in halves, sent in order, until the
// rejected events are isolated: only they are dead-lettered.
func (t *Target) sendChunk(ctx context.Context, r *run, items []*item) bool {
	if r.stopped() || ctx.Err() != nil {
		return false
	}
	res := t.send(ctx, t.batchRequest(items))
	if res.kind == poison && len(items) > 1 {
		mid := len(items) / 2
		return t.sendChunk(ctx, r, items[:mid]) && t.sendChunk(ctx, r, items[mid:])
	}
	return t.record(r, res, items...)
}

// record notes the outcome of a request for its items; false stops the
// shard (and, through r, the whole Apply).
func (t *Target) record(r *run, res result, items ...*item) bool {
	switch res.kind {
	case delivered, poison:
		t.mu.Lock()
		for _, it := range items {
			t.memo[it.key] = memoEntry{kind: res.kind, err: res.err}
		}
		t.mu.Unlock()
		return true
	}
	r.fail(res)
	return false
}

func (t *Target) singleRequest(it *item) *request {
	h := t.header.Clone()
	var body []byte
	if t.set.mode == ModeBinary {
		binaryHeaders(h, it.ev)
		body = it.ev.data
	} else {
		h["Content-Type"] = []string{contentTypeStructured}
		body = appendStructured(make([]byte, 0, len(it.ev.data)+512), it.ev)
	}
	h["Idempotency-Key"] = []string{idempotencyKey(it.ev.source, it.ev.id)}
	return &request{body: body, header: h}
}

func (t *Target) batchRequest(items []*item) *request {
	size := 2
	for _, it := range items {
		size += len(it.ev.data) + 512
	}
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, it := range items {
		if i > 0 {
			body = append(body, ',')
		}
		body = appendStructured(body, it.ev)
	}
	body = append(body, ']')
	h := t.header.Clone()
	h["Content-Type"] = []string{contentTypeBatch}
	h["Idempotency-Key"] = []string{batchIdempotencyKey(items[0].ev, items[len(items)-1].ev, len(items))}
	return &request{body: body, header: h}
}
