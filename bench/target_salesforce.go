package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/salesforce/sfdouble"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
)

// The salesforce target workload: price changes of products, produced
// straight into Kafka as Plume change events (no source database), are
// routed by `plume run --stage route` into the salesforce target, which
// writes to the in-tree Salesforce double (connectors/salesforce/sfdouble)
// running in this process. Measured per variant: change events/s and
// records/s delivered, API calls per 1,000 changed rows, records per
// Collections call and the most records one key had in one call. The limit
// is a bare Collections client writing the final records to the double,
// 200 per call, 4 calls in flight.
func init() { registerTargetBench("salesforce", (*bench).salesforceBench) }

type sfVariant struct {
	name     string
	target   string // its own consumer group: plume.<pipeline>.<target>
	coalesce bool
	bulk     int // bulk_threshold
}

func (b *bench) salesforceBench(t *tb) []*TargetResult {
	ctx := context.Background()
	keys := pick(b.s.Quick, 10_000, 50_000)
	changes := keys * 5
	name := uniq(t, "sf")
	dir := t.TempDir()
	topic := name + ".shop.products"
	must(t, b.adm.createTopic(ctx, topic))

	// The changes: every key once (as a snapshot would), then random keys;
	// each change sets a new price, so the final state is known.
	logf("salesforce: producing %d changes of %d keys", changes, keys)
	final := make([]string, keys)
	bytesOut := b.produceSFChanges(t, name, topic, keys, changes, final)

	var out []*TargetResult
	limit := sfBareLimit(t, keys)
	logf("salesforce: bare Collections client %s records/s", num(limit))
	for _, v := range []sfVariant{
		{"salesforce-collections-coalesce", "crm-c", true, 0},
		{"salesforce-collections-nocoalesce", "crm-n", false, 0},
		{"salesforce-bulk", "crm-b", true, 2000},
	} {
		r := b.salesforceVariant(t, v, name, dir, keys, changes, final)
		r.MBSec = float64(bytesOut) / 1e6 / r.Seconds
		r.LimitName, r.LimitRowsSec = "bare Collections client (200/call, 4 in flight), records/s", limit
		if r.Extra != nil && limit > 0 {
			r.Ratio = r.Extra["records_per_sec"] / limit
		}
		out = append(out, r)
	}
	return out
}

func sfSchema() sfdouble.Object {
	return sfdouble.Object{Name: "Product2", KeyPrefix: "01t", Fields: []sfdouble.Field{
		{Name: "Sku__c", Type: "string", Length: 64, ExternalID: true},
		{Name: "Name", Type: "string", Length: 255, Required: true},
		{Name: "Price__c", Type: "currency", Precision: 18, Scale: 2},
	}}
}

func newSFDouble() *sfdouble.Server {
	return sfdouble.New(sfdouble.Config{ClientID: "bench", ClientSecret: "bench-secret", APILimit: 1 << 40,
		Objects: []sfdouble.Object{sfSchema()}, BulkDelay: 100 * time.Millisecond})
}

func (b *bench) produceSFChanges(t *tb, pipeline, topic string, keys, changes int, final []string) int64 {
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ProducerLinger(5*time.Millisecond))
	must(t, err)
	defer cl.Close()
	tbl := &event.Table{Connector: "mysql", Database: "shop", Name: "products",
		Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "varchar(64)"}, {Name: "name", Type: "varchar(200)"}, {Name: "price", Type: "decimal(12,2)"}},
		Key:     []int{0}}
	enc := &event.Encoder{Pipeline: pipeline}
	rng := rand.New(rand.NewPCG(42, 42))
	now := time.Now()
	var total int64
	var mu sync.Mutex
	var firstErr error
	for i := range changes {
		k := i
		if i >= keys {
			k = rng.IntN(keys)
		}
		price := fmt.Sprintf("%d.%02d", 1+i/100, i%100)
		before := final[k]
		if before == "" {
			before = "0.00"
		}
		final[k] = price
		c := &event.Change{Op: event.OpUpdate, Table: tbl,
			Before: []event.Value{int64(k), fmt.Sprintf("SKU-%d", k), fmt.Sprintf("product %d", k), event.Decimal(before)},
			After:  []event.Value{int64(k), fmt.Sprintf("SKU-%d", k), fmt.Sprintf("product %d", k), event.Decimal(price)},
			Commit: now, TxID: fmt.Sprintf("0-1-%d", i+1), Pos: fmt.Sprintf("gtid:0-1-%d", i+1), Index: 0, TableIndex: 1}
		rec := enc.Record(topic, c)
		total += int64(len(rec.Value))
		cl.Produce(context.Background(), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	must(t, cl.Flush(context.Background()))
	must(t, firstErr)
	return total
}

func (b *bench) salesforceVariant(t *tb, v sfVariant, name, dir string, keys, changes int, final []string) *TargetResult {
	d := newSFDouble()
	defer d.Close()
	vdir := filepath.Join(dir, v.name)
	must(t, os.MkdirAll(vdir, 0o755))
	y := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: warn }
source:
  type: mysql
  dsn: "root@tcp(127.0.0.1:1)/"
  tables: ["shop.products"]
kafka:
  brokers: [%q]
  topic_prefix: %s
routes:
  - name: prices
    when: 'table == "products" && changed("price")'
    to: [%s]
    map: '{"Sku__c": row.sku, "Name": row.name, "Price__c": row.price}'
targets:
  %s:
    type: salesforce
    login_url: %q
    object: Product2
    external_id: Sku__c
    bulk_threshold: %d
    bulk_poll_interval: 500ms
    auth: { client_credentials: { client_id: bench, client_secret: bench-secret } }
    delivery: { coalesce: %t }
`, name, filepath.Join(vdir, "state"), b.brokers[0], name, v.target, v.target, d.URL, v.bulk, v.coalesce)
	file := filepath.Join(vdir, "pipeline.yaml")
	must(t, os.WriteFile(file, []byte(y), 0o644))
	cfg, err := config.Load(file)
	must(t, err)

	logf("salesforce: %s", v.name)
	c := b.profiledChild(t, cfg, "route", "target-"+v.name)
	defer c.stop()
	done := func() bool {
		recs, _ := d.ByExternalID("Product2", "Sku__c")
		if len(recs) != keys {
			return false
		}
		for k, want := range final {
			if p, _ := recs[fmt.Sprintf("SKU-%d", k)].Fields["Price__c"].(json.Number); string(p) != want {
				return false
			}
		}
		return true
	}
	var st procStat
	for deadline := time.Now().Add(b.s.DrainTimeout); !done(); {
		st = c.stat()
		if err := c.exited(); err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %v (double %+v)\n%s", v.name, b.s.DrainTimeout, d.Stats(), tailLines(c.p.Output(), 20))
		}
		time.Sleep(250 * time.Millisecond)
	}
	secs := time.Since(c.start).Seconds()
	if s := c.stat(); s.CPU > 0 {
		st = s
	}
	ds := d.Stats()
	r := &TargetResult{
		Workload: v.name, Target: "salesforce", Rows: int64(changes), Seconds: secs, RowsSec: float64(changes) / secs,
		PeakRSSMB: float64(st.PeakKB) / 1024, CPUUsPerRow: float64(st.CPU.Microseconds()) / float64(changes),
		Extra: map[string]float64{
			"records_written":              float64(ds.Upserts),
			"records_per_sec":              float64(ds.Upserts) / secs,
			"api_calls":                    float64(ds.APICalls),
			"calls_per_1000_rows":          float64(ds.APICalls) * 1000 / float64(changes),
			"max_records_per_key_per_call": float64(ds.MaxKeyPerCall),
			"bulk_jobs":                    float64(ds.BulkJobs),
		},
		Notes: fmt.Sprintf("%d price changes of %d products, produced into Kafka before the start; the double answers without latency; seconds from process start to the double holding every final price", changes, keys),
	}
	if ds.CollectionsCalls > 0 {
		r.Extra["records_per_call"] = float64(ds.CollectionsRecords) / float64(ds.CollectionsCalls)
	}
	logf("salesforce %s: %s changes/s, %s records/s, %d API calls (%.1f per 1000 changes), %v records/call, max %d per key per call, %d bulk jobs",
		v.name, num(r.RowsSec), num(r.Extra["records_per_sec"]), ds.APICalls, r.Extra["calls_per_1000_rows"], r.Extra["records_per_call"], ds.MaxKeyPerCall, ds.BulkJobs)
	return r
}

// sfBareLimit writes keys records to a fresh double with a bare client:
// Collections upserts of 200 records, 4 in flight. Records/s.
func sfBareLimit(t *tb, keys int) float64 {
	d := newSFDouble()
	defer d.Close()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {"bench"}, "client_secret": {"bench-secret"}}
	resp, err := http.PostForm(d.URL+"/services/oauth2/token", form)
	must(t, err)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	must(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	start := time.Now()
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for lo := 0; lo < keys; lo += 200 {
		var recs []string
		for k := lo; k < min(lo+200, keys); k++ {
			recs = append(recs, fmt.Sprintf(`{"attributes":{"type":"Product2"},"Sku__c":"SKU-%d","Name":"product %d","Price__c":%d.25}`, k, k, k))
		}
		body := `{"allOrNone":false,"records":[` + strings.Join(recs, ",") + `]}`
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			req, _ := http.NewRequest(http.MethodPatch, d.URL+"/services/data/v62.0/composite/sobjects/Product2/Sku__c", bytes.NewReader([]byte(body)))
			req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("bare client: HTTP %d", resp.StatusCode)
				}
				resp.Body.Close()
			}
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	must(t, firstErr)
	return float64(keys) / time.Since(start).Seconds()
}
