package ops

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/runtime"
)

// DegradedAfter is how long a target must fail without a success before
// /readyz reports the pipeline degraded. A short blip does not flap it.
var DegradedAfter = 30 * time.Second

// Server serves metrics, health and the admin API.
type Server struct {
	p       *runtime.Pipeline
	m       *Metrics
	token   string
	log     *slog.Logger
	servers []*http.Server
}

// NewServer prepares the endpoints. token protects the admin API (empty:
// no authentication, allowed only on loopback listeners).
func NewServer(p *runtime.Pipeline, m *Metrics, token string, log *slog.Logger) *Server {
	return &Server{p: p, m: m, token: token, log: log}
}

// Handler returns the full mux: /metrics, /healthz, /readyz and /api/v1/...
func (s *Server) Handler() http.Handler { return s.handler(true) }

// handler builds the mux. Without a token the admin API is served only when
// openAPI is true (a loopback listener); elsewhere it answers 403, while
// metrics and health stay available (Kubernetes probes need them).
func (s *Server) handler(openAPI bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	auth := func(h http.HandlerFunc) http.Handler {
		if s.token == "" && !openAPI {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": "the admin API is disabled on this non-loopback listener: set admin.token"})
			})
		}
		return s.auth(h)
	}
	mux.Handle("GET /api/v1/status", auth(s.status))
	mux.Handle("POST /api/v1/targets/{name}/pause", auth(s.pause(true)))
	mux.Handle("POST /api/v1/targets/{name}/resume", auth(s.pause(false)))
	mux.Handle("POST /api/v1/snapshot", auth(s.snapshot))
	return mux
}

// Listen starts serving on each address (duplicates are served once). It
// returns the bound addresses, in order.
func (s *Server) Listen(addrs ...string) ([]string, error) {
	seen := map[string]bool{}
	var bound []string
	for _, a := range addrs {
		if a == "" || seen[a] {
			continue
		}
		seen[a] = true
		open := isLoopback(a)
		if s.token == "" && !open {
			s.log.Warn("no admin.token: the admin API is disabled on this non-loopback listener (metrics and health stay on)", "addr", a)
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return bound, fmt.Errorf("ops listener %s: %w", a, err)
		}
		srv := &http.Server{Handler: s.handler(open), ReadHeaderTimeout: 10 * time.Second}
		s.servers = append(s.servers, srv)
		bound = append(bound, ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("ops listener failed", "addr", ln.Addr().String(), "err", err)
			}
		}()
	}
	return bound, nil
}

// Close stops the listeners.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		_ = srv.Shutdown(ctx)
	}
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// auth requires "Authorization: Bearer <token>" when a token is set. The
// comparison is constant-time; the token never appears in a response.
func (s *Server) auth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="plume"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Status is the JSON of GET /api/v1/status.
type Status struct {
	Pipeline string                  `json:"pipeline"`
	Stage    string                  `json:"stage"`
	Ready    bool                    `json:"ready"`
	Reasons  []string                `json:"reasons,omitempty"`
	Capture  *CaptureStatus          `json:"capture,omitempty"`
	Targets  map[string]TargetStatus `json:"targets,omitempty"`
}

// CaptureStatus describes the capture stage.
type CaptureStatus struct {
	Source          string     `json:"source"`
	Running         bool       `json:"running"`
	Events          int64      `json:"events"`
	Transactions    int64      `json:"transactions"`
	Aborted         int64      `json:"aborted"`
	LagBytes        *int64     `json:"lag_bytes,omitempty"`
	LagSeconds      *float64   `json:"lag_seconds,omitempty"`
	LastCheckpoint  *time.Time `json:"last_checkpoint,omitempty"`
	LagError        string     `json:"lag_error,omitempty"`
	CheckpointTopic string     `json:"checkpoint_topic"`
	// Snapshots is the progress of every table snapshotted since start.
	Snapshots []SnapshotStatus `json:"snapshots,omitempty"`
}

// SnapshotStatus is one table's snapshot progress.
type SnapshotStatus struct {
	capture.SnapshotProgress
	RemainingRows    *int64   `json:"remaining_rows_estimate,omitempty"`
	RemainingSeconds *float64 `json:"remaining_seconds_estimate,omitempty"`
}

// TargetStatus describes one target.
type TargetStatus struct {
	Paused         bool       `json:"paused"`
	Delivered      int64      `json:"delivered"`
	DeadLetters    int64      `json:"dead_letters"`
	Retries        int64      `json:"retries"`
	FailingSince   *time.Time `json:"failing_since,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	LastCheckpoint *time.Time `json:"last_checkpoint,omitempty"`
	LagEvents      *int64     `json:"lag_events,omitempty"`
	// Routed is the messages each route produced for the target.
	Routed map[string]int64 `json:"routed,omitempty"`
}

func unixTime(ns int64) *time.Time {
	if ns == 0 {
		return nil
	}
	t := time.Unix(0, ns).UTC()
	return &t
}

// Snapshot computes the pipeline's status.
func (s *Server) Snapshot(ctx context.Context) Status {
	p := s.p
	st := Status{Pipeline: p.Cfg.Name, Stage: string(p.Stage), Ready: true}
	if p.Stage != runtime.StageRoute {
		cs := &p.CaptureStats
		c := &CaptureStatus{
			Source: p.Cfg.Source.Type, Running: cs.Running.Load(),
			Events: cs.Events.Load(), Transactions: cs.Transactions.Load(), Aborted: cs.Aborted.Load(),
			LastCheckpoint: unixTime(cs.LastCommit.Load()), CheckpointTopic: p.Cfg.CheckpointTopic(),
		}
		if b, sec, err := p.SourceLag(ctx); err == nil {
			c.LagBytes, c.LagSeconds = &b, &sec
		} else {
			c.LagError = err.Error()
		}
		now := time.Now()
		for _, sp := range cs.Snapshots() {
			ss := SnapshotStatus{SnapshotProgress: sp}
			if r := sp.RemainingRows(); r >= 0 {
				ss.RemainingRows = &r
			}
			if r := sp.RemainingSeconds(now); r >= 0 {
				ss.RemainingSeconds = &r
			}
			c.Snapshots = append(c.Snapshots, ss)
		}
		if !c.Running {
			st.Ready = false
			st.Reasons = append(st.Reasons, "capture: the source is not streaming")
		}
		st.Capture = c
	}
	if len(p.TargetStats) > 0 {
		st.Targets = map[string]TargetStatus{}
	}
	for name, ts := range p.TargetStats {
		t := TargetStatus{
			Paused: ts.Paused.Load(), Delivered: ts.Delivered.Load(), DeadLetters: ts.DeadLetter.Load(),
			Retries: ts.Retries.Load(), FailingSince: unixTime(ts.FailingSince.Load()),
			LastCheckpoint: unixTime(ts.LastCheckpoint.Load()),
		}
		if lag, err := p.TargetLag(ctx, name); err == nil {
			t.LagEvents = &lag
		}
		for route, n := range p.Routed[name] {
			if t.Routed == nil {
				t.Routed = map[string]int64{}
			}
			t.Routed[route] = n.Load()
		}
		if e, _ := ts.LastError.Load().(string); e != "" && t.FailingSince != nil {
			t.LastError = e
		}
		if t.FailingSince != nil && time.Since(*t.FailingSince) > DegradedAfter {
			st.Ready = false
			st.Reasons = append(st.Reasons, fmt.Sprintf("target %s: failing since %s: %s", name, t.FailingSince.Format(time.RFC3339), t.LastError))
		}
		st.Targets[name] = t
	}
	return st
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	st := s.Snapshot(r.Context())
	if st.Ready {
		fmt.Fprintln(w, "ready")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintln(w, "degraded:")
	for _, reason := range st.Reasons {
		fmt.Fprintln(w, " -", reason)
	}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Snapshot(r.Context()))
}

func (s *Server) pause(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		ts, ok := s.p.TargetStats[name]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no target %q in this process", name)})
			return
		}
		ts.Paused.Store(paused)
		verb := "resumed"
		if paused {
			verb = "paused"
		}
		s.log.Info("target "+verb+" through the admin API", "target", name)
		writeJSON(w, http.StatusOK, map[string]any{"target": name, "paused": paused})
	}
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	table := r.URL.Query().Get("table")
	if table == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give ?table=schema.table (or db.table)"})
		return
	}
	if err := s.p.Resnapshot(table); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, runtime.ErrNotCapturing) {
			code = http.StatusConflict
		}
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	s.log.Info("ad-hoc snapshot requested through the admin API", "table", table)
	writeJSON(w, http.StatusAccepted, map[string]string{"table": table, "snapshot": "requested"})
}
