package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// The search workload: documents per second into a local OpenSearch through
// Plume's route stage (a topic pre-filled with insert events -> router ->
// search target -> _bulk), next to a bare _bulk loader writing the same
// documents in requests of the same size, one at a time (the limit: what
// the cluster takes from a client shaped like the target, with nothing
// else to do).
func init() { registerTargetBench("search", (*bench).searchTarget) }

// searchBulkSize is both Plume's batch (the delivery layer's default) and
// the bare loader's request size.
const searchBulkSize = 1000

var searchTable = &event.Table{
	Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
	Columns: []event.Column{
		{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}, {Name: "name", Type: "text"},
		{Name: "price", Type: "numeric(12,2)"}, {Name: "qty", Type: "integer"}, {Name: "category", Type: "text"},
		{Name: "active", Type: "boolean"}, {Name: "weight", Type: "double precision"},
		{Name: "updated_at", Type: "timestamp with time zone"}, {Name: "description", Type: "text"},
	},
	Key: []int{0},
}

func searchRow(i int64) []event.Value {
	return []event.Value{
		i, fmt.Sprintf("SKU-%08d", i), fmt.Sprintf("Product %d", i), event.Decimal(fmt.Sprintf("%d.%02d", i%1000, i%100)),
		i % 500, []string{"tools", "garden", "kitchen", "toys"}[i%4], i%3 != 0, float64(i%977) / 7,
		time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano),
		"A sturdy product for everyday use, made to last, number " + strconv.FormatInt(i, 10),
	}
}

func (b *bench) searchTarget(t *tb) []*TargetResult {
	ctx := context.Background()
	n := int64(b.s.E2ERows)
	osrv := testharness.OpenSearch(t)
	name := uniq(t, "s")
	dir := t.TempDir()
	topic := name + ".public.products"
	r := &TargetResult{Workload: "search-opensearch", Target: "search", Rows: n, LimitName: "bare _bulk loader (1000 docs/request, sequential)",
		Notes: fmt.Sprintf("OpenSearch %s (1 node, 512 MiB heap, 1 shard, 0 replicas, refresh 1s) on this machine; insert events of a 10-column row (~250-byte documents), external versions, default delivery settings (one batch of up to %d in flight, 100 ms linger); rows/s from the first checkpoint to the last (start-up in extra)", testharness.OpenSearchVersion, searchBulkSize)}

	// Fill the topic with n insert events, as capture would write them.
	must(t, b.adm.createTopic(ctx, topic))
	prod, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(20000))
	must(t, err)
	enc := &event.Encoder{Pipeline: name}
	commit := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	var docs [][]byte // the bare loader's documents, as the target writes them
	var docBytes int64
	for i := int64(1); i <= n; i++ {
		c := &event.Change{Op: event.OpCreate, Table: searchTable, After: searchRow(i), Commit: commit, TxID: "1", Pos: "lsn:0/1", Index: i}
		prod.Produce(ctx, enc.Record(topic, c), func(_ *kgo.Record, err error) {
			if err != nil {
				logf("search: produce: %v", err)
			}
		})
		doc := map[string]any{}
		for j, col := range searchTable.Columns {
			doc[col.Name] = json.RawMessage(event.AppendJSON(nil, c.After[j]))
		}
		d, err := json.Marshal(doc)
		must(t, err)
		docs = append(docs, d)
		docBytes += int64(len(d))
	}
	must(t, prod.Flush(ctx))
	prod.Close()

	// Plume: the route stage alone, from the pre-filled topic.
	index := name + "-plume"
	cfgFile := filepath.Join(dir, "search.yaml")
	y := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: warn }
source:
  type: postgres
  dsn: "postgres://bench@127.0.0.1:1/unused"
  tables: ["public.products"]
kafka:
  brokers: [%q]
  topic_prefix: %s
routes:
  - name: all
    to: [search]
targets:
  search:
    type: search
    url: %q
    index: %s
    create_index: { settings: { number_of_shards: 1, number_of_replicas: 0 } }
`, name, filepath.Join(dir, "state"), b.brokers[0], name, osrv.URL(), index)
	must(t, os.WriteFile(cfgFile, []byte(y), 0o644))
	cfg, err := config.Load(cfgFile)
	must(t, err)
	logf("search: plume route stage -> OpenSearch, %d documents", n)
	// The rate is measured from the first checkpoint (the process started,
	// joined its group, opened the target and applied a first batch) to the
	// last, so that it compares with the bare loader; the start-up shows
	// separately.
	group := "plume." + name + ".search"
	c := b.profiledChild(t, cfg, "route", "target-search")
	var st procStat
	var firstAt time.Time
	var firstOff int64
	var secs float64
	for deadline := time.Now().Add(b.s.DrainTimeout); ; time.Sleep(20 * time.Millisecond) {
		st = c.stat()
		var at int64
		if offs, err := b.adm.adm.FetchOffsets(ctx, group); err == nil {
			if o, ok := offs.Lookup(topic, 0); ok && o.Err == nil {
				at = o.At
			}
		}
		if at > 0 && firstAt.IsZero() {
			firstAt, firstOff = time.Now(), at
		}
		if at >= n {
			secs = time.Since(firstAt).Seconds()
			break
		}
		if err := c.exited(); err != nil {
			t.Fatalf("search: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("search: route stage at offset %d of %d after %v:\n%s", at, n, b.s.DrainTimeout, tailLines(c.p.Output(), 20))
		}
	}
	total := time.Since(c.start).Seconds()
	_ = c.stop()
	if got := searchCount(osrv.URL(), index); got != n {
		t.Fatalf("search: the index holds %d documents, want %d", got, n)
	}
	if secs <= 0 || n-firstOff < n/2 {
		// The first checkpoint came too late to measure a steady rate.
		secs, firstOff = total, 0
	}
	r.Seconds = secs
	r.RowsSec = float64(n-firstOff) / secs
	r.MBSec = float64(docBytes) / float64(n) * r.RowsSec / 1e6
	r.CPUUsPerRow = float64(st.CPU.Microseconds()) / float64(n)
	r.PeakRSSMB = float64(st.PeakKB) / 1024
	startup := total - secs

	// The limit: the same documents, bare _bulk requests of the same size.
	logf("search: bare _bulk loader, %d documents", n)
	bare := name + "-bare"
	code, body := searchDo(http.MethodPut, osrv.URL()+"/"+bare, []byte(`{"settings":{"number_of_shards":1,"number_of_replicas":0}}`))
	if code != 200 {
		t.Fatalf("search: create %s: HTTP %d %s", bare, code, body)
	}
	start := time.Now()
	var req []byte
	for i := int64(0); i < n; i += searchBulkSize {
		req = req[:0]
		for j := i; j < min(i+searchBulkSize, n); j++ {
			req = fmt.Appendf(req, `{"index":{"_index":%q,"_id":"%d","version":%d,"version_type":"external"}}`+"\n", bare, j+1, j+1)
			req = append(append(req, docs[j]...), '\n')
		}
		code, body := searchDo(http.MethodPost, osrv.URL()+"/_bulk?filter_path=errors,items.*.status,items.*.error", req)
		if code != 200 || bytes.Contains(body, []byte(`"errors":true`)) {
			t.Fatalf("search: bare _bulk: HTTP %d %.300s", code, body)
		}
		if time.Since(start) > b.s.DrainTimeout {
			t.Fatalf("search: bare loader not done after %v", b.s.DrainTimeout)
		}
	}
	bareSecs := time.Since(start).Seconds()
	r.LimitRowsSec = float64(n) / bareSecs
	r.Extra = map[string]float64{"doc_bytes": float64(docBytes) / float64(n), "bare_seconds": bareSecs,
		"startup_seconds": startup, "rows_per_sec_incl_startup": float64(n) / total}
	return []*TargetResult{r}
}

func searchDo(method, url string, body []byte) (int, []byte) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func searchCount(url, index string) int64 {
	searchDo(http.MethodPost, url+"/"+index+"/_refresh", nil)
	code, b := searchDo(http.MethodGet, url+"/"+index+"/_count", nil)
	var c struct {
		Count int64 `json:"count"`
	}
	if code != 200 || json.Unmarshal(b, &c) != nil {
		return -1
	}
	return c.Count
}
