package lake

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

func lakePipeline(t *testing.T, targetYAML string) *config.Pipeline {
	t.Helper()
	src := `name: shop
state_dir: ./data
source:
  type: postgres
  dsn: "postgres://u@127.0.0.1:5432/shop"
  tables: ["public.orders"]
routes:
  - name: all
    to: [lake]
targets:
  lake:
` + targetYAML
	p, err := config.Parse("pipeline.yaml", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return p
}

func TestFactoryDecodesEveryKey(t *testing.T) {
	t.Setenv("LAKE_SECRET", "s3cr3t-value")
	p := lakePipeline(t, `    type: lake
    path: s3://bucket/cdc/shop
    s3: { endpoint: "http://127.0.0.1:7070", region: eu-west-1, access_key_id: AK, secret_access_key: "${LAKE_SECRET}", path_style: true }
    partition_by: [table, commit_date, commit_hour]
    compression: snappy
    max_file_rows: 500
    iceberg: { catalog_dsn: "postgres://u@127.0.0.1/cat", namespace: lake }
    delivery: { batch_linger: 2s }
`)
	tg, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "lake", Config: p.Targets["lake"]})
	if err != nil {
		t.Fatal(err)
	}
	s := tg.(*Target).set
	if s.bucket != "bucket" || s.prefix != "cdc/shop" || s.s3.Region != "eu-west-1" || !s.pathStyle || s.compression != "snappy" ||
		s.maxFileRows != 500 || strings.Join(s.partitions, ",") != "table,commit_date,commit_hour" || s.iceberg.Namespace != "lake" ||
		s.sourceType != config.SourcePostgres || s.sourceDSN != "postgres://u@127.0.0.1:5432/shop" {
		t.Fatalf("settings %+v", s)
	}
	if out := fmt.Sprintf("%v %+v %#v", s, s, s.s3); strings.Contains(out, "s3cr3t") {
		t.Fatalf("secret printed: %s", out)
	}
}

func TestFactoryErrorsNameFileLineAndKey(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"    type: lake\n", "targets.lake.path: is required"},
		{"    type: lake\n    path: /x\n    partition_by: [day]\n", `pipeline.yaml:14:19: targets.lake.partition_by: "day": want table, commit_date or commit_hour`},
		{"    type: lake\n    path: /x\n    compression: lz5\n", `pipeline.yaml:14:18: targets.lake.compression: "lz5"`},
		{"    type: lake\n    path: gs://b/x\n", `pipeline.yaml:13:11: targets.lake.path: "gs://b/x": unsupported scheme`},
		{"    type: lake\n    path: /x\n    iceberg: { namespace: n }\n", `targets.lake.iceberg.catalog_dsn: is required`},
		{"    type: lake\n    path: /x\n    pathh: /y\n", `targets.lake.pathh: unknown key`},
	} {
		p := lakePipeline(t, tc.yaml)
		_, err := target.New(context.Background(), target.Env{Pipeline: p, Name: "lake", Config: p.Targets["lake"]})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
