package validate

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/testharness"
)

func scratchMem(pid int) (rss int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func TestZZScratchMemory(t *testing.T) {
	targetsEnv := os.Getenv("SCRATCH_TARGETS")
	if targetsEnv == "" {
		t.Skip("scratch")
	}
	bin := testharness.BuildPlume(t)
	brokers := testharness.Kafka(t).Brokers()
	pg := testharness.Postgres(t)
	src := pg.NewDatabase(t)
	erp := pg.NewDatabase(t)
	pg.Exec(t, src, `CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, name text, price numeric(12,2)); ALTER TABLE products REPLICA IDENTITY FULL;
		INSERT INTO products SELECT g, 'SKU-'||g, 'product '||g, 1 FROM generate_series(1, 2000) g`)
	pg.Exec(t, erp, `CREATE SCHEMA erp; CREATE TABLE erp.products (sku text PRIMARY KEY, id bigint NOT NULL, name text, price numeric(12,2))`)
	rc := receiver.New()
	srv := httptest.NewServer(rc)
	defer srv.Close()
	name := testharness.UniqueName(t)
	dir := t.TempDir()
	var to []string
	var tg string
	for _, x := range strings.Split(targetsEnv, ",") {
		to = append(to, x)
		switch x {
		case "hooks":
			tg += fmt.Sprintf("  hooks: { type: http, url: %q, mode: batch, max_batch: 200 }\n", srv.URL)
		case "erp_pg":
			tg += fmt.Sprintf("  erp_pg: { type: sql, dsn: %q, table: erp.products, key: [sku] }\n", pg.DSN(erp))
		case "feed":
			tg += fmt.Sprintf("  feed: { type: kafka, topic: %q }\n", name+"-feed")
		case "none":
			to = to[:len(to)-1]
		}
	}
	write := func(file string) string {
		routes := ""
		if len(to) > 0 {
			routes = fmt.Sprintf("routes:\n  - name: r\n    to: [%s]\ntargets:\n%s", strings.Join(to, ", "), tg)
		}
		cfg := fmt.Sprintf("name: %s\nstate_dir: %s\nsource: { type: postgres, dsn: %q, tables: [public.products], heartbeat_interval: 1s }\nkafka: { brokers: [%q], topic_prefix: %s, topics: { partitions: 3 } }\n%s",
			name, filepath.Join(dir, file+"-state"), pg.DSN(src), brokers[0], name, routes)
		p := filepath.Join(dir, file)
		os.WriteFile(p, []byte(cfg), 0o600)
		return p
	}
	capCfg, routeCfg := write("capture.yaml"), write("route.yaml")
	capture := testharness.StartProcess(t, bin, "run", "-c", capCfg, "--stage", "capture")
	if !capture.WaitOutput("snapshot done", time.Minute) {
		t.Fatal(capture.Output())
	}
	// Backlog: N changes.
	n, _ := strconv.Atoi(os.Getenv("SCRATCH_CHANGES"))
	conn := pg.Connect(t, src)
	ctx := context.Background()
	for done := 0; done < n; done += 2000 {
		conn.Exec(ctx, `UPDATE products SET price = price + 0.01, name = name || 'x' WHERE id <= 2000`)
	}
	time.Sleep(5 * time.Second)
	cmd := exec.Command(bin, "run", "-c", routeCfg, "--stage", "route")
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	route := testharness.StartCommand(t, cmd)
	start := time.Now()
	var maxRSS int64
	for time.Since(start) < 40*time.Second {
		if r := scratchMem(route.Pid()); r > maxRSS {
			maxRSS = r
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("targets %s, %d changes backlog: max RSS %d MiB, receiver %+v", targetsEnv, n, maxRSS>>20, rc.Stats())
	out := route.Output()
	var gc []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "gc ") {
			gc = append(gc, l)
		}
	}
	if len(gc) > 8 {
		gc = gc[len(gc)-8:]
	}
	t.Logf("gctrace tail:\n%s", strings.Join(gc, "\n"))
	route.Stop()
	capture.Stop()
}
