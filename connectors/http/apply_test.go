package http

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	nethttp "net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// TestStatusClasses checks how each status is reported to the delivery
// layer, in every mode.
func TestStatusClasses(t *testing.T) {
	want := map[int]string{
		200: "ok", 201: "ok", 202: "ok", 204: "ok",
		400: "poison", 404: "poison", 405: "poison", 409: "poison", 410: "poison", 413: "poison", 415: "poison", 418: "poison", 422: "poison",
		401: "permanent", 403: "permanent",
		408: "retry", 425: "retry", 429: "retry", 500: "retry", 502: "retry", 503: "retry", 504: "retry",
		501: "retry", 505: "retry", 507: "retry", 302: "retry", 304: "retry",
	}
	for _, mode := range []string{ModeBinary, ModeStructured, ModeBatch} {
		for code, class := range want {
			t.Run(fmt.Sprintf("%s/%d", mode, code), func(t *testing.T) {
				var n atomic.Int32
				srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
					n.Add(1)
					if code == 302 {
						w.Header().Set("Location", "/elsewhere")
					}
					w.WriteHeader(code)
				}))
				cfg := cfgFor(srv.URL)
				cfg.Mode = mode
				tg := newTestTarget(t, cfg)
				err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...))
				if got := errClass(err); got != class {
					t.Fatalf("HTTP %d: got %s (%v), want %s", code, got, err, class)
				}
				if class == "poison" {
					re := err.(*target.RecordErrors)
					if !re.Applied || len(re.Failed) != 1 || !strings.Contains(re.Failed[0].Error(), strconv.Itoa(code)) {
						t.Fatalf("record errors %+v", re)
					}
				}
				if class != "ok" && class != "poison" && !strings.Contains(err.Error(), strconv.Itoa(code)) {
					t.Fatalf("error does not name the status: %v", err)
				}
				if code == 302 && n.Load() != 1 {
					t.Fatalf("302 followed: %d requests", n.Load())
				}
			})
		}
	}
}

// TestPoisonDeliversRest rejects one message with a 422 and a long body:
// the rest is delivered, the error quotes the status and the first 512
// bytes of the body.
func TestPoisonDeliversRest(t *testing.T) {
	long := strings.Repeat("a", 512) + "TAIL"
	for _, mode := range []string{ModeBinary, ModeStructured, ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			msgs := inserts(t, 9)
			poisonID := msgs[5].ID
			var mu sync.Mutex
			got := map[string]int{}
			var requests atomic.Int32
			srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				requests.Add(1)
				evs := sdkEvents(t, seenOf(r))
				for _, e := range evs {
					if unpct(t, e.ID()) == poisonID {
						w.WriteHeader(422)
						w.Write([]byte(long))
						return
					}
				}
				mu.Lock()
				for _, e := range evs {
					got[unpct(t, e.ID())]++
				}
				mu.Unlock()
			}))
			cfg := cfgFor(srv.URL)
			cfg.Mode, cfg.Concurrency, cfg.MaxBatch = mode, 3, 8
			tg := newTestTarget(t, cfg)
			b := batchOf(msgs...)
			err := tg.Apply(context.Background(), b)
			var re *target.RecordErrors
			if !errors.As(err, &re) || !re.Applied || len(re.Failed) != 1 || re.Failed[5] == nil {
				t.Fatalf("want message 5 rejected, got %#v", err)
			}
			msg := re.Failed[5].Error()
			if !strings.Contains(msg, "HTTP 422 Unprocessable Entity") || !strings.Contains(msg, strings.Repeat("a", 512)) || strings.Contains(msg, "TAIL") {
				t.Fatalf("reason %q", msg)
			}
			for i, m := range msgs {
				if want := map[bool]int{true: 0, false: 1}[i == 5]; got[m.ID] != want {
					t.Fatalf("message %d delivered %d times", i, got[m.ID])
				}
			}
			if mode == ModeBatch {
				t.Logf("%d requests to isolate the poison message", requests.Load())
			}
		})
	}
}

// seenOf reads a request for sdkEvents.
func seenOf(r *nethttp.Request) seen {
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return seen{r.Header, []byte(b.String())}
}

// TestRetrySkipsDelivered fails one message with a 500 once: Apply returns a
// plain error; the retry (same batch) sends only what was not delivered,
// so every message is delivered exactly once.
func TestRetrySkipsDelivered(t *testing.T) {
	for _, mode := range []string{ModeBinary, ModeBatch} {
		for _, conc := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/concurrency=%d", mode, conc), func(t *testing.T) {
				msgs := inserts(t, 20)
				failID := msgs[7].ID
				var mu sync.Mutex
				delivered := map[string]int{}
				failed := false
				srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
					evs := sdkEvents(t, seenOf(r))
					mu.Lock()
					defer mu.Unlock()
					for _, e := range evs {
						if unpct(t, e.ID()) == failID && !failed {
							failed = true
							w.WriteHeader(500)
							return
						}
					}
					for _, e := range evs {
						delivered[unpct(t, e.ID())]++
					}
				}))
				cfg := cfgFor(srv.URL)
				cfg.Mode, cfg.Concurrency, cfg.MaxBatch = mode, conc, 3
				tg := newTestTarget(t, cfg)
				b := batchOf(msgs...)
				err := tg.Apply(context.Background(), b)
				if errClass(err) != "retry" || !strings.Contains(err.Error(), "HTTP 500") {
					t.Fatalf("first apply: %v", err)
				}
				if err := tg.Apply(context.Background(), b); err != nil {
					t.Fatalf("second apply: %v", err)
				}
				for i, m := range msgs {
					if delivered[m.ID] != 1 {
						t.Fatalf("message %d delivered %d times", i, delivered[m.ID])
					}
				}
				// A new batch is not confused with the old one.
				if err := tg.Apply(context.Background(), batchOf(msgs[:2]...)); err != nil {
					t.Fatal(err)
				}
				if delivered[msgs[0].ID] != 2 {
					t.Fatal("a new batch must be sent in full")
				}
			})
		}
	}
}

// TestRetryAfter honours Retry-After (seconds and HTTP-date) on 429 and 503
// by waiting inside Apply, bounded by the context.
func TestRetryAfter(t *testing.T) {
	cases := []struct {
		name    string
		code    int
		value   func() string
		atLeast time.Duration
	}{
		{"429-seconds", 429, func() string { return "1" }, 900 * time.Millisecond},
		{"503-http-date", 503, func() string { return time.Now().Add(2 * time.Second).UTC().Format(nethttp.TimeFormat) }, 900 * time.Millisecond},
		{"500-ignored", 500, func() string { return "30" }, 0},
		{"429-garbage", 429, func() string { return "soon" }, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				if calls.Add(1) == 1 {
					w.Header().Set("Retry-After", c.value())
					w.WriteHeader(c.code)
				}
			}))
			tg := newTestTarget(t, cfgFor(srv.URL))
			b := batchOf(inserts(t, 1)...)
			start := time.Now()
			err := tg.Apply(context.Background(), b)
			took := time.Since(start)
			if errClass(err) != "retry" {
				t.Fatalf("got %v", err)
			}
			if took < c.atLeast || (c.atLeast == 0 && took > 2*time.Second) {
				t.Fatalf("Apply took %v, want at least %v", took, c.atLeast)
			}
			if c.atLeast > 0 && !strings.Contains(err.Error(), "Retry-After") {
				t.Fatalf("error does not mention Retry-After: %v", err)
			}
			if err := tg.Apply(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("bounded-by-context", func(t *testing.T) {
		srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(429)
		}))
		tg := newTestTarget(t, cfgFor(srv.URL))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := tg.Apply(ctx, batchOf(inserts(t, 1)...))
		if err == nil || target.IsPermanent(err) || time.Since(start) > 2*time.Second {
			t.Fatalf("got %v after %v", err, time.Since(start))
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"0":                             0,
		"7":                             7 * time.Second,
		" 12 ":                          12 * time.Second,
		"999999":                        maxRetryAfter,
		"Fri, 02 Jan 2026 03:04:15 GMT": 10 * time.Second,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0, // in the past
	} {
		if got, ok := parseRetryAfter(v, now); !ok || got != want {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "-1", "soon", "1.5"} {
		if _, ok := parseRetryAfter(v, now); ok {
			t.Errorf("parseRetryAfter(%q) accepted", v)
		}
	}
}

// TestTransportErrorsAreRetryable: connection refused and a timeout.
func TestTransportErrorsAreRetryable(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		srv := serve(t, nethttp.NotFoundHandler())
		u := srv.URL
		srv.Close()
		tg := newTestTarget(t, cfgFor(u+"/hook?token=querysecret"))
		err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...))
		if errClass(err) != "retry" {
			t.Fatalf("got %v", err)
		}
		if strings.Contains(err.Error(), "querysecret") || strings.Contains(err.Error(), "/hook") {
			t.Fatalf("error shows the URL's path or query: %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer close(release)
		cfg := cfgFor(srv.URL)
		cfg.Timeout.Duration = 100 * time.Millisecond
		tg := newTestTarget(t, cfg)
		start := time.Now()
		err := tg.Apply(context.Background(), batchOf(inserts(t, 3)...))
		if errClass(err) != "retry" || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("got %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("took %v", took)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		release := make(chan struct{})
		srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer close(release)
		tg := newTestTarget(t, cfgFor(srv.URL))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := tg.Apply(ctx, batchOf(inserts(t, 2)...)); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
}

// TestRedirects: 307/308 are followed with the body; 301/302/303 are not
// (they would turn the POST into a GET).
func TestRedirects(t *testing.T) {
	rec := &recorder{}
	mux := nethttp.NewServeMux()
	mux.Handle("/final", rec)
	mux.HandleFunc("/moved", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		nethttp.Redirect(w, r, "/final", nethttp.StatusPermanentRedirect)
	})
	srv := serve(t, mux)
	tg := newTestTarget(t, cfgFor(srv.URL+"/moved"))
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 2)...)); err != nil {
		t.Fatal(err)
	}
	reqs := rec.requests()
	if len(reqs) != 2 || len(reqs[0].body) == 0 || reqs[0].header.Get("Ce-Id") == "" || reqs[0].header.Get("Idempotency-Key") == "" {
		t.Fatalf("redirected requests: %v", reqs)
	}
}

// TestPerKeyOrderUnderConcurrency sends interleaved changes of a few keys,
// with a truncate in the middle, through slow, jittery receivers: requests
// for one subject are never in flight together and arrive in batch order,
// the truncate is a barrier, and requests do run concurrently.
func TestPerKeyOrderUnderConcurrency(t *testing.T) {
	for _, mode := range []string{ModeBinary, ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			const keys, n = 12, 240
			var msgs []target.Message
			idx := int64(0)
			for i := range n {
				if i == n/2 {
					tr := &event.Change{Op: event.OpTruncate, Table: products, Commit: commit, TxID: "901", Pos: "lsn:0/2000000", Index: 0}
					msgs = append(msgs, message(t, tr, false, int64(len(msgs))))
				}
				c := insert(int64(i%keys), idx)
				if i >= n/2 {
					c.Pos = "lsn:0/3000000"
				}
				idx++
				msgs = append(msgs, message(t, c, i%2 == 0, int64(len(msgs))))
			}
			pos := map[string]int{} // id -> index in the batch
			for i, m := range msgs {
				pos[m.ID] = i
			}
			truncIdx := n / 2

			var mu sync.Mutex
			inflight := map[string]int{}
			last := map[string]int{}
			var now, maxNow, doneBefore int
			var violations []string
			truncDone := false
			srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				evs := sdkEvents(t, seenOf(r))
				mine := map[string]bool{} // the request's subjects
				mu.Lock()
				now++
				maxNow = max(maxNow, now)
				for _, e := range evs {
					i := pos[unpct(t, e.ID())]
					subj := unpct(t, e.Subject())
					if i == truncIdx {
						if now != 1 || doneBefore != truncIdx {
							violations = append(violations, fmt.Sprintf("truncate sent with %d in flight, %d earlier done", now-1, doneBefore))
						}
						continue
					}
					if i > truncIdx && !truncDone {
						violations = append(violations, fmt.Sprintf("message %d sent before the truncate completed", i))
					}
					if inflight[subj] > 0 {
						violations = append(violations, fmt.Sprintf("two requests in flight for %s (message %d)", subj, i))
					}
					if l, ok := last[subj]; ok && l > i {
						violations = append(violations, fmt.Sprintf("%s: message %d after %d", subj, i, l))
					}
					last[subj] = i
					mine[subj] = true
				}
				for subj := range mine {
					inflight[subj]++
				}
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
				mu.Lock()
				now--
				for _, e := range evs {
					i := pos[unpct(t, e.ID())]
					if i == truncIdx {
						truncDone = true
						continue
					}
					if i < truncIdx {
						doneBefore++
					}
				}
				for subj := range mine {
					inflight[subj]--
				}
				mu.Unlock()
			}))
			cfg := cfgFor(srv.URL)
			cfg.Mode, cfg.Concurrency, cfg.MaxBatch = mode, 6, 5
			tg := newTestTarget(t, cfg)
			if err := tg.Apply(context.Background(), batchOf(msgs...)); err != nil {
				t.Fatal(err)
			}
			if len(violations) > 0 {
				t.Fatalf("%d violations, first: %s", len(violations), violations[0])
			}
			if maxNow < 2 {
				t.Fatalf("requests never overlapped (max in flight %d)", maxNow)
			}
			if len(last) != keys {
				t.Fatalf("%d keys seen", len(last))
			}
		})
	}
}

// TestIdempotencyKeyStableAcrossReplays applies the same batch with two
// target instances (a restart): every event carries the same key, in each
// mode.
func TestIdempotencyKeyStableAcrossReplays(t *testing.T) {
	for _, mode := range []string{ModeBinary, ModeStructured, ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			msgs := append(inserts(t, 7), message(t, corpus()[3], true, 100))
			keysOf := func() map[string]string {
				rec := &recorder{}
				srv := serve(t, rec)
				cfg := cfgFor(srv.URL)
				cfg.Mode, cfg.MaxBatch, cfg.Concurrency = mode, 3, 2
				tg := newTestTarget(t, cfg)
				if err := tg.Apply(context.Background(), batchOf(msgs...)); err != nil {
					t.Fatal(err)
				}
				keys := map[string]string{}
				for _, s := range rec.requests() {
					k := s.header.Get("Idempotency-Key")
					if k == "" {
						t.Fatal("request without Idempotency-Key")
					}
					for _, e := range sdkEvents(t, s) {
						id := e.ID()
						if mode == ModeBinary {
							id = unpct(t, id)
						}
						keys[id] = k
					}
				}
				return keys
			}
			a, b := keysOf(), keysOf()
			if len(a) != len(msgs) {
				t.Fatalf("%d events", len(a))
			}
			for id, k := range a {
				if b[id] != k {
					t.Fatalf("key of %s changed: %q then %q", id, k, b[id])
				}
				if mode != ModeBatch {
					m := msgs[slicesIndex(msgs, id)]
					if k != idempotencyKey(m.Source, m.ID) {
						t.Fatalf("key %q", k)
					}
				}
			}
			if mode != ModeBatch {
				if k := a[msgs[0].ID]; k != msgs[0].Source+"/"+msgs[0].ID {
					t.Fatalf("plain key %q", k)
				}
				if k := a[msgs[7].ID]; !strings.HasPrefix(k, "sha256:") {
					t.Fatalf("key of an id with spaces: %q", k)
				}
			}
		})
	}
}

func slicesIndex(msgs []target.Message, id string) int {
	for i, m := range msgs {
		if m.ID == id {
			return i
		}
	}
	return -1
}

// TestOpenAndEmptyBatch: Open returns nil offsets; an empty batch sends
// nothing.
func TestOpenAndEmptyBatch(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec)
	tg := newTestTarget(t, cfgFor(srv.URL))
	offs, err := tg.Open(context.Background())
	if err != nil || offs != nil {
		t.Fatalf("Open = %v, %v", offs, err)
	}
	if err := tg.Apply(context.Background(), &target.Batch{Offsets: target.Offsets{{Topic: "x"}: 3}}); err != nil {
		t.Fatal(err)
	}
	if len(rec.requests()) != 0 {
		t.Fatal("requests for an empty batch")
	}
}

// TestConfiguredHeaders are sent; User-Agent is plume's.
func TestConfiguredHeaders(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec)
	cfg := cfgFor(srv.URL)
	cfg.Headers = map[string]configSecret{"X-Tenant": "acme", "x-lower": "v"}
	tg := newTestTarget(t, cfg)
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...)); err != nil {
		t.Fatal(err)
	}
	h := rec.requests()[0].header
	if h.Get("X-Tenant") != "acme" || h.Get("X-Lower") != "v" || !strings.HasPrefix(h.Get("User-Agent"), "plume/") {
		t.Fatalf("headers %v", h)
	}
}
