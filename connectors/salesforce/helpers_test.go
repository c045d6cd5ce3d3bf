package salesforce

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/connectors/salesforce/sfdouble"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

const (
	testClientID = "3MVG9-test-client"
	testSecret   = "s3cr3t-client-value"
	testUser     = "integration@example.com"
)

// product2 is the schema the tests' org has: Product2 with an external ID
// Sku__c and a validation rule refusing negative prices.
func product2() sfdouble.Object {
	return sfdouble.Object{
		Name: "Product2", KeyPrefix: "01t",
		Fields: []sfdouble.Field{
			{Name: "Sku__c", Type: "string", Length: 80, ExternalID: true},
			{Name: "Name", Type: "string", Length: 255, Required: true},
			{Name: "ProductCode", Type: "string", Length: 255},
			{Name: "Description", Type: "textarea", Length: 4000},
			{Name: "Price__c", Type: "currency", Precision: 18, Scale: 2},
			{Name: "Quantity__c", Type: "int"},
			{Name: "IsActive", Type: "boolean"},
			{Name: "Launch_Date__c", Type: "date"},
			{Name: "Price_Changed_At__c", Type: "datetime"},
			{Name: "Opens_At__c", Type: "time"},
			{Name: "Blob__c", Type: "base64"},
		},
		Validate: func(rec map[string]any) string {
			if p, ok := rec["Price__c"].(json.Number); ok && strings.HasPrefix(string(p), "-") {
				return "Price must not be negative"
			}
			return ""
		},
	}
}

func newDouble(t *testing.T, mod func(*sfdouble.Config)) *sfdouble.Server {
	t.Helper()
	cfg := sfdouble.Config{ClientID: testClientID, ClientSecret: testSecret, Username: testUser, Objects: []sfdouble.Object{product2()}, ShuffleResults: true}
	if mod != nil {
		mod(&cfg)
	}
	d := sfdouble.New(cfg)
	t.Cleanup(d.Close)
	return d
}

func baseConfig(d *sfdouble.Server) Config {
	zero := 0
	return Config{
		LoginURL:      d.URL,
		Object:        "Product2",
		ExternalID:    "Sku__c",
		BulkThreshold: &zero,
		Auth:          Auth{ClientCredentials: &ClientCredentials{ClientID: testClientID, ClientSecret: config.Secret(testSecret)}},
	}
}

func openTarget(t *testing.T, cfg Config) *Target {
	t.Helper()
	tg, err := New(cfg, "crm", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tg.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

// msg is an update of product sku with the given row.
func msg(off int64, op event.Op, row map[string]any) target.Message {
	sku, _ := row["Sku__c"].(string)
	return target.Message{Topic: "shop.products", Partition: 0, Offset: off, ID: fmt.Sprintf("pos/%d", off), Op: op,
		Subject: "sku=" + sku, Table: "products", Route: "prices", Row: row}
}

func product(i int, price string) map[string]any {
	return map[string]any{"Sku__c": fmt.Sprintf("SKU-%05d", i), "Name": fmt.Sprintf("product %d", i), "Price__c": price}
}

func batchOf(msgs ...target.Message) *target.Batch {
	return &target.Batch{Messages: msgs, Offsets: target.Offsets{{Topic: "shop.products"}: int64(len(msgs))}}
}

// applyUntil calls Apply with the same batch until it returns nil or
// *RecordErrors, as the delivery layer does; it fails on a permanent error
// or after max attempts. It returns the record errors and the attempts.
func applyUntil(t *testing.T, tg *Target, b *target.Batch, max int) (*target.RecordErrors, int) {
	t.Helper()
	for i := 1; i <= max; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := tg.Apply(ctx, b)
		cancel()
		var re *target.RecordErrors
		switch {
		case err == nil:
			return nil, i
		case errors.As(err, &re):
			return re, i
		case target.IsPermanent(err):
			t.Fatalf("permanent error: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("batch not applied after %d attempts", max)
	return nil, 0
}

func rsaKey(t *testing.T) (*rsa.PrivateKey, string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	file := filepath.Join(t.TempDir(), "server.key")
	if err := os.WriteFile(file, p, 0o600); err != nil {
		t.Fatal(err)
	}
	return k, file
}

// byExt returns the double's Product2 records by Sku__c, failing on a
// duplicate.
func byExt(t *testing.T, d *sfdouble.Server) map[string]sfdouble.Record {
	t.Helper()
	recs, n := d.ByExternalID("Product2", "Sku__c")
	for k, c := range n {
		if c > 1 {
			t.Fatalf("%d records for Sku__c %s", c, k)
		}
	}
	return recs
}
