package http

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

// tlsServer starts an HTTPS receiver and writes its certificate, the CA to
// trust, to dir/ca.pem.
func tlsServer(t *testing.T, dir string) (*httptest.Server, *recorder, string) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewUnstartedServer(rec)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	path := filepath.Join(dir, "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, rec, path
}

// TestTLSCustomCA: the receiver's certificate is trusted through ca_file
// only.
func TestTLSCustomCA(t *testing.T) {
	srv, rec, caFile := tlsServer(t, t.TempDir())

	cfg := cfgFor(srv.URL)
	cfg.TLS = config.TLS{CAFile: caFile}
	if err := newTestTarget(t, cfg).Apply(context.Background(), batchOf(inserts(t, 2)...)); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.requests()); n != 2 {
		t.Fatalf("%d requests", n)
	}

	// Without the CA: a certificate error, retryable like any transport error.
	err := newTestTarget(t, cfgFor(srv.URL)).Apply(context.Background(), batchOf(inserts(t, 1)...))
	if errClass(err) != "retry" || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("want a certificate error, got %v", err)
	}

	// insecure_skip_verify.
	cfg = cfgFor(srv.URL)
	cfg.TLS = config.TLS{InsecureSkipVerify: true}
	if err := newTestTarget(t, cfg).Apply(context.Background(), batchOf(inserts(t, 1)...)); err != nil {
		t.Fatal(err)
	}
}

// TestTLSRelativeCAFile: through the registry, a relative ca_file is
// resolved against the pipeline file's directory.
func TestTLSRelativeCAFile(t *testing.T) {
	dir := t.TempDir()
	srv, rec, _ := tlsServer(t, dir)
	p := pipelineWith(t, filepath.Join(dir, "pipeline.yaml"), `    type: http
    url: "`+srv.URL+`/hook"
    tls: { ca_file: ca.pem }
`)
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...)); err != nil {
		t.Fatal(err)
	}
	if len(rec.requests()) != 1 {
		t.Fatal("not delivered")
	}

	// A missing CA file is a configuration error.
	p = pipelineWith(t, filepath.Join(dir, "pipeline.yaml"), `    type: http
    url: "`+srv.URL+`/hook"
    tls: { ca_file: missing.pem }
`)
	if _, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]}); err == nil || !strings.Contains(err.Error(), "targets.erp.tls") {
		t.Fatalf("got %v", err)
	}
}
