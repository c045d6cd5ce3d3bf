package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

func plume(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = dispatch(args, &o, &e)
	return code, o.String(), e.String()
}

const goodPipeline = `name: cli
state_dir: ./state
source:
  type: postgres
  dsn: "postgres://plume:s3cret-pw@127.0.0.1:1/shop"
  tables: ["public.products"]
routes:
  - name: prices
    when: 'table == "products" && op == "update"'
    to: [erp]
    map: '{"sku": row.sku, "price": row.price}'
targets:
  erp:
    type: sql
    dsn: "postgres://plume:s3cret-pw@127.0.0.1:1/erp"
    table: erp.products
    key: [sku]
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := plume(t, "version"); code != 0 || !strings.HasPrefix(out, "plume ") {
		t.Errorf("version: %d %q", code, out)
	}
	for _, cmd := range []string{"run", "validate", "version", "offsets"} {
		code, out, errOut := plume(t, cmd, "--help")
		if code != 0 || !strings.Contains(out+errOut, "Usage: plume "+cmd) {
			t.Errorf("%s --help: %d %q %q", cmd, code, out, errOut)
		}
	}
	if code, out, _ := plume(t, "--help"); code != 0 || !strings.Contains(out, "validate") {
		t.Errorf("--help: %d %q", code, out)
	}
}

func TestValidateAcceptsGoodConfigAndExamples(t *testing.T) {
	if code, _, errOut := plume(t, "validate", "-c", writeConfig(t, goodPipeline)); code != 0 {
		t.Fatalf("validate good config: %d %s", code, errOut)
	}
	examples, _ := filepath.Glob("../../pipelines/*.yaml")
	if len(examples) == 0 {
		t.Fatal("no example pipelines found")
	}
	t.Setenv("PLUME_DEMO_PG_PORT", "5433")
	for _, ex := range examples {
		if code, _, errOut := plume(t, "validate", "-c", ex); code != 0 {
			t.Errorf("validate %s: %s", ex, errOut)
		}
	}
}

// TestValidateRejectsBadInput: each problem exits non-zero with a message
// naming the file, the line and the key.
func TestValidateRejectsBadInput(t *testing.T) {
	cases := []struct {
		name, find, replace string
		want                []string
	}{
		{"malformed yaml", `  tables: ["public.products"]`, `  tables: ["public.products"`, []string{":5:"}},
		{"unknown key", "  type: postgres\n", "  type: postgres\n  tabels: [x]\n", []string{":5:", "source.tabels", "unknown key"}},
		{"expression does not compile", `when: 'table == "products" && op == "update"'`, `when: 'table == = "products"'`, []string{":9:", "routes[0].when"}},
		{"when is not a bool", `when: 'table == "products" && op == "update"'`, `when: 'table + "x"'`, []string{":9:", "routes[0].when", "bool"}},
		{"unknown env field", `when: 'table == "products" && op == "update"'`, `when: 'tabel == "products"'`, []string{":9:", "routes[0].when", "tabel"}},
		{"route to a missing target", `to: [erp]`, `to: [crm]`, []string{":10:", "routes[0].to[0]", `"crm"`}},
		{"map is not a map", `map: '{"sku": row.sku, "price": row.price}'`, `map: '"not a map"'`, []string{":11:", "routes[0].map"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := strings.Replace(goodPipeline, c.find, c.replace, 1)
			if body == goodPipeline {
				t.Fatalf("test case did not change the config")
			}
			path := writeConfig(t, body)
			code, _, errOut := plume(t, "validate", "-c", path)
			if code == 0 {
				t.Fatalf("validate accepted a bad config")
			}
			if !strings.Contains(errOut, path) {
				t.Errorf("message does not name the file: %s", errOut)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("message %q lacks %q", errOut, w)
				}
			}
			if strings.Contains(errOut, "s3cret-pw") {
				t.Errorf("message leaks the password: %s", errOut)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(path), "state")); err == nil {
				t.Errorf("validate wrote the state_dir")
			}
		})
	}
}

func TestRunRejectsUnwritableStateDir(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(goodPipeline, "state_dir: ./state", "state_dir: "+filepath.Join(blocker, "state"), 1)
	code, _, errOut := plume(t, "run", "-c", writeConfig(t, body))
	if code == 0 || !strings.Contains(errOut, "not writable") || !strings.Contains(errOut, blocker) {
		t.Fatalf("run with an unwritable state_dir: %d %s", code, errOut)
	}
}

func TestRunReportsUnreachableBroker(t *testing.T) {
	port, err := testharness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	body := strings.Replace(goodPipeline, "routes:", "kafka:\n  brokers: [\""+addr+"\"]\nroutes:", 1)
	start := time.Now()
	dir := t.TempDir()
	cpu, mem := filepath.Join(dir, "cpu.pb.gz"), filepath.Join(dir, "mem.pb.gz")
	code, _, errOut := plume(t, "run", "-c", writeConfig(t, body), "--cpuprofile", cpu, "--memprofile", mem)
	if code == 0 || !strings.Contains(errOut, addr) || !strings.Contains(errOut, "unreachable") {
		t.Fatalf("run with an unreachable broker: %d %s", code, errOut)
	}
	if time.Since(start) > 2*time.Minute {
		t.Errorf("gave up only after %v", time.Since(start))
	}
	// The profiles are written however the run ends (gzipped pprof).
	for _, f := range []string{cpu, mem} {
		b, err := os.ReadFile(f)
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("profile %s: %d bytes, %v", f, len(b), err)
		}
	}
}

func TestRunReportsUnreachableDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the embedded broker")
	}
	port, _ := testharness.FreePort()
	body := strings.Replace(goodPipeline, "routes:", fmt.Sprintf("kafka:\n  embedded: { listen: \"127.0.0.1:%d\" }\nroutes:", port), 1)
	body = strings.Replace(body, "state_dir: ./state", "state_dir: "+t.TempDir(), 1)
	bin := testharness.BuildPlume(t)
	p := testharness.StartProcess(t, bin, "run", "-c", writeConfig(t, body))
	select {
	case <-p.Done():
	case <-time.After(3 * time.Minute):
		t.Fatalf("plume kept running with an unreachable database:\n%s", p.Output())
	}
	out := p.Output()
	if p.ExitCode() == 0 || !strings.Contains(out, "127.0.0.1:1") {
		t.Fatalf("exit %d, output lacks the address:\n%s", p.ExitCode(), out)
	}
	if strings.Contains(out, "s3cret-pw") {
		t.Fatalf("output leaks the password:\n%s", out)
	}
}
