package salesforce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// Target is the salesforce target. Build it with New or through the
// registry.
type Target struct {
	name  string
	set   *settings
	c     *client
	log   *slog.Logger
	stats Stats

	schemaMu sync.Mutex
	sch      *schema

	// memo remembers, for the batch being applied, the outcome of each
	// message already settled (applied, ignored or rejected) and the Bulk
	// jobs in flight, so that Apply called again with the same batch after
	// a retryable error sends only the rest and resumes its jobs.
	memoBatch *target.Batch
	memo      map[int]outcome
	jobs      map[int]string // round -> Bulk job id not yet settled

	truncWarned bool
}

var (
	_ target.Target            = (*Target)(nil)
	_ target.DeliveryDefaulter = (*Target)(nil)
)

// outcome of one message.
type outcome struct {
	err error // nil: applied (or nothing to do); else: rejected, dead-letter it
}

func errPermanent(err error) error { return target.Permanent(err) }

// New validates cfg and builds the target without connecting. dir resolves
// a relative private_key_file ("" leaves it). log may be nil.
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
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = set.concurrency + 2
	hc := &http.Client{
		Transport: tr,
		// The API never redirects a REST call; following one would resend
		// the bearer token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	red := &redactor{}
	if set.clientSecret.IsSet() {
		red.add(set.clientSecret.Reveal())
	}
	t := &Target{name: name, set: set, log: log}
	t.c = &client{set: set, http: hc, red: red, log: log, name: name, stats: &t.stats,
		ts: &tokenSource{set: set, client: hc, red: red, sem: make(chan struct{}, 1)}}
	if strings.HasPrefix(set.loginURL, "http:") {
		log.Warn("salesforce target sends credentials over plain http (tests only)", "target", name)
	}
	return t, nil
}

// Stats returns the target's counters.
func (t *Target) Stats() *Stats { return &t.stats }

// RowsOnly reports that the target reads only the messages' rows and
// attributes (calls carry rows, not the CloudEvent), so the delivery layer
// need not keep the consumed records (target.RowsOnly): a batch of 10,000
// changes holds about 13 MB less.
func (t *Target) RowsOnly() bool { return true }

// DeliveryDefaults makes the delivery layer's batches large by default (see
// DefaultBatchMaxEvents).
func (t *Target) DeliveryDefaults() target.DeliveryDefaults {
	return target.DeliveryDefaults{BatchMaxEvents: DefaultBatchMaxEvents, BatchMaxBytes: DefaultBatchMaxBytes, BatchLinger: DefaultBatchLinger, Coalesce: true}
}

// Open authenticates, reads the object's fields (describe) and checks the
// external ID and delete_fields against them, then waits for Bulk API jobs
// a previous run of this target may have left processing (see waitForJobs).
// It returns nil offsets: the delivery layer's checkpoints are the truth.
func (t *Target) Open(ctx context.Context) (target.Offsets, error) {
	sch, err := t.describe(ctx)
	if err != nil {
		return nil, err
	}
	ef := sch.field(t.set.externalID)
	if ef == nil {
		return nil, errPermanent(fmt.Errorf("salesforce target %q: %s has no field %s (external_id)", t.name, t.set.object, t.set.externalID))
	}
	if !ef.ExternalID && !ef.IDLookup {
		return nil, errPermanent(fmt.Errorf("salesforce target %q: %s.%s is not an External ID field", t.name, t.set.object, ef.Name))
	}
	for k := range t.set.deleteFields {
		if sch.field(k) == nil {
			return nil, errPermanent(fmt.Errorf("salesforce target %q: delete_fields: %s has no field %s", t.name, t.set.object, k))
		}
	}
	t.schemaMu.Lock()
	t.sch = sch
	t.schemaMu.Unlock()
	if err := t.waitForJobs(ctx); err != nil {
		return nil, err
	}
	s := t.c.ts.cached()
	inst := ""
	if s != nil {
		inst = originOf(s.instance)
	}
	t.log.Info("salesforce target ready", "target", t.name, "object", t.set.object, "external_id", ef.Name,
		"instance", inst, "api_version", t.set.apiVersion, "bulk_threshold", t.set.bulkThreshold, "delete", t.set.delete)
	return nil, nil
}

func originOf(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		if j := strings.IndexByte(u[i+3:], '/'); j >= 0 {
			return u[:i+3+j]
		}
	}
	return u
}

// Close releases idle connections.
func (t *Target) Close() error {
	t.c.http.CloseIdleConnections()
	return nil
}

// schemaNow returns the described fields; refresh describes again, for a
// row naming a field added since Open (Apply does it at most once per call).
func (t *Target) schemaNow(ctx context.Context, refresh bool) (*schema, error) {
	t.schemaMu.Lock()
	sch := t.sch
	t.schemaMu.Unlock()
	if sch != nil && !refresh {
		return sch, nil
	}
	n, err := t.describe(ctx)
	if err != nil {
		return nil, err
	}
	t.schemaMu.Lock()
	t.sch = n
	t.schemaMu.Unlock()
	return n, nil
}

// work is one message to send.
type work struct {
	idx    int // index into the batch
	round  int // 0 for a key's first message in the batch, 1 for its second, ...
	delete bool
	ext    string
	rec    *rendered // nil for a delete
}

// Apply makes the batch's changes in Salesforce. Each message becomes at
// most one record operation; messages of the same external ID are
// processed in rounds, in batch order (round k holds each key's k-th
// message), so no call ever holds two records of one key. With the
// delivery layer's coalescing (on by default) a batch has one message per
// key, so one round.
//
// Per round: upserts go through one Bulk API 2.0 job when there are at
// least bulk_threshold of them, else through Collections calls of up to 200
// records (concurrency calls in flight); deletes through a SOQL lookup of
// the external IDs and a Collections delete of the IDs found.
//
// Invariant (exactly-once effect): Apply returns nil or *RecordErrors
// {Applied: true} only when Salesforce has acknowledged every message of
// the batch: a success result (Collections response, Bulk successfulResults)
// or a per-record rejection, which the delivery layer dead-letters before it
// checkpoints. Any other outcome is an error, so the batch's offsets are
// not saved and the batch is applied again; the memo skips what is already
// acknowledged. Every write is an upsert by external ID (or a delete that is
// a no-op when the record is gone), so applying a message twice leaves the
// same record state: a replay after a crash creates no duplicate records.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	if len(b.Messages) == 0 {
		return nil
	}
	if t.memoBatch != b {
		t.memoBatch, t.memo, t.jobs = b, map[int]outcome{}, map[int]string{}
	}
	sch, err := t.schemaNow(ctx, false)
	if err != nil {
		return err
	}
	var items []*work
	seen := map[string]int{}
	redescribed := false
	for i := range b.Messages {
		m := &b.Messages[i]
		if m.Op == event.OpTruncate {
			if !t.truncWarned {
				t.truncWarned = true
				t.log.Warn("salesforce target ignores truncates (records are never mass-deleted)", "target", t.name, "table", m.Table)
			}
			t.memo[i] = outcome{}
			continue
		}
		if m.Op == event.OpDelete && t.set.delete == DeleteIgnore {
			t.memo[i] = outcome{}
			continue
		}
		var extra map[string]any
		row := m.Row
		switch {
		case m.Op == event.OpDelete && t.set.delete == DeleteUpsert:
			extra = t.set.deleteFields
		case m.Op == event.OpDelete:
			// A delete needs only the external ID: other fields of the
			// before image cannot make it fail.
			row = nil
			for k, v := range m.Row {
				if strings.EqualFold(k, t.set.externalID) {
					row = map[string]any{k: v}
				}
			}
		}
		rec, err := t.render(sch, row, extra)
		if errors.Is(err, errUnknownField) && !redescribed {
			// Perhaps a field added since Open: describe again (once per
			// call, so a bad map costs one describe per batch).
			redescribed = true
			if sch, err = t.schemaNow(ctx, true); err != nil {
				return err
			}
			rec, err = t.render(sch, row, extra)
		}
		if err != nil {
			if _, done := t.memo[i]; !done {
				t.memo[i] = outcome{err: fmt.Errorf("salesforce: %s: %v", t.set.object, err)}
			}
			continue
		}
		w := &work{idx: i, round: seen[rec.ext], ext: rec.ext, delete: m.Op == event.OpDelete && t.set.delete == DeleteDelete}
		seen[rec.ext]++
		if !w.delete {
			w.rec = rec
		}
		if _, done := t.memo[i]; !done {
			items = append(items, w)
		}
	}

	rounds := map[int][]*work{}
	last := 0
	for _, w := range items {
		rounds[w.round] = append(rounds[w.round], w)
		last = max(last, w.round)
	}
	for r := 0; r <= last && len(items) > 0; r++ {
		ws := rounds[r]
		var ups, dels []*work
		for _, w := range ws {
			if w.delete {
				dels = append(dels, w)
			} else {
				ups = append(ups, w)
			}
		}
		res := &roundResult{}
		if len(ups) > 0 {
			if t.set.bulkThreshold > 0 && (len(ups) >= t.set.bulkThreshold || t.jobs[r] != "") {
				t.bulkUpsert(ctx, r, ups, res)
			} else {
				t.collectionsUpsert(ctx, ups, res)
			}
		}
		if len(dels) > 0 && res.stop == nil {
			t.deleteByExternalID(ctx, dels, res)
		}
		for idx, e := range res.rejected {
			t.memo[idx] = outcome{err: e}
		}
		for _, idx := range res.applied {
			t.memo[idx] = outcome{}
		}
		if res.stop != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if classify(res.stop) == kPermanent {
				t.forget()
				if target.IsPermanent(res.stop) {
					return fmt.Errorf("salesforce target %q: %w", t.name, res.stop)
				}
				return errPermanent(fmt.Errorf("salesforce target %q: %w", t.name, res.stop))
			}
			return fmt.Errorf("%w (%d of %d messages of the batch done; the rest is retried)", res.stop, len(t.memo), len(b.Messages))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	failed := map[int]error{}
	for i, o := range t.memo {
		if o.err != nil {
			failed[i] = o.err
		}
	}
	t.forget()
	if len(failed) > 0 {
		t.stats.Rejected.Add(int64(len(failed)))
		return &target.RecordErrors{Failed: failed, Applied: true}
	}
	return nil
}

func (t *Target) forget() { t.memoBatch, t.memo, t.jobs = nil, nil, nil }

// roundResult collects the outcomes of one round's calls.
type roundResult struct {
	mu       sync.Mutex
	applied  []int
	rejected map[int]error
	stop     error // the first retryable or permanent failure
}

func (r *roundResult) ok(idx ...int) {
	r.mu.Lock()
	r.applied = append(r.applied, idx...)
	r.mu.Unlock()
}

func (r *roundResult) reject(idx int, err error) {
	r.mu.Lock()
	if r.rejected == nil {
		r.rejected = map[int]error{}
	}
	r.rejected[idx] = err
	r.mu.Unlock()
}

func (r *roundResult) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A permanent failure wins over a retryable one.
	if r.stop == nil || (classify(err) == kPermanent && classify(r.stop) != kPermanent) {
		r.stop = err
	}
}

func (r *roundResult) stopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stop != nil
}

// sfError is a per-record error entry.
type sfError struct {
	StatusCode string   `json:"statusCode"`
	Message    string   `json:"message"`
	Fields     []string `json:"fields"`
}

// retryableStatus: per-record status codes that say "later", never
// dead-lettered.
func retryableStatus(code string) bool {
	switch code {
	case "UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE":
		return true
	}
	return false
}

func (t *Target) recordError(ext string, e sfError) error {
	msg := fmt.Sprintf("salesforce: %s %s=%s: %s: %s", t.set.object, t.set.externalID, ext, e.StatusCode, e.Message)
	if len(e.Fields) > 0 {
		msg += " (fields: " + strings.Join(e.Fields, ", ") + ")"
	}
	return errors.New(t.c.red.scrub(msg))
}

// collectionsUpsert sends ws in calls of up to 200 records, concurrency
// calls at a time.
func (t *Target) collectionsUpsert(ctx context.Context, ws []*work, res *roundResult) {
	var chunks [][]*work
	for start := 0; start < len(ws); start += collectionsMax {
		chunks = append(chunks, ws[start:min(start+collectionsMax, len(ws))])
	}
	sem := make(chan struct{}, t.set.concurrency)
	var wg sync.WaitGroup
	for _, ch := range chunks {
		if res.stopped() || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t.upsertChunk(ctx, ch, res)
		})
	}
	wg.Wait()
}

// upsertChunk makes one Collections upsert. A 400 for the whole request
// (a value Salesforce cannot deserialize) is split in halves until the
// offending records are alone: only they are rejected.
func (t *Target) upsertChunk(ctx context.Context, ws []*work, res *roundResult) {
	if res.stopped() || ctx.Err() != nil {
		return
	}
	type body struct {
		AllOrNone bool             `json:"allOrNone"`
		Records   []map[string]any `json:"records"`
	}
	bd := body{Records: make([]map[string]any, len(ws))}
	attrs := map[string]string{"type": t.set.object}
	for i, w := range ws {
		r := make(map[string]any, len(w.rec.fields)+1)
		r["attributes"] = attrs
		for k, v := range w.rec.fields {
			r[k] = v
		}
		bd.Records[i] = r
	}
	raw, err := json.Marshal(bd)
	if err != nil {
		res.fail(err)
		return
	}
	_, _, out, err := t.c.call(ctx, http.MethodPatch, "composite/sobjects/"+t.set.object+"/"+t.set.externalID, raw, "application/json", true)
	if err != nil {
		if classify(err) == kRequest {
			if len(ws) == 1 {
				var ae *apiError
				errors.As(err, &ae)
				res.reject(ws[0].idx, t.recordError(ws[0].ext, sfError{StatusCode: ae.code, Message: ae.msg}))
				return
			}
			mid := len(ws) / 2
			t.upsertChunk(ctx, ws[:mid], res)
			t.upsertChunk(ctx, ws[mid:], res)
			return
		}
		res.fail(err)
		return
	}
	var results []struct {
		ID      string    `json:"id"`
		Success bool      `json:"success"`
		Errors  []sfError `json:"errors"`
	}
	if err := json.Unmarshal(out, &results); err != nil || len(results) != len(ws) {
		res.fail(fmt.Errorf("salesforce: Collections upsert answered %d results for %d records", len(results), len(ws)))
		return
	}
	t.stats.CollectionsCalls.Add(1)
	t.stats.CollectionsRecords.Add(int64(len(ws)))
	var retry error
	for i, r := range results {
		w := ws[i]
		switch {
		case r.Success:
			res.ok(w.idx)
		case len(r.Errors) > 0 && retryableStatus(r.Errors[0].StatusCode):
			if retry == nil {
				retry = t.recordError(w.ext, r.Errors[0])
			}
		case len(r.Errors) > 0:
			res.reject(w.idx, t.recordError(w.ext, r.Errors[0]))
		default:
			res.reject(w.idx, t.recordError(w.ext, sfError{StatusCode: "UNKNOWN", Message: "success false without errors"}))
		}
	}
	if retry != nil {
		res.fail(retry)
	}
}

// deleteByExternalID deletes the records of ws' external IDs: a SOQL query
// (GET query?q=SELECT Id, Ext FROM Object WHERE Ext IN (...)) finds their
// IDs, then DELETE composite/sobjects?ids=...&allOrNone=false deletes them,
// up to 200 per call. An external ID with no record is done already.
func (t *Target) deleteByExternalID(ctx context.Context, ws []*work, res *roundResult) {
	byExt := map[string]*work{}
	var exts []string
	for _, w := range ws {
		byExt[w.ext] = w
		exts = append(exts, w.ext)
	}
	ids := map[string]string{} // Id -> ext
	for start := 0; start < len(exts); {
		// At most 200 values and about 8 KB of SOQL per query, to stay well
		// within URL length limits.
		end, size := start, 0
		for end < len(exts) && end-start < collectionsMax && size < 8000 {
			size += len(exts[end]) + 4
			end++
		}
		q := "SELECT Id, " + t.set.externalID + " FROM " + t.set.object + " WHERE " + t.set.externalID + " IN (" + soqlList(exts[start:end]) + ")"
		next := "query?q=" + queryEscape(q)
		for next != "" {
			_, _, out, err := t.c.call(ctx, http.MethodGet, next, nil, "", true)
			if err != nil {
				res.fail(err)
				return
			}
			var qr struct {
				Done           bool             `json:"done"`
				NextRecordsURL string           `json:"nextRecordsUrl"`
				Records        []map[string]any `json:"records"`
			}
			if err := json.Unmarshal(out, &qr); err != nil {
				res.fail(fmt.Errorf("salesforce: query: %v", err))
				return
			}
			for _, r := range qr.Records {
				id, _ := r["Id"].(string)
				var ext any
				for k, v := range r {
					if strings.EqualFold(k, t.set.externalID) {
						ext = v
					}
				}
				if id != "" {
					ids[id] = cell(ext)
				}
			}
			next = ""
			if !qr.Done && qr.NextRecordsURL != "" {
				next = qr.NextRecordsURL
			}
		}
		start = end
	}
	found := map[string]bool{}
	var idList []string
	for id, ext := range ids {
		found[ext] = true
		idList = append(idList, id)
	}
	for _, w := range ws {
		if !found[w.ext] {
			res.ok(w.idx) // nothing to delete: a replay, or never synced
		}
	}
	failedExt := map[string]bool{}
	for start := 0; start < len(idList); start += collectionsMax {
		chunk := idList[start:min(start+collectionsMax, len(idList))]
		_, _, out, err := t.c.call(ctx, http.MethodDelete, "composite/sobjects?allOrNone=false&ids="+strings.Join(chunk, ","), nil, "", true)
		if err != nil {
			res.fail(err)
			return
		}
		var results []struct {
			ID      string    `json:"id"`
			Success bool      `json:"success"`
			Errors  []sfError `json:"errors"`
		}
		if err := json.Unmarshal(out, &results); err != nil || len(results) != len(chunk) {
			res.fail(fmt.Errorf("salesforce: Collections delete answered %d results for %d ids", len(results), len(chunk)))
			return
		}
		for i, r := range results {
			ext := ids[chunk[i]]
			w := byExt[ext]
			switch {
			case r.Success || (len(r.Errors) > 0 && r.Errors[0].StatusCode == "ENTITY_IS_DELETED"):
				t.stats.Deleted.Add(1)
			case len(r.Errors) > 0 && retryableStatus(r.Errors[0].StatusCode):
				res.fail(t.recordError(ext, r.Errors[0]))
				failedExt[ext] = true
			case len(r.Errors) > 0:
				if w != nil {
					res.reject(w.idx, t.recordError(ext, r.Errors[0]))
				}
				failedExt[ext] = true
			}
		}
	}
	for ext := range found {
		if w := byExt[ext]; w != nil && !failedExt[ext] {
			res.ok(w.idx)
		}
	}
}

// soqlList renders values as a SOQL list of string literals.
func soqlList(vals []string) string {
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('\'')
		for _, r := range v {
			switch r {
			case '\'', '\\', '"':
				b.WriteByte('\\')
				b.WriteRune(r)
			case '\n':
				b.WriteString(`\n`)
			case '\r':
				b.WriteString(`\r`)
			case '\t':
				b.WriteString(`\t`)
			default:
				b.WriteRune(r)
			}
		}
		b.WriteByte('\'')
	}
	return b.String()
}
