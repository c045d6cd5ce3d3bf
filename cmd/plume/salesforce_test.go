package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	dbsql "database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/salesforce/sfdouble"
	"github.com/plumecdc/plume/pkg/testharness"
	check "github.com/plumecdc/plume/pkg/validate"
)

// The salesforce target end to end (issue: CRM target: Salesforce). A
// MariaDB products table is captured into a real Apache Kafka; the route
// `prices` (when: changed("price")) maps each row to a Product2 record,
// upserted by the external ID Sku__c into the in-tree Salesforce double
// (connectors/salesforce/sfdouble), which runs in the test process while
// plume runs as a subprocess. Every test ends with the double's records
// compared with the source table, field by field, and with a check that no
// external ID has more than one record.

const (
	sfClientID = "3MVG9-plume-e2e"
	sfSecret   = "e2e-client-secret-value"
	sfUser     = "integration@plume.example"
	// sfSource renders the source rows as the double stores the fields.
	sfSource = `SELECT sku AS Sku__c, name AS Name, CAST(price AS CHAR) AS Price__c, IF(active, 'true', 'false') AS IsActive,
		DATE_FORMAT(launched, '%Y-%m-%d') AS Launch_Date__c,
		CONCAT(DATE_FORMAT(changed_at, '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND(changed_at) / 1000), 3, '0'), 'Z') AS Price_Changed_At__c
		FROM products`
)

func sfProduct2() sfdouble.Object {
	return sfdouble.Object{
		Name: "Product2", KeyPrefix: "01t",
		Fields: []sfdouble.Field{
			{Name: "Sku__c", Type: "string", Length: 64, ExternalID: true},
			{Name: "Name", Type: "string", Length: 255, Required: true},
			{Name: "Price__c", Type: "currency", Precision: 12, Scale: 2},
			{Name: "IsActive", Type: "boolean"},
			{Name: "Launch_Date__c", Type: "date"},
			{Name: "Price_Changed_At__c", Type: "datetime"},
		},
		// The org refuses negative prices (a validation rule).
		Validate: func(rec map[string]any) string {
			if p, ok := rec["Price__c"].(json.Number); ok && strings.HasPrefix(string(p), "-") {
				return "Price must not be negative"
			}
			return ""
		},
	}
}

type sfEnv struct {
	t       *testing.T
	name    string
	bin     string
	dir     string
	brokers []string
	my      *testharness.MySQL
	db      string
	sql     *dbsql.DB
	d       *sfdouble.Server
	keyFile string
}

// newSFEnv creates the products table with rows rows (with invalid, every
// 1000th has a negative price the org refuses) and the double.
func newSFEnv(t *testing.T, rows int, invalid bool) *sfEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test needs MariaDB and Kafka")
	}
	e := &sfEnv{t: t, name: testharness.UniqueName(t), bin: testharness.BuildPlume(t), dir: t.TempDir()}
	e.my = testharness.MariaDB(t)
	e.brokers = testharness.Kafka(t).Brokers()
	e.db = e.my.NewDatabase(t)
	e.my.Exec(t, e.db, `CREATE TABLE products (id bigint PRIMARY KEY, sku varchar(64) NOT NULL UNIQUE, name varchar(200) NOT NULL,
		price decimal(12,2) NOT NULL, active tinyint(1) NOT NULL DEFAULT 1, launched date, changed_at datetime(3))`)
	if rows > 0 {
		e.my.Exec(t, e.db, fmt.Sprintf(`INSERT INTO products SELECT seq, CONCAT('SKU-', seq), CONCAT('product ', seq),
			IF(%t AND seq %% 1000 = 500, -1, (seq %% 997) * 0.25 + 1), seq %% 2, DATE('2024-01-01') + INTERVAL (seq %% 365) DAY,
			TIMESTAMP('2024-06-01 08:00:00.125') + INTERVAL seq SECOND FROM seq_1_to_%d`, invalid, rows))
	}
	db, err := dbsql.Open("mysql", e.my.DSN(e.db))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(2)
	t.Cleanup(func() { db.Close() })
	e.sql = db

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	e.keyFile = filepath.Join(e.dir, "sf.key")
	if err := os.WriteFile(e.keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := sfdouble.Config{ClientID: sfClientID, ClientSecret: sfSecret, Username: sfUser, PublicKey: &key.PublicKey,
		Objects: []sfdouble.Object{sfProduct2()}, ShuffleResults: true, BulkDelay: 200 * time.Millisecond}
	e.d = sfdouble.New(cfg)
	t.Cleanup(e.d.Close)
	return e
}

// config writes a pipeline file; auth is "jwt" or "client_credentials";
// extra is appended to the target's block.
func (e *sfEnv) config(file, auth, extra string) string {
	e.t.Helper()
	a := fmt.Sprintf(`client_credentials: { client_id: %q, client_secret: "${PLUME_SF_SECRET}" }`, sfClientID)
	if auth == "jwt" {
		a = fmt.Sprintf(`jwt: { client_id: %q, username: %q, private_key_file: %q }`, sfClientID, sfUser, e.keyFile)
	}
	cfg := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
  type: mysql
  dsn: "%s@tcp(%s)/"
  tables: ["%s.products"]
  snapshot: initial
  heartbeat_interval: 1s
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
  topics: { partitions: 1 }
routes:
  - name: prices
    when: 'table == "products" && changed("price")'
    to: [crm]
    map: '{"Sku__c": row.sku, "Name": row.name, "Price__c": row.price, "IsActive": row.active, "Launch_Date__c": row.launched, "Price_Changed_At__c": row.changed_at}'
targets:
  crm:
    type: salesforce
    login_url: %q
    api_version: "61.0"
    object: Product2
    external_id: Sku__c
    timeout: 10s
    bulk_poll_interval: 1s
    auth:
      %s
%s`, e.name, filepath.Join(e.dir, "state"), e.my.User, e.my.Addr(), e.db, e.brokers[0], e.name, e.d.URL, a, extra)
	path := filepath.Join(e.dir, file)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *sfEnv) start(cfg string) *testharness.Proc {
	e.t.Helper()
	e.t.Setenv("PLUME_SF_SECRET", sfSecret)
	p := testharness.StartProcess(e.t, e.bin, "run", "-c", cfg)
	if !p.WaitOutput("pipeline running", 90*time.Second) {
		e.t.Fatalf("plume did not start:\n%s", eoTail(p.Output(), 30))
	}
	return p
}

// diff compares the source (rows matching where) with the double's
// Product2 records, and fails on an external ID with several records.
func (e *sfEnv) diff(where string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want, err := check.SQLTable(ctx, e.sql, sfSource+" "+where)
	if err != nil {
		return err
	}
	recs, n := e.d.ByExternalID("Product2", "Sku__c")
	for k, c := range n {
		if c > 1 {
			e.t.Fatalf("duplicate records: %d Product2 records with Sku__c %s", c, k)
		}
	}
	got := check.Rows{}
	for k, r := range recs {
		row := map[string]any{}
		for f, v := range r.Fields {
			row[f] = v
		}
		got[k] = row
	}
	return check.DiffRows(want, got)
}

// waitInSync waits until the double equals the source.
func (e *sfEnv) waitInSync(p *testharness.Proc, where string, d time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = e.diff(where); err == nil {
			return
		}
		if p != nil && p.Exited() {
			e.t.Fatalf("plume exited:\n%s", eoTail(p.Output(), 40))
		}
		time.Sleep(300 * time.Millisecond)
	}
	out := ""
	if p != nil {
		out = eoTail(p.Output(), 40)
	}
	e.t.Fatalf("Salesforce did not converge to the source within %v: %v\ndouble stats %+v\nplume output:\n%s", d, err, e.d.Stats(), out)
}

// dlq reads the pipeline's dead-letter topic: ce_id -> ce_dlqerror.
func (e *sfEnv) dlq() map[string]string {
	e.t.Helper()
	cl := testharness.KafkaClient(e.t, e.brokers, kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(e.name+"."+e.name+".dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	out := map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			var id, reason string
			for _, h := range r.Headers {
				switch h.Key {
				case "ce_id":
					id = string(h.Value)
				case "ce_dlqerror":
					reason = string(h.Value)
				}
			}
			out[id] = reason
		})
	}
	return out
}

// priceWriter changes prices: single updates, several changes of one key
// in one transaction, range updates, and inserts of new products.
type priceWriter struct {
	db     *dbsql.DB
	rng    *mrand.Rand
	nextID int64
	txns   int
}

func (w *priceWriter) txn(ctx context.Context) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	n := w.nextID - 1
	id := 1 + w.rng.Int64N(n)
	var stmts []string
	switch k := w.rng.IntN(10); {
	case k < 5:
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = price + 0.01, changed_at = NOW(3) WHERE id = %d`, id))
	case k < 7: // a price changed several times in one transaction
		for i := range 5 {
			stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = %d.%02d, changed_at = NOW(3) WHERE id = %d`, 10+i, w.txns%100, id))
		}
	case k < 9:
		stmts = append(stmts, fmt.Sprintf(`UPDATE products SET price = price + 1, changed_at = NOW(3) WHERE id BETWEEN %d AND %d`, id, id+20))
	default:
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO products VALUES (%d, 'SKU-%d', 'new %d', 3.50, 1, '2025-05-05', NOW(3))`, w.nextID, w.nextID, w.nextID))
		w.nextID++
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	w.txns++
	return tx.Commit()
}

// runFor writes about rate transactions per second for d (bounded in
// count by max).
func (w *priceWriter) runFor(ctx context.Context, rate int, d time.Duration, max int) error {
	start := time.Now()
	for i := 0; i < max && time.Since(start) < d; i++ {
		if err := w.txn(ctx); err != nil {
			return err
		}
		if ahead := time.Duration(i+1)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	return nil
}

// TestSalesforcePriceChanges is the price-change pipeline: snapshot, then
// price updates (several per key and transaction), inserts, deletes and an
// update that does not change the price (filtered by changed("price")),
// until the double equals the source. It also checks that coalescing makes
// a price changed ten times in one transaction cost at most two records.
func TestSalesforcePriceChanges(t *testing.T) {
	e := newSFEnv(t, 300, false)
	p := e.start(e.config("p.yaml", "client_credentials", ""))
	e.waitInSync(p, "", 60*time.Second)
	if st := e.d.Stats(); st.Created != 300 || st.Calls["collections_upsert"] > 3 {
		t.Fatalf("snapshot: %d created in %d calls", st.Created, st.Calls["collections_upsert"])
	}

	// A name change without a price change is not routed.
	e.my.Exec(t, e.db, `UPDATE products SET name = 'renamed without price' WHERE id = 1`)
	e.my.Exec(t, e.db, `UPDATE products SET price = 77.77 WHERE id = 2`)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, _ := e.d.ByExternalID("Product2", "Sku__c"); r["SKU-2"].Fields["Price__c"] == json.Number("77.77") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r, _ := e.d.ByExternalID("Product2", "Sku__c"); r["SKU-1"].Fields["Name"] != "product 1" || r["SKU-2"].Fields["Price__c"] != json.Number("77.77") {
		t.Fatalf("SKU-1 %v, SKU-2 %v", r["SKU-1"].Fields, r["SKU-2"].Fields)
	}

	// Ten changes of one price in one transaction.
	before := e.d.Writes("Product2", "Sku__c")["SKU-3"]
	var b strings.Builder
	b.WriteString("BEGIN;")
	for i := range 10 {
		fmt.Fprintf(&b, "UPDATE products SET price = %d.10 WHERE id = 3;", 20+i)
	}
	b.WriteString("COMMIT;")
	e.my.Exec(t, e.db, b.String())
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, _ := e.d.ByExternalID("Product2", "Sku__c"); r["SKU-3"].Fields["Price__c"] == json.Number("29.10") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := e.d.Writes("Product2", "Sku__c")["SKU-3"] - before; n < 1 || n > 2 {
		t.Fatalf("ten price changes in one transaction cost %d record writes, want 1 (2 if split across batches)", n)
	}

	ctx := context.Background()
	w := &priceWriter{db: e.sql, rng: mrand.New(mrand.NewPCG(7, 7)), nextID: 301}
	if err := w.runFor(ctx, 100, 10*time.Second, 2000); err != nil {
		t.Fatal(err)
	}
	e.my.Exec(t, e.db, `UPDATE products SET price = price + 5 WHERE id = 1; DELETE FROM products WHERE id IN (10, 11, 12)`)
	e.waitInSync(p, "", 60*time.Second)
	st := e.d.Stats()
	if st.MaxKeyPerCall != 1 || st.Deletes != 3 || st.Calls["query"] < 1 {
		t.Fatalf("stats %+v", st)
	}
	if dl := e.dlq(); len(dl) != 0 {
		t.Fatalf("dead letters: %v", dl)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, eoTail(p.Output(), 20))
	}
	if strings.Contains(p.Output(), sfSecret) {
		t.Fatal("the client secret is in plume's output")
	}
	t.Logf("writer: %d transactions; double: %d Collections calls, %d records, %d API calls", w.txns, st.CollectionsCalls, st.CollectionsRecords, st.APICalls)
}

// TestSalesforceKillNine SIGKILLs plume twice while prices change, once
// with every batch through Collections calls (and the double losing some
// replies after writing), once with catch-up batches through Bulk API jobs
// (a job may be processing when plume dies): afterwards each external ID
// has exactly one record, created once, and the double equals the source.
func TestSalesforceKillNine(t *testing.T) {
	for _, c := range []struct {
		name, extra string
		collections bool
	}{
		{"collections", "    bulk_threshold: 0\n    delivery: { batch_linger: 300ms }\n", true},
		{"bulk", "    bulk_threshold: 500\n    delivery: { batch_linger: 1s }\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newSFEnv(t, 2000, false)
			if c.collections {
				e.d.SetFailAfterApply(0.05)
			}
			cfg := e.config("k.yaml", "client_credentials", c.extra)
			p := e.start(cfg)
			ctx := context.Background()
			w := &priceWriter{db: e.sql, rng: mrand.New(mrand.NewPCG(9, 9)), nextID: 2001}
			var wg sync.WaitGroup
			var werr error
			wg.Go(func() { werr = w.runFor(ctx, 150, 16*time.Second, 4000) })
			for range 2 {
				time.Sleep(6 * time.Second)
				if err := p.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				_ = p.Wait()
				p = e.start(cfg)
			}
			wg.Wait()
			if werr != nil {
				t.Fatal(werr)
			}
			e.waitInSync(p, "", 90*time.Second)
			var rows int64
			if err := e.sql.QueryRow(`SELECT count(*) FROM products`).Scan(&rows); err != nil {
				t.Fatal(err)
			}
			st := e.d.Stats()
			// No deletes in this test: every product was created exactly once.
			if st.Created != rows {
				t.Fatalf("%d records created for %d products: a replay created duplicates", st.Created, rows)
			}
			if c.collections && (st.CollectionsCalls == 0 || st.BulkJobs != 0) || !c.collections && st.BulkJobs < 2 {
				t.Fatalf("the test did not take its path: %d Collections calls, %d Bulk jobs", st.CollectionsCalls, st.BulkJobs)
			}
			if dl := e.dlq(); len(dl) != 0 {
				t.Fatalf("dead letters: %v", dl)
			}
			t.Logf("%d transactions, %d products; double: %d upserts, %d injected 5xx, %d Collections calls, %d Bulk jobs",
				w.txns, rows, st.Upserts, st.Injected5xx, st.CollectionsCalls, st.BulkJobs)
		})
	}
}

// TestSalesforceBulkSnapshot50k snapshots 50,000 rows, 50 of them with a
// negative price the org refuses. The batches (10,000 events by default for
// this target) go through Bulk API 2.0 jobs; the refused rows are
// dead-lettered with FIELD_CUSTOM_VALIDATION_EXCEPTION, the others equal
// the source.
func TestSalesforceBulkSnapshot50k(t *testing.T) {
	const rows = 50000
	e := newSFEnv(t, rows, true)
	p := e.start(e.config("b.yaml", "jwt", "    delivery: { batch_linger: 5s }\n"))
	e.waitInSync(p, "WHERE price >= 0", 3*time.Minute)
	st := e.d.Stats()
	jobs := st.BulkJobs
	if jobs < 1 || st.Calls["bulk_create"] != jobs || st.Calls["bulk_upload"] != jobs || st.Calls["bulk_close"] != jobs ||
		st.Calls["bulk_poll"] < jobs || st.Calls["bulk_results"] != 2*jobs || st.BulkCompleted != jobs {
		t.Fatalf("job flow: %d jobs, calls %v", jobs, st.Calls)
	}
	if st.BulkRecords < rows*9/10 {
		t.Fatalf("only %d of %d rows went through Bulk API (%d through Collections)", st.BulkRecords, rows, st.CollectionsRecords)
	}
	dl := e.dlq()
	bad := 0
	for id, reason := range dl {
		if !strings.Contains(reason, "FIELD_CUSTOM_VALIDATION_EXCEPTION") || !strings.Contains(reason, "Price must not be negative") {
			t.Errorf("dead letter %s: %s", id, reason)
		}
		bad++
	}
	if bad != rows/1000 {
		t.Fatalf("%d dead letters, want %d", bad, rows/1000)
	}
	if recs, _ := e.d.ByExternalID("Product2", "Sku__c"); len(recs) != rows-rows/1000 {
		t.Fatalf("%d records", len(recs))
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d Bulk jobs, %d rows through Bulk, %d through Collections, %d API calls", jobs, st.BulkRecords, st.CollectionsRecords, st.APICalls)
}

// TestSalesforceTokenExpiry expires every session three times while prices
// change (JWT bearer flow): the target re-authenticates and nothing is
// lost or dead-lettered.
func TestSalesforceTokenExpiry(t *testing.T) {
	e := newSFEnv(t, 500, false)
	p := e.start(e.config("t.yaml", "jwt", "    delivery: { batch_linger: 200ms }\n"))
	e.waitInSync(p, "", 60*time.Second)
	w := &priceWriter{db: e.sql, rng: mrand.New(mrand.NewPCG(3, 3)), nextID: 501}
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() { werr = w.runFor(context.Background(), 100, 12*time.Second, 3000) })
	for range 3 {
		time.Sleep(3 * time.Second)
		e.d.ExpireTokens()
	}
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	e.waitInSync(p, "", 60*time.Second)
	st := e.d.Stats()
	if st.Unauthorized < 1 || st.TokensIssued < 2 {
		t.Fatalf("401s %d, tokens %d", st.Unauthorized, st.TokensIssued)
	}
	if dl := e.dlq(); len(dl) != 0 {
		t.Fatalf("dead letters: %v", dl)
	}
	if !strings.Contains(p.Output(), "re-authenticating") {
		t.Fatal("no re-authentication in the log")
	}
	t.Logf("%d tokens issued, %d 401 answers", st.TokensIssued, st.Unauthorized)
}

// TestSalesforceRateLimited: the org answers REQUEST_LIMIT_EXCEEDED for
// ten seconds while prices change; deliveries back off and resume, nothing
// is lost or dead-lettered.
func TestSalesforceRateLimited(t *testing.T) {
	e := newSFEnv(t, 500, false)
	p := e.start(e.config("r.yaml", "client_credentials", "    delivery: { batch_linger: 200ms }\n"))
	e.waitInSync(p, "", 60*time.Second)
	w := &priceWriter{db: e.sql, rng: mrand.New(mrand.NewPCG(5, 5)), nextID: 501}
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() { werr = w.runFor(context.Background(), 100, 14*time.Second, 3000) })
	time.Sleep(2 * time.Second)
	e.d.SetRequestLimitExceeded(true)
	time.Sleep(10 * time.Second)
	limited := e.d.Stats().LimitExceeded
	e.d.SetRequestLimitExceeded(false)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	e.waitInSync(p, "", 60*time.Second)
	if limited < 2 {
		t.Fatalf("only %d REQUEST_LIMIT_EXCEEDED answers: the test did not limit anything", limited)
	}
	if dl := e.dlq(); len(dl) != 0 {
		t.Fatalf("dead letters: %v", dl)
	}
	t.Logf("%d REQUEST_LIMIT_EXCEEDED answers", limited)
}
