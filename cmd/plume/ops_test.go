package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/plumecdc/plume/pkg/testharness"
)

// TestOperationsEndToEnd: metrics move and parse with the Prometheus text
// parser, the admin API demands its token, a paused target holds back
// while the other work goes on and catches up on resume, and an ad-hoc
// snapshot through the API re-emits a table.
func TestOperationsEndToEnd(t *testing.T) {
	e := newE2E(t)
	adminPort, _ := testharness.FreePort()
	metricsPort, _ := testharness.FreePort()
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	metrics := fmt.Sprintf("127.0.0.1:%d", metricsPort)
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, []byte(fmt.Sprintf("admin: { listen: %q, token: \"${TEST_ADMIN_TOKEN}\" }\nmetrics: { listen: %q }\n", admin, metrics))...)
	if err := os.WriteFile(e.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_ADMIN_TOKEN", "tok-3f9a")
	e.start()
	e.waitInSync(60 * time.Second)

	// Metrics exist, parse, and move.
	scrape := func() map[string]float64 {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("metrics do not parse: %v", err)
		}
		out := map[string]float64{}
		for name, f := range fams {
			for _, m := range f.Metric {
				v := 0.0
				switch {
				case m.Counter != nil:
					v = m.Counter.GetValue()
				case m.Gauge != nil:
					v = m.Gauge.GetValue()
				case m.Histogram != nil:
					v = float64(m.Histogram.GetSampleCount())
				}
				key := name
				for _, l := range m.Label {
					switch l.GetName() {
					case "target", "result", "op", "state", "route":
						key += "{" + l.GetValue() + "}"
					}
				}
				out[key] += v
				out[name+"(sum)"] += v
			}
		}
		return out
	}
	before := scrape()
	for _, name := range []string{"plume_capture_events_total", "plume_kafka_transactions_total{committed}", "plume_target_delivered_total{erp}",
		"plume_source_lag_bytes", "plume_target_batch_size{erp}", "plume_kafka_transaction_commit_seconds", "go_goroutines", "process_resident_memory_bytes",
		"plume_source_events_total{read}", "plume_target_lag_events{erp}", "plume_router_events_total{products-to-erp}{erp}",
		"plume_snapshot_chunks{done}", "plume_snapshot_chunks{total}", "plume_snapshot_rows_total(sum)", "plume_snapshot_remaining_rows(sum)"} {
		if _, ok := before[name]; !ok {
			t.Errorf("metric %s is missing", name)
		}
	}
	// The initial snapshot (50 rows, one chunk) is complete.
	if before["plume_snapshot_rows_total(sum)"] != 50 || before["plume_snapshot_chunks{done}"] != 1 || before["plume_snapshot_remaining_rows(sum)"] != 0 {
		t.Errorf("snapshot progress: rows %v, chunks done %v, remaining rows %v; want 50, 1, 0", before["plume_snapshot_rows_total(sum)"],
			before["plume_snapshot_chunks{done}"], before["plume_snapshot_remaining_rows(sum)"])
	}
	e.pg.Exec(t, e.srcDB, `UPDATE products SET price = price + 1 WHERE id <= 20`)
	e.waitInSync(30 * time.Second)
	after := scrape()
	for _, name := range []string{"plume_capture_events_total", "plume_target_delivered_total{erp}", "plume_source_events_total{update}",
		"plume_router_events_total{products-to-erp}{erp}"} {
		if after[name] < before[name]+20 {
			t.Errorf("%s moved from %v to %v, want +20", name, before[name], after[name])
		}
	}

	// The admin API requires its token.
	resp, err := http.Get("http://" + admin + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status without a token: %s", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/api/v1/targets/erp/pause", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("pause with a wrong token: %s", resp.Status)
	}
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"status", "-c", e.cfgPath}, &out, &errOut); code != 0 || !strings.Contains(out.String(), `"lag_bytes"`) {
		t.Fatalf("plume status: %d %s %s", code, out.String(), errOut.String())
	}
	if strings.Contains(out.String(), "tok-3f9a") {
		t.Fatal("status output contains the token")
	}

	// Pause the target: changes are captured but not applied; resume: they are.
	out.Reset()
	if code := dispatch([]string{"pause", "erp", "-c", e.cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("plume pause: %s", errOut.String())
	}
	time.Sleep(500 * time.Millisecond) // let an in-flight batch finish
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'while paused' WHERE id = 1`)
	time.Sleep(3 * time.Second)
	if got := e.rows(e.erpDB, `SELECT sku, name, price::text FROM erp.products WHERE sku = 'SKU-1'`); len(got) != 1 || strings.Contains(got[0], "while paused") {
		t.Fatalf("a paused target applied a change: %v", got)
	}
	if code := dispatch([]string{"resume", "erp", "-c", e.cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("plume resume: %s", errOut.String())
	}
	e.waitInSync(30 * time.Second)

	// An ad-hoc snapshot re-emits the table as snapshot reads.
	readsBefore := e.countOps("e2e.public.products", "io.plume.row.read")
	if code := dispatch([]string{"snapshot", "public.products", "-c", e.cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("plume snapshot: %s", errOut.String())
	}
	deadline := time.Now().Add(60 * time.Second)
	for e.countOps("e2e.public.products", "io.plume.row.read") < readsBefore+50 {
		if time.Now().After(deadline) {
			t.Fatalf("the ad-hoc snapshot did not re-emit the table (reads %d before)", readsBefore)
		}
		time.Sleep(time.Second)
	}
	if err := e.proc.Stop(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
}

// countOps counts the records of one CloudEvents type in a topic.
func (e *e2e) countOps(topic, typ string) int {
	n := 0
	for _, r := range e.records(topic) {
		for _, h := range r.Headers {
			if h.Key == "ce_type" && string(h.Value) == typ {
				n++
			}
		}
	}
	return n
}

// TestDeadLetterListAndReplay: a row the ERP rejects goes to the DLQ with
// the database's message while the rest flows; after the fix, `plume dlq
// replay` applies it, and a second replay changes nothing.
func TestDeadLetterListAndReplay(t *testing.T) {
	e := newE2E(t)
	e.pg.Exec(t, e.erpDB, `ALTER TABLE erp.products ADD CONSTRAINT price_cap CHECK (price < 1000)`)
	e.start()
	e.waitInSync(60 * time.Second)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET price = 5000 WHERE id = 7`)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'flows' WHERE id = 8`)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(strings.Join(e.rows(e.erpDB, `SELECT sku, name, price::text FROM erp.products WHERE sku = 'SKU-8'`), ""), "flows") {
		if time.Now().After(deadline) {
			t.Fatal("the change after the poison row did not flow")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var out, errOut bytes.Buffer
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "price_cap") {
		if time.Now().After(deadline) {
			t.Fatalf("dlq list did not show the rejected row: %s %s", out.String(), errOut.String())
		}
		out.Reset()
		errOut.Reset()
		if code := dispatch([]string{"dlq", "list", "-c", e.cfgPath, "--target", "erp"}, &out, &errOut); code != 0 {
			t.Fatalf("dlq list: %s", errOut.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "route=products-to-erp") || !strings.Contains(out.String(), "id=7") {
		t.Errorf("dlq list lacks the route or the key: %s", out.String())
	}
	if err := e.proc.Stop(); err != nil {
		t.Fatal(err)
	}

	// The fix, then the replay (the pipeline is stopped: replay starts the
	// embedded broker from state_dir).
	e.pg.Exec(t, e.erpDB, `ALTER TABLE erp.products DROP CONSTRAINT price_cap`)
	for i := 0; i < 2; i++ {
		out.Reset()
		errOut.Reset()
		if code := dispatch([]string{"dlq", "replay", "-c", e.cfgPath, "--target", "erp"}, &out, &errOut); code != 0 {
			t.Fatalf("dlq replay: %s %s", out.String(), errOut.String())
		}
	}
	got := e.rows(e.erpDB, `SELECT sku, name, price::text FROM erp.products WHERE sku = 'SKU-7'`)
	if len(got) != 1 || !strings.HasSuffix(got[0], "|5000.00") {
		t.Fatalf("after the replay the ERP row is %v", got)
	}
	var replays string
	if err := e.pg.Connect(t, e.erpDB).QueryRow(context.Background(),
		`SELECT count(*)::text FROM plume_offsets WHERE topic LIKE '%dlq'`).Scan(&replays); err != nil || replays != "1" {
		t.Errorf("the replay is not recorded once in the offsets table: %v %v", replays, err)
	}
}

// TestOffsetsResetToEarliestLatestAndTime moves a stopped target's offsets.
func TestOffsetsResetToEarliestLatestAndTime(t *testing.T) {
	e := newE2E(t)
	e.start()
	e.waitInSync(60 * time.Second)
	mid := time.Now().UTC()
	time.Sleep(1100 * time.Millisecond)
	e.pg.Exec(t, e.srcDB, `UPDATE products SET name = 'later' WHERE id <= 5`)
	e.waitInSync(30 * time.Second)
	recs := e.records("e2e.public.products")
	firstUpdate, last := int64(-1), recs[len(recs)-1].Offset
	for _, r := range recs {
		if firstUpdate < 0 && strings.Contains(string(r.Value), `"later"`) {
			firstUpdate = r.Offset
		}
	}
	if err := e.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	offset := func(to string) string {
		var out, errOut bytes.Buffer
		if code := dispatch([]string{"offsets", "reset", "-c", e.cfgPath, "--target", "erp", "--to", to}, &out, &errOut); code != 0 {
			t.Fatalf("reset --to %s: %s", to, errOut.String())
		}
		out.Reset()
		if code := dispatch([]string{"offsets", "list", "-c", e.cfgPath}, &out, &errOut); code != 0 {
			t.Fatalf("list: %s", errOut.String())
		}
		for _, line := range strings.Split(out.String(), "\n") {
			if f := strings.Split(line, "\t"); len(f) == 4 && f[0] == "erp" && f[1] == "e2e.public.products" {
				return f[3]
			}
		}
		t.Fatalf("offsets list has no erp line: %s", out.String())
		return ""
	}
	if got := offset("earliest"); got != "0" {
		t.Errorf("earliest: %s", got)
	}
	// The end offset is past the last record (transaction markers take
	// offsets too).
	if got, _ := strconv.ParseInt(offset("latest"), 10, 64); got <= last {
		t.Errorf("latest: %d, want past the last record at %d", got, last)
	}
	if got := offset(mid.Format(time.RFC3339Nano)); got != strconv.FormatInt(firstUpdate, 10) {
		t.Errorf("at %s: %s, want %d (the first update)", mid.Format(time.RFC3339Nano), got, firstUpdate)
	}
}
