package ops

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/runtime"
)

func testServer(token string) *Server {
	p := &runtime.Pipeline{Cfg: &config.Pipeline{Name: "x"}, Stage: runtime.StageCapture}
	return NewServer(p, &Metrics{Registry: prometheus.NewRegistry()}, token, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func get(t *testing.T, h http.Handler, path, token string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code
}

// TestAdminAPIAccess: without a token the API is served only on loopback
// listeners; health and metrics are always served; with a token the API
// demands it.
func TestAdminAPIAccess(t *testing.T) {
	open := testServer("").handler(false)
	if c := get(t, open, "/healthz", ""); c != 200 {
		t.Errorf("healthz: %d", c)
	}
	if c := get(t, open, "/metrics", ""); c != 200 {
		t.Errorf("metrics: %d", c)
	}
	if c := get(t, open, "/api/v1/status", ""); c != http.StatusForbidden {
		t.Errorf("status on a non-loopback listener without a token: %d, want 403", c)
	}
	if c := get(t, testServer("").handler(true), "/api/v1/status", ""); c != 200 {
		t.Errorf("status on loopback without a token: %d", c)
	}
	tok := testServer("s3cret").handler(false)
	if c := get(t, tok, "/api/v1/status", ""); c != http.StatusUnauthorized {
		t.Errorf("status without the token: %d, want 401", c)
	}
	if c := get(t, tok, "/api/v1/status", "wrong"); c != http.StatusUnauthorized {
		t.Errorf("status with a wrong token: %d, want 401", c)
	}
	if c := get(t, tok, "/api/v1/status", "s3cret"); c != 200 {
		t.Errorf("status with the token: %d", c)
	}
}
