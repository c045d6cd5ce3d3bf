package http

import (
	"context"
	nethttp "net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

func pipelineWith(t *testing.T, file, targetYAML string) *config.Pipeline {
	t.Helper()
	src := `name: shop-sync
state_dir: ./data
source:
  type: mysql
  dsn: "root@tcp(127.0.0.1:3306)/"
  tables: ["shop.products"]
routes:
  - name: all
    when: 'table == "products"'
    to: [erp]
targets:
  erp:
` + targetYAML
	p, err := config.Parse(file, []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return p
}

// TestFactoryFromPipelineFile decodes every key through the registry,
// without connecting.
func TestFactoryFromPipelineFile(t *testing.T) {
	var hits atomic.Int32
	srv := serve(t, nethttp.HandlerFunc(func(nethttp.ResponseWriter, *nethttp.Request) { hits.Add(1) }))
	t.Setenv("ERP_TOKEN", "tok-from-env")
	p := pipelineWith(t, "pipeline.yaml", `    type: http
    url: "`+srv.URL+`/hooks/plume"
    mode: batch
    body: row
    max_batch: 50
    concurrency: 8
    timeout: 3s
    headers: { X-Tenant: "acme" }
    auth:
      bearer: "${ERP_TOKEN}"
    tls: { insecure_skip_verify: false }
`)
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	h := tg.(*Target)
	s := h.set
	if s.mode != ModeBatch || s.body != BodyRow || s.maxBatch != 50 || s.concurrency != 8 || s.timeout != 3*time.Second ||
		s.auth.Bearer.Reveal() != "tok-from-env" || len(s.headers) != 1 || s.headers[0] != [2]string{"X-Tenant", "acme"} || s.url.Path != "/hooks/plume" {
		t.Fatalf("settings %+v", s)
	}
	offs, err := tg.Open(context.Background())
	if err != nil || offs != nil {
		t.Fatalf("Open = %v, %v", offs, err)
	}
	if hits.Load() != 0 {
		t.Fatal("the factory or Open made a request")
	}
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 3)...)); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 1 {
		t.Fatalf("%d requests for one batch of 3", hits.Load())
	}

	// Defaults.
	p = pipelineWith(t, "pipeline.yaml", `    type: http
    url: "https://erp.example.com/hooks/plume"
    auth:
      oauth2: { token_url: "https://idp.example.com/token", client_id: c, client_secret: "${ERP_TOKEN}", scopes: [a, b] }
`)
	tg, err = target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err != nil {
		t.Fatal(err)
	}
	s = tg.(*Target).set
	if s.mode != ModeBinary || s.body != BodyEvent || s.maxBatch != 100 || s.concurrency != 4 || s.timeout != 10*time.Second || s.auth.OAuth2 == nil {
		t.Fatalf("defaults %+v", s)
	}
}

func TestFactoryRejects(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{`    url: "https://h/x"
    mdoe: batch
`, "mdoe"},
		{``, "targets.erp.url: is required"},
		{`    url: "ftp://h/x"
`, "scheme must be http or https"},
		{`    url: "https://user:pw@h/x"
`, "must not hold credentials"},
		{`    url: "https://h/x"
    mode: grpc
`, "targets.erp.mode"},
		{`    url: "https://h/x"
    body: both
`, "targets.erp.body"},
		{`    url: "https://h/x"
    max_batch: 0
    concurrency: -1
`, "targets.erp.concurrency"},
		{`    url: "https://h/x"
    max_batch: 100000
`, "targets.erp.max_batch"},
		{`    url: "https://h/x"
    timeout: -1s
`, "targets.erp.timeout"},
		{`    url: "https://h/x"
    timeout: 10
`, "duration"},
		{`    url: "https://h/x"
    auth: { bearer: t, basic: { username: u, password: p } }
`, "only one of"},
		{`    url: "https://h/x"
    auth: { basic: { password: p } }
`, "auth.basic.username: is required"},
		{`    url: "https://h/x"
    auth: { oauth2: { token_url: "https://i/t", client_id: c } }
`, "auth.oauth2.client_secret: is required"},
		{`    url: "https://h/x"
    auth: { oauth2: { client_id: c, client_secret: s } }
`, "auth.oauth2.token_url: is required"},
		{`    url: "https://h/x"
    headers: { Content-Type: text/plain }
`, "Content-Type is set by the target"},
		{`    url: "https://h/x"
    headers: { ce-id: x }
`, "Ce-Id is set by the target"},
		{`    url: "https://h/x"
    headers: { Idempotency-Key: x }
`, "Idempotency-Key is set by the target"},
		{`    url: "https://h/x"
    headers: { "bad header": x }
`, "invalid header name"},
		{`    url: "https://h/x"
    auth: { bearer: t }
    headers: { Authorization: x }
`, "Authorization conflicts with auth"},
		{`    url: "http://h/x"
    tls: { insecure_skip_verify: true }
`, "tls: is set but url is not https"},
		{`    url: "https://h/x"
    auth: { unknown: 1 }
`, "unknown"},
	} {
		p := pipelineWith(t, "pipeline.yaml", "    type: http\n"+c.yaml)
		_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config\n%s\nwant an error containing %q, got %v", c.yaml, c.want, err)
		}
	}
}

// TestFactoryErrorPositions: errors point into the pipeline file.
func TestFactoryErrorPositions(t *testing.T) {
	p := pipelineWith(t, "pipeline.yaml", `    type: http
    url: "https://h/x"
    mode: grpc
`)
	_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err == nil || !strings.Contains(err.Error(), "pipeline.yaml:15:11: targets.erp.mode") {
		t.Fatalf("got %v", err)
	}
}
