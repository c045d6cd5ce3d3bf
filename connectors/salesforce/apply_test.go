package salesforce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/connectors/salesforce/sfdouble"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// TestCollectionsUpsertChunksAndRejects: 450 upserts make calls of 200,
// 200 and 50 with allOrNone=false; records the org refuses come back as
// RecordErrors (Applied) with Salesforce's statusCode and message, the rest
// is written.
func TestCollectionsUpsertChunksAndRejects(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	var msgs []target.Message
	for i := range 450 {
		price := fmt.Sprintf("%d.50", i)
		if i%100 == 7 {
			price = "-1.00" // the validation rule refuses it
		}
		row := product(i, price)
		if i == 9 {
			delete(row, "Name") // REQUIRED_FIELD_MISSING on create
		}
		msgs = append(msgs, msg(int64(i), event.OpCreate, row))
	}
	re, _ := applyUntil(t, tg, batchOf(msgs...), 1)
	if re == nil || !re.Applied || len(re.Failed) != 6 {
		t.Fatalf("record errors = %+v", re)
	}
	if e := re.Failed[7].Error(); !strings.Contains(e, "FIELD_CUSTOM_VALIDATION_EXCEPTION") || !strings.Contains(e, "Price must not be negative") || !strings.Contains(e, "Sku__c=SKU-00007") {
		t.Fatalf("error for 7: %s", e)
	}
	if e := re.Failed[9].Error(); !strings.Contains(e, "REQUIRED_FIELD_MISSING") || !strings.Contains(e, "Name") {
		t.Fatalf("error for 9: %s", e)
	}
	st := d.Stats()
	if st.Calls["collections_upsert"] != 3 || st.RecordsPerCall[200] != 2 || st.RecordsPerCall[50] != 1 {
		t.Fatalf("calls %v, records per call %v", st.Calls, st.RecordsPerCall)
	}
	recs := byExt(t, d)
	if len(recs) != 444 {
		t.Fatalf("%d records, want 444", len(recs))
	}
	if p := recs["SKU-00123"].Fields["Price__c"]; p != json.Number("123.50") {
		t.Fatalf("price %#v", p)
	}
	if tg.Stats().CollectionsRecords.Load() != 450 {
		t.Fatalf("stats %d", tg.Stats().CollectionsRecords.Load())
	}
}

// TestRetryableRecordErrorsAreNeverDropped: UNABLE_TO_LOCK_ROW on a third
// of the records makes Apply fail (retryable); the next calls send only
// the records not yet written, until all are.
func TestRetryableRecordErrorsAreNeverDropped(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	d.SetLockErrors(0.3)
	var msgs []target.Message
	for i := range 300 {
		msgs = append(msgs, msg(int64(i), event.OpCreate, product(i, "1.00")))
	}
	b := batchOf(msgs...)
	re, attempts := applyUntil(t, tg, b, 50)
	if re != nil {
		t.Fatalf("record errors %v", re.Failed)
	}
	if attempts < 2 || d.Stats().RecordErrors["UNABLE_TO_LOCK_ROW"] == 0 {
		t.Fatalf("attempts %d, lock errors %d", attempts, d.Stats().RecordErrors["UNABLE_TO_LOCK_ROW"])
	}
	if n := len(byExt(t, d)); n != 300 {
		t.Fatalf("%d records", n)
	}
	// Records acknowledged by an earlier attempt were not sent again.
	for k, n := range d.Writes("Product2", "Sku__c") {
		if n != 1 {
			t.Fatalf("%s written %d times", k, n)
		}
	}
}

// TestRequestLimitExceededIsRetried: 403 REQUEST_LIMIT_EXCEEDED is a
// retryable error, never a dead letter; the batch goes through once the
// org answers again.
func TestRequestLimitExceededIsRetried(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	d.SetRequestLimitExceeded(true)
	b := batchOf(msg(0, event.OpCreate, product(1, "1.00")))
	err := tg.Apply(context.Background(), b)
	if err == nil || target.IsPermanent(err) || !strings.Contains(err.Error(), "REQUEST_LIMIT_EXCEEDED") {
		t.Fatalf("Apply = %v", err)
	}
	var re *target.RecordErrors
	if errors.As(err, &re) {
		t.Fatal("rate limiting produced record errors")
	}
	d.SetRequestLimitExceeded(false)
	if re, _ := applyUntil(t, tg, b, 3); re != nil {
		t.Fatal(re)
	}
	if len(byExt(t, d)) != 1 || tg.Stats().LimitExceeded.Load() != 1 {
		t.Fatalf("records %d, limit answers %d", len(byExt(t, d)), tg.Stats().LimitExceeded.Load())
	}
}

// TestFiveHundredsAndLostRepliesDoNotDuplicate: injected 503s and 500s
// after the write (the reply lost) are retried; each key ends as one
// record with the batch's value.
func TestFiveHundredsAndLostRepliesDoNotDuplicate(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	d.SetFail5xx(0.2)
	d.SetFailAfterApply(0.3)
	var msgs []target.Message
	for i := range 1000 {
		msgs = append(msgs, msg(int64(i), event.OpCreate, product(i, fmt.Sprintf("%d.00", i))))
	}
	if re, _ := applyUntil(t, tg, batchOf(msgs...), 200); re != nil {
		t.Fatal(re)
	}
	recs := byExt(t, d)
	if len(recs) != 1000 || d.Stats().Injected5xx == 0 {
		t.Fatalf("%d records, %d injected", len(recs), d.Stats().Injected5xx)
	}
	if p := recs["SKU-00999"].Fields["Price__c"]; p != json.Number("999.00") {
		t.Fatalf("price %v", p)
	}
}

// TestOneRecordPerKeyPerCall: without the layer's coalescing, a batch with
// the same key three times is sent in three rounds, in order, and the last
// value wins; no call holds a key twice.
func TestOneRecordPerKeyPerCall(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	var msgs []target.Message
	for i := range 30 {
		msgs = append(msgs, msg(int64(i), event.OpUpdate, product(i%10, fmt.Sprintf("%d.00", i))))
	}
	if re, _ := applyUntil(t, tg, batchOf(msgs...), 1); re != nil {
		t.Fatal(re)
	}
	st := d.Stats()
	if st.MaxKeyPerCall != 1 || st.Calls["collections_upsert"] != 3 {
		t.Fatalf("max per call %d, calls %d", st.MaxKeyPerCall, st.Calls["collections_upsert"])
	}
	if p := byExt(t, d)["SKU-00003"].Fields["Price__c"]; p != json.Number("23.00") {
		t.Fatalf("price %v, want the last (23.00)", p)
	}
	// With coalescing (the layer's default for this target) each key costs
	// one record.
	d.ResetStats()
	coalesced := target.Coalesce(msgs)
	if len(coalesced) != 10 {
		t.Fatalf("coalesced to %d", len(coalesced))
	}
	if re, _ := applyUntil(t, tg, batchOf(coalesced...), 1); re != nil {
		t.Fatal(re)
	}
	if st := d.Stats(); st.CollectionsRecords != 10 || st.Calls["collections_upsert"] != 1 {
		t.Fatalf("coalesced: %d records in %d calls", st.CollectionsRecords, st.Calls["collections_upsert"])
	}
}

// TestDeleteByExternalID: a delete looks the record up (query) and deletes
// it (Collections delete); replaying it changes nothing.
func TestDeleteByExternalID(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	var ups []target.Message
	for i := range 5 {
		ups = append(ups, msg(int64(i), event.OpCreate, product(i, "2.00")))
	}
	if re, _ := applyUntil(t, tg, batchOf(ups...), 1); re != nil {
		t.Fatal(re)
	}
	// A sku with a quote checks the SOQL escaping.
	odd := map[string]any{"Sku__c": `O'Brien\1`, "Name": "odd", "Price__c": "1.00"}
	if re, _ := applyUntil(t, tg, batchOf(msg(9, event.OpCreate, odd)), 1); re != nil {
		t.Fatal(re)
	}
	del := batchOf(msg(10, event.OpDelete, product(1, "2.00")), msg(11, event.OpDelete, product(3, "not a price: deletes need only the external ID")),
		msg(12, event.OpDelete, product(77, "2.00")), msg(13, event.OpDelete, odd))
	if re, _ := applyUntil(t, tg, del, 1); re != nil {
		t.Fatal(re)
	}
	recs := byExt(t, d)
	if len(recs) != 3 || recs["SKU-00001"].ID != "" || recs["SKU-00003"].ID != "" || recs[`O'Brien\1`].ID != "" {
		t.Fatalf("records left: %v", recs)
	}
	st := d.Stats()
	if st.Calls["query"] != 1 || st.Calls["collections_delete"] != 1 || st.Deletes != 3 {
		t.Fatalf("calls %v, deletes %d", st.Calls, st.Deletes)
	}
	// Replay: nothing found, nothing deleted, no error.
	if re, _ := applyUntil(t, tg, batchOf(del.Messages...), 1); re != nil {
		t.Fatal(re)
	}
	if d.Stats().Deletes != 3 || d.Stats().Calls["collections_delete"] != 1 {
		t.Fatal("replayed delete deleted something")
	}
}

// TestDeleteAsUpsertAndIgnore: delete: upsert writes delete_fields over the
// row; delete: ignore leaves the record.
func TestDeleteAsUpsertAndIgnore(t *testing.T) {
	d := newDouble(t, nil)
	cfg := baseConfig(d)
	cfg.Delete = DeleteUpsert
	cfg.DeleteFields = map[string]any{"IsActive": false}
	tg := openTarget(t, cfg)
	row := product(1, "3.00")
	row["IsActive"] = true
	if re, _ := applyUntil(t, tg, batchOf(msg(0, event.OpCreate, row)), 1); re != nil {
		t.Fatal(re)
	}
	if re, _ := applyUntil(t, tg, batchOf(msg(1, event.OpDelete, row)), 1); re != nil {
		t.Fatal(re)
	}
	if r := byExt(t, d)["SKU-00001"]; r.Fields["IsActive"] != false || r.Fields["Name"] != "product 1" {
		t.Fatalf("record %v", r.Fields)
	}
	cfg.Delete, cfg.DeleteFields = DeleteIgnore, nil
	tg2 := openTarget(t, cfg)
	d.ResetStats()
	if re, _ := applyUntil(t, tg2, batchOf(msg(2, event.OpDelete, row), msg(3, event.OpTruncate, nil)), 1); re != nil {
		t.Fatal(re)
	}
	if len(byExt(t, d)) != 1 || d.Stats().APICalls != 0 {
		t.Fatalf("ignore made %d calls", d.Stats().APICalls)
	}
}

// TestBulkJobFlow: a batch of at least bulk_threshold upserts goes through
// one Bulk API 2.0 job: create, upload, UploadComplete, poll, results. Rows
// the org refuses are rejected with their statusCode; result rows come
// shuffled and are matched by external ID; nulls clear fields (#N/A).
func TestBulkJobFlow(t *testing.T) {
	d := newDouble(t, func(c *sfdouble.Config) { c.BulkDelay = 300 * time.Millisecond })
	cfg := baseConfig(d)
	th := 1000
	cfg.BulkThreshold = &th
	tg := openTarget(t, cfg)
	d.Put("Product2", map[string]any{"Sku__c": "SKU-00002", "Name": "old", "Description": "to be cleared", "ProductCode": "kept"})
	var msgs []target.Message
	for i := range 3000 {
		row := product(i, fmt.Sprintf("%d.25", i))
		switch {
		case i%500 == 11:
			row["Price__c"] = "-5"
		case i == 2:
			row["Description"] = nil
			row["Name"] = `quoted "name", with comma`
		case i == 3:
			row["Quantity__c"] = int64(7)
			row["IsActive"] = int64(1)
			row["Launch_Date__c"] = "2024-02-29"
			row["Price_Changed_At__c"] = "2024-03-01T10:00:00.123456"
		}
		msgs = append(msgs, msg(int64(i), event.OpUpdate, row))
	}
	re, _ := applyUntil(t, tg, batchOf(msgs...), 1)
	if re == nil || !re.Applied || len(re.Failed) != 6 {
		t.Fatalf("record errors %+v", re)
	}
	if e := re.Failed[511].Error(); !strings.Contains(e, "FIELD_CUSTOM_VALIDATION_EXCEPTION") || !strings.Contains(e, "SKU-00511") {
		t.Fatalf("bulk error: %s", e)
	}
	st := d.Stats()
	for kind, want := range map[string]int64{"bulk_create": 1, "bulk_upload": 1, "bulk_close": 1, "bulk_results": 2} {
		if st.Calls[kind] != want {
			t.Fatalf("%s calls = %d, want %d (%v)", kind, st.Calls[kind], want, st.Calls)
		}
	}
	if st.Calls["bulk_poll"] < 1 || st.Calls["collections_upsert"] != 0 || st.BulkRecords != 3000 || st.BulkCompleted != 1 {
		t.Fatalf("stats %+v", st)
	}
	recs := byExt(t, d)
	if len(recs) != 2994 {
		t.Fatalf("%d records", len(recs))
	}
	r2 := recs["SKU-00002"].Fields
	if r2["Description"] != nil || r2["ProductCode"] != "kept" || r2["Name"] != `quoted "name", with comma` || r2["Price__c"] != json.Number("2.25") {
		t.Fatalf("record 2: %v", r2)
	}
	r3 := recs["SKU-00003"].Fields
	if r3["Quantity__c"] != json.Number("7") || r3["IsActive"] != true || r3["Launch_Date__c"] != "2024-02-29" || r3["Price_Changed_At__c"] != "2024-03-01T10:00:00.123Z" {
		t.Fatalf("record 3: %v", r3)
	}
}

// TestBulkJobResumedAfterRetry: when a poll fails, the next Apply of the
// batch resumes the same job instead of starting another one.
func TestBulkJobResumedAfterRetry(t *testing.T) {
	d := newDouble(t, func(c *sfdouble.Config) { c.BulkDelay = 500 * time.Millisecond })
	cfg := baseConfig(d)
	th := 10
	cfg.BulkThreshold = &th
	tg := openTarget(t, cfg)
	var msgs []target.Message
	for i := range 50 {
		msgs = append(msgs, msg(int64(i), event.OpCreate, product(i, "1.00")))
	}
	b := batchOf(msgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := tg.Apply(ctx, b) // ends while the job is processing
	cancel()
	if err == nil {
		t.Fatal("Apply returned before the job finished")
	}
	if re, _ := applyUntil(t, tg, b, 3); re != nil {
		t.Fatal(re)
	}
	if st := d.Stats(); st.BulkJobs != 1 || st.BulkCompleted != 1 {
		t.Fatalf("%d jobs created", st.BulkJobs)
	}
	if len(byExt(t, d)) != 50 {
		t.Fatal("records missing")
	}
}

// TestOpenWaitsForJobsOfAnEarlierRun: a process that died while its Bulk
// job was processing leaves the job running; the next Open waits for it,
// so it cannot complete after newer changes.
func TestOpenWaitsForJobsOfAnEarlierRun(t *testing.T) {
	d := newDouble(t, func(c *sfdouble.Config) { c.BulkDelay = 800 * time.Millisecond })
	cfg := baseConfig(d)
	th := 10
	cfg.BulkThreshold = &th
	tg := openTarget(t, cfg)
	var msgs []target.Message
	for i := range 20 {
		msgs = append(msgs, msg(int64(i), event.OpCreate, product(i, "1.00")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	_ = tg.Apply(ctx, batchOf(msgs...)) // "crashes" while the job is processing
	cancel()
	if st := d.Stats(); st.BulkJobs != 1 || st.BulkCompleted != 0 {
		t.Fatalf("jobs %d, completed %d", st.BulkJobs, st.BulkCompleted)
	}
	openTarget(t, cfg)
	if st := d.Stats(); st.BulkCompleted != 1 || st.Calls["bulk_list"] != 2 {
		t.Fatalf("Open returned before the job completed: %+v", st)
	}
}

// TestTokenCacheAndReauth: one token serves every call; when the session
// expires (401 INVALID_SESSION_ID) the target re-authenticates once and
// retries the call.
func TestTokenCacheAndReauth(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	for i := range 5 {
		if re, _ := applyUntil(t, tg, batchOf(msg(int64(i), event.OpCreate, product(i, "1.00"))), 1); re != nil {
			t.Fatal(re)
		}
	}
	if n := d.Stats().TokensIssued; n != 1 {
		t.Fatalf("%d tokens for 6 calls", n)
	}
	d.ExpireTokens()
	if re, _ := applyUntil(t, tg, batchOf(msg(9, event.OpCreate, product(9, "1.00"))), 1); re != nil {
		t.Fatal(re)
	}
	st := d.Stats()
	if st.TokensIssued != 2 || st.Unauthorized != 1 || tg.Stats().Reauths.Load() != 1 {
		t.Fatalf("tokens %d, 401s %d, reauths %d", st.TokensIssued, st.Unauthorized, tg.Stats().Reauths.Load())
	}
}

// TestJWTBearer: the JWT flow with a key file and with the key in an
// environment variable (through the pipeline file); a key the org does not
// know is refused for good.
func TestJWTBearer(t *testing.T) {
	key, file := rsaKey(t)
	d := newDouble(t, func(c *sfdouble.Config) { c.PublicKey = &key.PublicKey })
	cfg := baseConfig(d)
	cfg.Auth = Auth{JWT: &JWT{ClientID: testClientID, Username: testUser, PrivateKeyFile: file}}
	tg := openTarget(t, cfg)
	if re, _ := applyUntil(t, tg, batchOf(msg(0, event.OpCreate, product(1, "1.00"))), 1); re != nil {
		t.Fatal(re)
	}

	pemText, _ := osReadFile(file)
	t.Setenv("SF_JWT_KEY", strings.ReplaceAll(pemText, "\n", `\n`)) // one-line form
	p := pipelineWith(t, `    type: salesforce
    login_url: "`+d.URL+`"
    api_version: "58.0"
    object: Product2
    external_id: Sku__c
    bulk_threshold: 0
    auth:
      jwt: { client_id: "`+testClientID+`", username: "`+testUser+`", private_key: "${SF_JWT_KEY}" }
`)
	tg2, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "crm", Config: p.Targets["crm"]})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tg2.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tg2.Apply(context.Background(), batchOf(msg(1, event.OpCreate, product(2, "1.00")))); err != nil {
		t.Fatal(err)
	}
	if v := d.Stats().LastAPIVersion; v != "58.0" {
		t.Fatalf("API version %s", v)
	}

	other, otherFile := rsaKey(t)
	_ = other
	cfg.Auth.JWT.PrivateKeyFile = otherFile
	bad, err := New(cfg, "crm", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.Open(context.Background())
	if !target.IsPermanent(err) || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("Open with an unknown key = %v", err)
	}
}

// TestBadClientSecretIsPermanentAndNotPrinted.
func TestBadClientSecretIsPermanentAndNotPrinted(t *testing.T) {
	d := newDouble(t, nil)
	cfg := baseConfig(d)
	cfg.Auth.ClientCredentials.ClientSecret = config.Secret("wrong-secret-value-123")
	tg, err := New(cfg, "crm", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tg.Open(context.Background())
	if !target.IsPermanent(err) || !strings.Contains(err.Error(), "invalid_client") || strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("Open = %v", err)
	}
	if s := fmt.Sprintf("%v %+v", cfg, cfg); strings.Contains(s, "wrong-secret") {
		t.Fatal("config prints the secret")
	}
}

// TestAPIBudgetHoldsDeliveries: above api_budget of the org's daily limit
// the target holds (retryable error, a counter, nothing dropped) and asks
// for the usage every budget_check_interval; it resumes when usage falls.
func TestAPIBudgetHoldsDeliveries(t *testing.T) {
	d := newDouble(t, func(c *sfdouble.Config) { c.APILimit = 1000 })
	cfg := baseConfig(d)
	budget := 0.9
	cfg.APIBudget = &budget
	cfg.BudgetCheckInterval = config.Duration{Duration: 50 * time.Millisecond}
	d.SetAPIUsage(950)
	tg := openTarget(t, cfg) // learns the usage from Sforce-Limit-Info
	b := batchOf(msg(0, event.OpCreate, product(1, "1.00")))
	err := tg.Apply(context.Background(), b)
	var ob errOverBudget
	if !errors.As(err, &ob) || target.IsPermanent(err) || !strings.Contains(err.Error(), "952/1000") {
		t.Fatalf("Apply = %v", err)
	}
	calls := d.Stats().APICalls
	_ = tg.Apply(context.Background(), b) // within the check interval: no call at all
	if d.Stats().APICalls != calls {
		t.Fatal("a held target made calls within the check interval")
	}
	d.SetAPIUsage(100)
	time.Sleep(60 * time.Millisecond)
	if re, _ := applyUntil(t, tg, b, 3); re != nil {
		t.Fatal(re)
	}
	if len(byExt(t, d)) != 1 || tg.Stats().BudgetHolds.Load() != 2 || d.Stats().Calls["limits"] != 2 {
		t.Fatalf("records %d, holds %d, limits calls %d", len(byExt(t, d)), tg.Stats().BudgetHolds.Load(), d.Stats().Calls["limits"])
	}
}

// TestRequestRefusedWholeIsSplit: a 400 for a whole Collections request (a
// value the org cannot deserialize) is split until the bad record is
// alone; only it is rejected.
func TestRequestRefusedWholeIsSplit(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	var msgs []target.Message
	for i := range 64 {
		row := product(i, "1.00")
		if i == 37 {
			row["Blob__c"] = int64(5) // base64 passes through; the org refuses a number
		}
		msgs = append(msgs, msg(int64(i), event.OpCreate, row))
	}
	re, _ := applyUntil(t, tg, batchOf(msgs...), 1)
	if re == nil || len(re.Failed) != 1 || !strings.Contains(re.Failed[37].Error(), "JSON_PARSER_ERROR") {
		t.Fatalf("record errors %+v", re)
	}
	if len(byExt(t, d)) != 63 {
		t.Fatal("records missing")
	}
}

// TestRowsTheOrgWouldRefuse are rejected before any call: unknown fields
// (after describing again), no external ID, bad values.
func TestRowsTheOrgWouldRefuse(t *testing.T) {
	d := newDouble(t, nil)
	tg := openTarget(t, baseConfig(d))
	rows := []map[string]any{
		{"Sku__c": "A", "Name": "a", "Colour__c": "red"},
		{"Name": "no sku"},
		{"Sku__c": "", "Name": "empty sku"},
		{"Sku__c": "B", "Name": "b", "Price__c": "12,50"},
		{"Sku__c": "C", "Name": "c", "Launch_Date__c": "0000-00-00"},
		{"Sku__c": "D", "Name": "d", "Id": "01t000000000001"},
		{"Sku__c": "E", "Name": "fine"},
	}
	var msgs []target.Message
	for i, r := range rows {
		msgs = append(msgs, msg(int64(i), event.OpCreate, r))
	}
	re, _ := applyUntil(t, tg, batchOf(msgs...), 1)
	if re == nil || len(re.Failed) != 6 {
		t.Fatalf("record errors %+v", re)
	}
	for i, want := range []string{`no field "Colour__c"`, "no value for the external ID", "external ID Sku__c is empty", `"12,50" is not a number`, "not a valid date", "sets Id"} {
		if !strings.Contains(re.Failed[i].Error(), want) {
			t.Errorf("row %d: %v, want %q", i, re.Failed[i], want)
		}
	}
	if len(byExt(t, d)) != 1 || d.Stats().Calls["describe"] != 2 {
		t.Fatalf("records %d, describes %d", len(byExt(t, d)), d.Stats().Calls["describe"])
	}
}

// TestRenderValue covers the type rendering table.
func TestRenderValue(t *testing.T) {
	f := func(typ string) *fieldInfo { return &fieldInfo{Name: "F", Type: typ} }
	cases := []struct {
		typ  string
		in   any
		want any
		err  bool
	}{
		{"currency", "12.50", json.Number("12.50"), false},
		{"currency", "12345678901234567.12", json.Number("12345678901234567.12"), false},
		{"currency", json.Number("18446744073709551615"), json.Number("18446744073709551615"), false},
		{"double", float64(0.1), json.Number("0.1"), false},
		{"double", int64(-7), json.Number("-7"), false},
		{"double", "+007.50", json.Number("7.50"), false},
		{"double", "NaN", nil, true},
		{"percent", true, nil, true},
		{"int", "42.00", json.Number("42"), false},
		{"int", "42.5", nil, true},
		{"boolean", int64(1), true, false},
		{"boolean", "f", false, false},
		{"boolean", "maybe", nil, true},
		{"date", "2024-02-29", "2024-02-29", false},
		{"date", "2024-02-29T23:30:00-02:00", "2024-03-01", false},
		{"date", "2023-02-29", nil, true},
		{"datetime", "2024-01-31T12:00:00", "2024-01-31T12:00:00.000Z", false},
		{"datetime", "2024-01-31 12:00:00.5", "2024-01-31T12:00:00.500Z", false},
		{"datetime", "2024-01-31T12:00:00+02:00", "2024-01-31T10:00:00.000Z", false},
		{"datetime", "2038-01-19T03:14:07.999999Z", "2038-01-19T03:14:07.999Z", false},
		{"datetime", "2024-01-31", "2024-01-31T00:00:00.000Z", false},
		{"datetime", time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("x", 3600)), "2024-05-01T11:00:00.000Z", false},
		{"time", "12:30:05.25", "12:30:05.250Z", false},
		{"time", "25:00:00", nil, true},
		{"string", int64(42), "42", false},
		{"string", json.Number("1.50"), "1.50", false},
		{"textarea", map[string]any{"a": int64(1)}, `{"a":1}`, false},
		{"picklist", false, "false", false},
		{"string", nil, nil, false},
		{"currency", nil, nil, false},
	}
	for _, c := range cases {
		got, err := renderValue(f(c.typ), c.in)
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("%s %#v: got %#v, %v; want %#v (error %v)", c.typ, c.in, got, err, c.want, c.err)
		}
	}
	for in, want := range map[any]string{nil: "#N/A", "": "#N/A", "x": "x", json.Number("1.50"): "1.50", true: "true"} {
		if got := cell(in); got != want {
			t.Errorf("cell(%#v) = %q", in, got)
		}
	}
}

var _ = sfdouble.Config{}

// TestTokenLifetimeAndLatency: tokens the org expires after a lifetime
// (the double's TokenTTL) are renewed on the 401; injected latency only
// slows calls down.
func TestTokenLifetimeAndLatency(t *testing.T) {
	d := newDouble(t, func(c *sfdouble.Config) { c.TokenTTL = 300 * time.Millisecond })
	d.SetLatency(20 * time.Millisecond)
	tg := openTarget(t, baseConfig(d))
	start := time.Now()
	for i := range 3 {
		if re, _ := applyUntil(t, tg, batchOf(msg(int64(i), event.OpCreate, product(i, "1.00"))), 1); re != nil {
			t.Fatal(re)
		}
		time.Sleep(350 * time.Millisecond)
	}
	if st := d.Stats(); st.TokensIssued != 3 || st.Unauthorized != 2 || len(byExt(t, d)) != 3 {
		t.Fatalf("tokens %d, 401s %d", st.TokensIssued, st.Unauthorized)
	}
	if time.Since(start) < 3*(350+40)*time.Millisecond {
		t.Fatal("latency not applied")
	}
}
