package search

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/url"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// Target is the search target. Build it with New (or through the registry).
// The delivery layer calls its methods from one goroutine.
type Target struct {
	name string
	set  *settings
	cl   *client
	log  *slog.Logger

	// known holds indexes that exist (create_index only).
	known map[string]bool
	// truncWarned holds tables whose truncate was already logged as ignored.
	truncWarned map[string]bool

	// memo remembers, for the batch being applied, the operations already
	// done or rejected, so that Apply called again with the same batch after
	// a retryable error sends only the rest.
	memoBatch *target.Batch
	memo      map[opKey]opState
}

var _ target.Target = (*Target)(nil)

// msgKey identifies a message of a batch across Apply calls.
type msgKey struct {
	topic     string
	partition int32
	offset    int64
	route, id string
}

// opKey identifies one operation of a message: n is 0 for the message's own
// write, 1 for the delete of the old _id after a primary-key change.
type opKey struct {
	msg msgKey
	n   int
}

type opState struct {
	poison error // nil: done
}

// op is one bulk operation.
type op struct {
	key     opKey
	msg     int // index into the batch's messages
	kind    string
	index   string
	id      string
	version int64
	doc     []byte // the document (index operations)
}

// New validates cfg and builds the target without connecting. dir resolves
// relative TLS file names ("" leaves them as they are). log may be nil.
func New(cfg Config, name, dir string, log *slog.Logger) (*Target, error) {
	errf := func(_, key, format string, args ...any) error {
		return fmt.Errorf("targets.%s.%s: %s", name, key, fmt.Sprintf(format, args...))
	}
	exprErr := func(err error) error { return fmt.Errorf("targets.%s.index_expr: %w", name, err) }
	return newTarget(cfg, name, dir, log, errf, exprErr)
}

func newTarget(cfg Config, name, dir string, log *slog.Logger, errf errFunc, exprErr func(error) error) (*Target, error) {
	set, err := cfg.validate(dir, errf, exprErr)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	t := &Target{name: name, set: set, cl: newClient(set), log: log, known: map[string]bool{}, truncWarned: map[string]bool{}}
	if set.authorization != "" {
		for _, u := range set.urls {
			if u.Scheme == "http" {
				log.Warn("search target sends credentials over plain http", "target", name, "origin", u.Scheme+"://"+u.Host)
				break
			}
		}
	}
	return t, nil
}

// Open checks that the cluster answers (GET /) and logs what it is. It keeps
// no offsets of its own: the index is idempotent by version, so it returns
// nil and the delivery layer's offsets apply.
func (t *Target) Open(ctx context.Context) (target.Offsets, error) {
	r, err := t.cl.do(ctx, nethttp.MethodGet, "/", "", nil, "")
	if err != nil {
		return nil, err
	}
	switch {
	case r.status == 401:
		return nil, target.Permanent(t.cl.httpError("search target "+t.name+": connect", r))
	case r.status == 403:
		// Credentials that may write documents but not read cluster
		// information: the bulk requests will tell.
		t.log.Warn("search target may not read the cluster's information (GET / answered 403); continuing", "target", t.name, "origin", r.origin)
		return nil, nil
	case r.status < 200 || r.status > 299:
		return nil, t.cl.httpError("search target "+t.name+": connect", r)
	}
	var info struct {
		Version struct {
			Distribution string `json:"distribution"`
			Number       string `json:"number"`
		} `json:"version"`
	}
	_ = json.Unmarshal(r.body, &info)
	dist := info.Version.Distribution
	if dist == "" {
		dist = "elasticsearch"
	}
	t.log.Info("search target ready", "target", t.name, "origin", r.origin, "cluster", dist+" "+info.Version.Number)
	return nil, nil
}

// Close releases idle connections.
func (t *Target) Close() error {
	t.cl.http.CloseIdleConnections()
	return nil
}

// Apply writes every message of b that is not written yet, as versioned
// bulk operations, and examines every item of every response.
//
// Invariant: Apply returns nil (so the layer checkpoints b's offsets) only
// when every message's operations were applied (written, or answered with a
// version conflict, which means the index already holds that version of the
// document or a newer one), and *target.RecordErrors with Applied set only
// when the rest were rejected for good and are dead-lettered by the layer.
// Any other outcome is an error, so the position never advances past an
// unhandled item. Retrying is safe because every operation carries its
// external version: one the index already has is a no-op.
//
// Within a batch, operations on the same document (index and _id) are
// coalesced to the one with the highest version (the last write wins): the
// index would end in that state whatever order they arrived in. If that
// operation is rejected for good, the next highest is sent, so the index
// ends as if the messages had been applied one by one.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	if len(b.Messages) == 0 {
		return nil
	}
	if t.memoBatch != b {
		t.memoBatch, t.memo = b, map[opKey]opState{}
	}
	pending, failed := t.prepare(b)
	for len(pending) > 0 {
		winners, losers := coalesce(pending)
		if err := t.ensureIndexes(ctx, winners); err != nil {
			return err
		}
		res, err := t.send(ctx, winners)
		if err != nil {
			return err
		}
		// The losers of a rejected operation are sent in the next round;
		// those of an applied one are done with it (their versions are
		// lower, so the index would answer them with a conflict).
		var next []*op
		retry := 0
		var first error
		for _, o := range winners {
			switch v := res[o]; v.verdict {
			case vApplied:
				t.memo[o.key] = opState{}
				for _, l := range losers[o] {
					t.memo[l.key] = opState{}
				}
			case vPoison:
				t.memo[o.key] = opState{poison: v.err}
				next = append(next, losers[o]...)
			default: // vRetry, or no outcome at all
				retry++
				if first == nil {
					first = v.err
				}
			}
		}
		if retry > 0 {
			if first == nil {
				first = errors.New("no outcome for an operation")
			}
			return fmt.Errorf("search target %s: %d of %d operations must be retried (the others are done): %w", t.name, retry, len(winners), first)
		}
		pending = next
	}
	for i := range b.Messages {
		k := keyOf(&b.Messages[i])
		for n := 0; n < 2; n++ {
			if st, ok := t.memo[opKey{k, n}]; ok && st.poison != nil {
				if _, dup := failed[i]; !dup {
					failed[i] = st.poison
				}
			}
		}
	}
	t.memoBatch, t.memo = nil, nil
	if len(failed) > 0 {
		return &target.RecordErrors{Failed: failed, Applied: true}
	}
	return nil
}

func keyOf(m *target.Message) msgKey {
	return msgKey{m.Topic, m.Partition, m.Offset, m.Route, m.ID}
}

// prepare turns the messages into operations, skipping those already done.
// Messages that cannot be written at all (no key, a bad index name, a row
// JSON cannot hold) are returned as failures.
func (t *Target) prepare(b *target.Batch) ([]*op, map[int]error) {
	failed := map[int]error{}
	var ops []*op
	for i := range b.Messages {
		m := &b.Messages[i]
		k := keyOf(m)
		if m.Op == event.OpTruncate {
			// A truncate cannot be versioned (a delete-by-query replayed
			// after a crash would delete documents written after it), so
			// it is not applied; see docs/targets/search.md.
			tbl := m.Database + "." + m.Schema + "." + m.Table
			if !t.truncWarned[tbl] {
				t.truncWarned[tbl] = true
				t.log.Warn("search target ignores truncates", "target", t.name, "database", m.Database, "schema", m.Schema, "table", m.Table)
			}
			continue
		}
		own, oldDel := opKey{k, 0}, opKey{k, 1}
		_, ownDone := t.memo[own]
		_, oldDone := t.memo[oldDel]
		if ownDone && oldDone {
			continue
		}
		index, err := t.set.index.name(m)
		if err != nil {
			failed[i] = err
			continue
		}
		id, err := docID(m.Subject)
		if err != nil {
			failed[i] = err
			continue
		}
		// The version: the record's Kafka offset plus one (versions must be
		// at least 1 for all the servers). Capture writes all changes of a
		// key to one partition in commit order, so per key it grows with
		// the source position.
		version := m.Offset + 1
		if version < 1 {
			failed[i] = fmt.Errorf("the record has no valid offset (%d)", m.Offset)
			continue
		}
		if !oldDone {
			old, err := oldSubject(m)
			switch {
			case err != nil:
				failed[i] = err
				continue
			case old == "":
				t.memo[oldDel] = opState{} // no key change: nothing to delete
			default:
				oldID, err := docID(old)
				if err != nil {
					failed[i] = fmt.Errorf("the key before the update: %w", err)
					continue
				}
				ops = append(ops, &op{key: oldDel, msg: i, kind: actDelete, index: index, id: oldID, version: version})
			}
		}
		if ownDone {
			continue
		}
		o := &op{key: own, msg: i, kind: actIndex, index: index, id: id, version: version}
		if m.Op == event.OpDelete {
			o.kind = actDelete
		} else {
			if m.Row == nil {
				failed[i] = errors.New("the message has no row to index")
				continue
			}
			doc, err := appendDocument(nil, m.Row)
			if err != nil {
				failed[i] = err
				continue
			}
			o.doc = doc
		}
		ops = append(ops, o)
	}
	return ops, failed
}

// coalesce keeps one operation per document (index, _id): the one with the
// highest version, the later one in the batch among equal versions. losers
// maps each kept operation to those it superseded.
func coalesce(ops []*op) (winners []*op, losers map[*op][]*op) {
	type docKey struct{ index, id string }
	best := make(map[docKey]*op, len(ops))
	for _, o := range ops {
		k := docKey{o.index, o.id}
		if w, ok := best[k]; !ok || o.version >= w.version {
			best[k] = o
		}
	}
	losers = map[*op][]*op{}
	winners = make([]*op, 0, len(best))
	for _, o := range ops {
		w := best[docKey{o.index, o.id}]
		if w == o {
			winners = append(winners, o)
		} else {
			losers[w] = append(losers[w], o)
		}
	}
	return winners, losers
}

// result is the outcome of one operation.
type result struct {
	verdict verdict
	err     error
}

// send writes ops (one per document) in as few _bulk requests as the size
// limits allow and returns each one's outcome. A request-level failure that
// retrying may cure is returned as an error (nothing of that request is
// counted as done); credentials refused, a Permanent error.
func (t *Target) send(ctx context.Context, ops []*op) (map[*op]result, error) {
	res := make(map[*op]result, len(ops))
	var body []byte
	var chunk []*op
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		err := t.sendChunk(ctx, chunk, body, res)
		body, chunk = body[:0], chunk[:0]
		return err
	}
	for _, o := range ops {
		size := len(o.doc) + len(o.index) + len(o.id) + 96
		if len(chunk) > 0 && (len(chunk) >= t.set.maxBulkActions || len(body)+size > t.set.maxBulkBytes) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		body = appendOp(body, o)
		chunk = append(chunk, o)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return res, nil
}

func appendOp(dst []byte, o *op) []byte {
	dst = appendAction(dst, o.kind, o.index, o.id, o.version)
	if o.kind == actIndex {
		dst = append(dst, o.doc...)
		dst = append(dst, '\n')
	}
	return dst
}

// sendChunk posts one _bulk request and records each item's outcome. A
// whole request rejected with 400 or 413 is split in halves until the
// offending operations are isolated and rejected alone.
func (t *Target) sendChunk(ctx context.Context, ops []*op, body []byte, res map[*op]result) error {
	r, err := t.cl.do(ctx, nethttp.MethodPost, "/_bulk", t.set.query, body, "application/x-ndjson")
	if err != nil {
		return err
	}
	switch s := r.status; {
	case s >= 200 && s < 300:
	case s == 400 || s == 413:
		if len(ops) == 1 {
			res[ops[0]] = result{vPoison, t.opError(ops[0], t.cl.httpError("bulk", r))}
			return nil
		}
		mid := len(ops) / 2
		for _, half := range [][]*op{ops[:mid], ops[mid:]} {
			var b []byte
			for _, o := range half {
				b = appendOp(b, o)
			}
			if err := t.sendChunk(ctx, half, b, res); err != nil {
				return err
			}
		}
		return nil
	case s == 401 || s == 403:
		return target.Permanent(fmt.Errorf("search target %s: %w", t.name, t.cl.httpError("bulk", r)))
	case s == 404 || s == 405:
		return target.Permanent(fmt.Errorf("search target %s: %w (is the URL the cluster's, with the right path prefix?)", t.name, t.cl.httpError("bulk", r)))
	default:
		return t.cl.httpError("bulk", r)
	}
	var br bulkResponse
	if err := json.Unmarshal(r.body, &br); err != nil {
		return fmt.Errorf("bulk: unreadable response from %s: %v: %s", r.origin, err, t.cl.snippet(r.body))
	}
	if len(br.Items) != len(ops) {
		return fmt.Errorf("bulk: %d items in the response from %s for %d operations", len(br.Items), r.origin, len(ops))
	}
	for i, o := range ops {
		item, ok := br.Items[i][o.kind]
		if !ok || len(br.Items[i]) != 1 {
			return fmt.Errorf("bulk: item %d of the response from %s is not a %s result", i, r.origin, o.kind)
		}
		v := classify(o.kind, item)
		var err error
		if v != vApplied {
			reason := fmt.Sprintf("status %d", item.Status)
			if item.Error != nil {
				reason += " " + t.cl.scrub(item.Error.String())
			}
			err = t.opError(o, errors.New(reason))
		}
		if v == vPermanent {
			return target.Permanent(fmt.Errorf("search target %s: %w", t.name, err))
		}
		res[o] = result{v, err}
	}
	return nil
}

// opError names the operation in an item's error (it becomes the dead
// letter's reason).
func (t *Target) opError(o *op, err error) error {
	return fmt.Errorf("search %s of _id %q in index %q (version %d): %w", o.kind, o.id, o.index, o.version, err)
}

// ensureIndexes creates the missing indexes of ops with the configured
// settings and mappings (create_index only).
func (t *Target) ensureIndexes(ctx context.Context, ops []*op) error {
	if t.set.createBody == nil {
		return nil
	}
	for _, o := range ops {
		if t.known[o.index] {
			continue
		}
		if err := t.ensureIndex(ctx, o.index); err != nil {
			return err
		}
		if len(t.known) >= maxIndexCache {
			clear(t.known)
		}
		t.known[o.index] = true
	}
	return nil
}

func (t *Target) ensureIndex(ctx context.Context, index string) error {
	path := "/" + url.PathEscape(index)
	r, err := t.cl.do(ctx, nethttp.MethodHead, path, "", nil, "")
	if err != nil {
		return err
	}
	switch {
	case r.status == 200:
		return nil
	case r.status == 401 || r.status == 403:
		return target.Permanent(fmt.Errorf("search target %s: %w", t.name, t.cl.httpError("check index "+index, r)))
	case r.status != 404:
		return t.cl.httpError("check index "+index, r)
	}
	r, err = t.cl.do(ctx, nethttp.MethodPut, path, "", t.set.createBody, "application/json")
	if err != nil {
		return err
	}
	switch s := r.status; {
	case s >= 200 && s < 300:
		t.log.Info("search target created index", "target", t.name, "index", index)
		return nil
	case s == 400 && errorOf(r.body) != nil && errorOf(r.body).Type == "resource_already_exists_exception":
		return nil
	case s == 400 || s == 401 || s == 403:
		// Bad settings or mappings in the pipeline file, or no right to
		// create indexes: retrying cannot help.
		return target.Permanent(fmt.Errorf("search target %s: %w", t.name, t.cl.httpError("create index "+index, r)))
	default:
		return t.cl.httpError("create index "+index, r)
	}
}
