package sql

import (
	"context"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

func pipelineWith(t *testing.T, targetYAML string) *config.Pipeline {
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
	p, err := config.Parse("pipeline.yaml", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return p
}

// TestRegisteredFactory builds the target through target.New from a
// pipeline file, as the pipeline does.
func TestRegisteredFactory(t *testing.T) {
	db := newPGDB(t)
	db.exec(t, productsDDL(db))
	p := pipelineWith(t, `    type: sql
    dsn: "`+db.dsn+`"
    table: erp.products
    key: [sku]
    columns: { title: name }
    batch_size: 50
`)
	tgt, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	s := tgt.(*Target)
	if s.set.batchSize != 50 || s.set.offsets.name != DefaultOffsetsTable || s.pipeline != "shop-sync" || s.set.rename["title"] != "name" {
		t.Fatalf("settings: %+v pipeline %q", s.set, s.pipeline)
	}
	if _, err := tgt.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, (&msgs{}).ins(map[string]any{"sku": "a", "title": "A"}).batch())
	wantRows(t, products(t, db), "a|A|NULL|NULL")
	if got := db.rows(t, "SELECT pipeline FROM plume_offsets"); got[0][0] != "shop-sync" {
		t.Fatalf("offsets pipeline: %v", got)
	}
}

func TestFactoryRejectsUnknownKey(t *testing.T) {
	p := pipelineWith(t, `    type: sql
    dsn: "postgres://u:pw@h/db"
    tabel: erp.products
    key: [sku]
`)
	_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "erp", Config: p.Targets["erp"]})
	if err == nil || !strings.Contains(err.Error(), "tabel") {
		t.Fatalf("want an error about the unknown key, got %v", err)
	}
}
