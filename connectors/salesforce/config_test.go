package salesforce

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

func osReadFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func pipelineWith(t *testing.T, targetYAML string) *config.Pipeline {
	t.Helper()
	src := `name: shop-sync
state_dir: ./data
source:
  type: mysql
  dsn: "root@tcp(127.0.0.1:3306)/"
  tables: ["shop.products"]
routes:
  - name: prices
    when: 'table == "products"'
    to: [crm]
    map: '{"Sku__c": row.sku, "Price__c": row.price}'
targets:
  crm:
` + targetYAML
	p, err := config.Parse("pipeline.yaml", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return p
}

// TestConfigDefaultsAndErrors: defaults, and errors that name the file
// position and the key.
func TestConfigDefaultsAndErrors(t *testing.T) {
	p := pipelineWith(t, `    type: salesforce
    object: Product2
    external_id: Sku__c
    auth:
      client_credentials: { client_id: abc, client_secret: "${SF_SECRET:-xyz-secret}" }
`)
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "crm", Config: p.Targets["crm"]})
	if err != nil {
		t.Fatal(err)
	}
	s := tg.(*Target).set
	if s.loginURL != DefaultLoginURL || s.apiVersion != DefaultAPIVersion || s.bulkThreshold != DefaultBulkThreshold ||
		s.apiBudget != DefaultAPIBudget || s.delete != DeleteDelete || s.concurrency != DefaultConcurrency || s.clientSecret.Reveal() != "xyz-secret" {
		t.Fatalf("settings %+v", s)
	}
	if d := tg.(target.DeliveryDefaulter).DeliveryDefaults(); d.BatchMaxEvents != DefaultBatchMaxEvents || d.BatchMaxBytes != DefaultBatchMaxBytes ||
		d.BatchLinger != DefaultBatchLinger || !d.Coalesce {
		t.Fatalf("delivery defaults %+v", d)
	}

	cases := []struct{ yaml, want string }{
		{"    type: salesforce\n    external_id: Sku__c\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			"pipeline.yaml:13:3: targets.crm.object: is required"},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    api_version: \"45.0\"\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			`pipeline.yaml:17:18: targets.crm.api_version: 45.0 is too old`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    delete: soft\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			`pipeline.yaml:17:13: targets.crm.delete: "soft": want delete, upsert or ignore`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    delete: upsert\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			`targets.crm.delete_fields: is required with delete: upsert`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    api_budget: 1.5\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			`targets.crm.api_budget: 1.5 is out of range`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    auth: { jwt: { client_id: a, username: u, private_key_file: /nonexistent.key } }\n",
			`targets.crm.auth.jwt.private_key_file: open /nonexistent.key`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    auth: { jwt: { client_id: a, username: u, private_key: \"not a key\" } }\n",
			`targets.crm.auth.jwt.private_key: no PEM block found`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n",
			`targets.crm.auth: is required`},
		{"    type: salesforce\n    object: Product2\n    external_id: Sku__c\n    bulk_treshold: 5\n    auth: { client_credentials: { client_id: a, client_secret: b } }\n",
			`targets.crm.bulk_treshold: unknown key`},
	}
	for _, c := range cases {
		p := pipelineWith(t, c.yaml)
		_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "crm", Config: p.Targets["crm"]})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\nerror %v\nwant %s", c.yaml, err, c.want)
		}
	}
}
