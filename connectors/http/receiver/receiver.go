// Package receiver is a small, fast CloudEvents HTTP receiver for tests and
// benchmarks of the http target, usable from any package:
//
//	rc := receiver.New()
//	srv := httptest.NewServer(rc)
//	defer srv.Close()
//	// point a target of type http at srv.URL, run the pipeline, then
//	rc.WaitUnique(ctx, 1000)
//	st := rc.Stats() // st.Events, st.Unique, st.Duplicates, ...
//
// It accepts the three shapes the http target sends (binary mode,
// structured mode and batches) and counts events by CloudEvents source and
// id: every delivery (Events), distinct events (Unique) and redeliveries
// (Duplicates). It also notices two requests for the same subject in flight
// at once (Overlaps), which the target must never do. By default it parses
// only what it counts; Strict parses every request with sdk-go's HTTP
// binding and validates each event.
package receiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/cloudevents/sdk-go/v2/binding"
)

// Modes of a request, as Event.Mode reports them.
const (
	Binary     = "binary"
	Structured = "structured"
	Batch      = "batch"
)

// Event is one received event.
type Event struct {
	ID, Source, Type, Subject, Time string
	// Extensions holds the other attributes (only when Keep is set).
	Extensions map[string]string
	// Mode is how the event came: Binary, Structured or Batch.
	Mode string
	// IdempotencyKey is the request's Idempotency-Key header.
	IdempotencyKey string
	// Data is the event's data (only when Keep is set).
	Data json.RawMessage
}

// Stats counts what the receiver saw.
type Stats struct {
	Requests   int64 // requests received
	Rejected   int64 // requests answered with a status other than 2xx
	Events     int64 // events accepted, redeliveries included
	Unique     int64 // distinct events accepted (by source and id)
	Duplicates int64 // accepted redeliveries of an event already accepted
	// Overlaps counts requests that arrived while another request for one
	// of the same subjects was in flight.
	Overlaps int64
	// MaxInFlight is the most requests in flight at once.
	MaxInFlight int64
}

// Receiver is an http.Handler. Set its options before serving.
type Receiver struct {
	// Respond, when set, chooses the status of a well-formed request from
	// its events: 0 or a 2xx accepts them; any other status rejects the
	// whole request (nothing is counted but Requests and Rejected). It is
	// called concurrently.
	Respond func(r *http.Request, events []Event) int
	// Keep keeps every accepted event, with its data and extensions, in
	// arrival order (see Events).
	Keep bool
	// Strict parses every request with sdk-go's HTTP binding and validates
	// each event; a request that fails is answered 400.
	Strict bool
	// Delay is waited before answering each request.
	Delay time.Duration

	mu       sync.Mutex
	seen     map[string]int // source + "\x00" + id -> accepted deliveries
	stats    Stats
	events   []Event
	inflight map[string]int // subject -> requests in flight
	inNow    int64
	changed  chan struct{} // closed and replaced on every accepted request
}

// New returns a Receiver with no options set.
func New() *Receiver { return &Receiver{} }

func (rc *Receiver) init() {
	if rc.seen == nil {
		rc.seen = map[string]int{}
		rc.inflight = map[string]int{}
		rc.changed = make(chan struct{})
	}
}

// maxBody bounds a request body.
const maxBody = 64 << 20

// ServeHTTP receives one request.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	var evs []Event
	if err == nil {
		evs, err = rc.parse(r, body)
	}
	subjects := rc.enter(evs)
	defer rc.leave(subjects)
	if rc.Delay > 0 {
		select {
		case <-time.After(rc.Delay):
		case <-r.Context().Done():
		}
	}
	if err != nil {
		rc.reject()
		http.Error(w, "malformed CloudEvents request: "+err.Error(), http.StatusBadRequest)
		return
	}
	status := http.StatusOK
	if rc.Respond != nil {
		if s := rc.Respond(r, evs); s != 0 {
			status = s
		}
	}
	if status < 200 || status > 299 {
		rc.reject()
		w.WriteHeader(status)
		return
	}
	rc.accept(evs)
	w.WriteHeader(status)
}

func (rc *Receiver) enter(evs []Event) []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.init()
	rc.stats.Requests++
	rc.inNow++
	rc.stats.MaxInFlight = max(rc.stats.MaxInFlight, rc.inNow)
	var subjects []string
	overlap := false
	for _, e := range evs {
		if e.Subject == "" {
			continue
		}
		if rc.inflight[e.Subject] > 0 {
			overlap = true
		}
		subjects = append(subjects, e.Subject)
	}
	for _, s := range subjects {
		rc.inflight[s]++
	}
	if overlap {
		rc.stats.Overlaps++
	}
	return subjects
}

func (rc *Receiver) leave(subjects []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.inNow--
	for _, s := range subjects {
		if rc.inflight[s]--; rc.inflight[s] <= 0 {
			delete(rc.inflight, s)
		}
	}
}

func (rc *Receiver) reject() {
	rc.mu.Lock()
	rc.stats.Rejected++
	rc.mu.Unlock()
}

func (rc *Receiver) accept(evs []Event) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, e := range evs {
		k := e.Source + "\x00" + e.ID
		n := rc.seen[k]
		rc.seen[k] = n + 1
		rc.stats.Events++
		if n == 0 {
			rc.stats.Unique++
		} else {
			rc.stats.Duplicates++
		}
		if rc.Keep {
			rc.events = append(rc.events, e)
		}
	}
	close(rc.changed)
	rc.changed = make(chan struct{})
}

// Stats returns the counters.
func (rc *Receiver) Stats() Stats {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.stats
}

// Count returns how many times the event was accepted.
func (rc *Receiver) Count(source, id string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.seen[source+"\x00"+id]
}

// Events returns the accepted events in arrival order (with Keep).
func (rc *Receiver) Events() []Event {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Event(nil), rc.events...)
}

// Reset forgets everything received.
func (rc *Receiver) Reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.init()
	rc.seen = map[string]int{}
	rc.events = nil
	inNow := rc.inNow
	rc.stats = Stats{}
	rc.inNow = inNow
}

// WaitUnique waits until at least n distinct events were accepted.
func (rc *Receiver) WaitUnique(ctx context.Context, n int) error {
	for {
		rc.mu.Lock()
		rc.init()
		got, ch := rc.stats.Unique, rc.changed
		rc.mu.Unlock()
		if got >= int64(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("receiver: %d of %d distinct events: %w", got, n, ctx.Err())
		case <-ch:
		}
	}
}

// parse reads the events of a request.
func (rc *Receiver) parse(r *http.Request, body []byte) ([]Event, error) {
	if rc.Strict {
		if err := strictCheck(r.Header, body); err != nil {
			return nil, err
		}
	}
	idem := r.Header.Get("Idempotency-Key")
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/cloudevents-batch+json":
		var raws []json.RawMessage
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, fmt.Errorf("batch: %w", err)
		}
		if len(raws) == 0 {
			return nil, errors.New("batch: no events")
		}
		evs := make([]Event, len(raws))
		for i, raw := range raws {
			e, err := rc.structured(raw)
			if err != nil {
				return nil, fmt.Errorf("batch event %d: %w", i, err)
			}
			e.Mode, e.IdempotencyKey = Batch, idem
			evs[i] = e
		}
		return evs, nil
	case "application/cloudevents+json":
		e, err := rc.structured(body)
		if err != nil {
			return nil, err
		}
		e.Mode, e.IdempotencyKey = Structured, idem
		return []Event{e}, nil
	}
	if r.Header.Get("Ce-Specversion") == "" {
		return nil, errors.New("no ce-specversion header and not a CloudEvents content type")
	}
	e := Event{
		ID:             pctDecode(r.Header.Get("Ce-Id")),
		Source:         pctDecode(r.Header.Get("Ce-Source")),
		Type:           pctDecode(r.Header.Get("Ce-Type")),
		Subject:        pctDecode(r.Header.Get("Ce-Subject")),
		Time:           pctDecode(r.Header.Get("Ce-Time")),
		Mode:           Binary,
		IdempotencyKey: idem,
	}
	if e.ID == "" || e.Source == "" || e.Type == "" {
		return nil, errors.New("ce-id, ce-source and ce-type are required")
	}
	if rc.Keep {
		e.Data = body
		for k, v := range r.Header {
			name, ok := strings.CutPrefix(k, "Ce-")
			if !ok {
				continue
			}
			switch name = strings.ToLower(name); name {
			case "specversion", "id", "source", "type", "subject", "time":
			default:
				if e.Extensions == nil {
					e.Extensions = map[string]string{}
				}
				e.Extensions[name] = pctDecode(v[0])
			}
		}
	}
	return []Event{e}, nil
}

type structuredEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Time        string          `json:"time"`
	Data        json.RawMessage `json:"data"`
	DataBase64  string          `json:"data_base64"`
}

func (rc *Receiver) structured(raw []byte) (Event, error) {
	var s structuredEvent
	if err := json.Unmarshal(raw, &s); err != nil {
		return Event{}, err
	}
	if s.SpecVersion != "1.0" || s.ID == "" || s.Source == "" || s.Type == "" {
		return Event{}, errors.New("specversion 1.0, id, source and type are required")
	}
	e := Event{ID: s.ID, Source: s.Source, Type: s.Type, Subject: s.Subject, Time: s.Time}
	if rc.Keep {
		e.Data = s.Data
		var all map[string]json.RawMessage
		if err := json.Unmarshal(raw, &all); err == nil {
			for k, v := range all {
				switch k {
				case "specversion", "id", "source", "type", "subject", "time", "data", "data_base64", "datacontenttype":
					continue
				}
				var str string
				if json.Unmarshal(v, &str) == nil {
					if e.Extensions == nil {
						e.Extensions = map[string]string{}
					}
					e.Extensions[k] = str
				}
			}
		}
	}
	return e, nil
}

// strictCheck parses the request with sdk-go and validates every event.
func strictCheck(h http.Header, body []byte) error {
	req := &http.Request{Header: h, Body: io.NopCloser(bytes.NewReader(body))}
	if cehttp.IsHTTPBatch(h) {
		evs, err := cehttp.NewEventsFromHTTPRequest(req)
		if err != nil {
			return fmt.Errorf("sdk-go: %w", err)
		}
		for i := range evs {
			if err := evs[i].Validate(); err != nil {
				return fmt.Errorf("sdk-go: batch event %d: %w", i, err)
			}
		}
		return nil
	}
	msg := cehttp.NewMessageFromHttpRequest(req)
	ev, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		return fmt.Errorf("sdk-go: %w", err)
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("sdk-go: %w", err)
	}
	return nil
}

// pctDecode undoes the binary-mode percent-encoding of header values.
func pctDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	if d, err := url.PathUnescape(s); err == nil {
		return d
	}
	return s
}
