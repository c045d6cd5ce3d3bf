package lake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func s3Settings(t *testing.T, srv *testharness.S3Server, bucket, srcDSN string, mod func(*Config)) *settings {
	return localSettings(t, "", srcDSN, func(c *Config) {
		c.Path = "s3://" + bucket + "/lake"
		c.S3 = S3Config{Endpoint: srv.Endpoint, Region: srv.Region, AccessKeyID: srv.AccessKey, SecretAccessKey: config.Secret(srv.SecretKey)}
		if mod != nil {
			mod(c)
		}
	})
}

func TestS3CommitsOnVersitygw(t *testing.T) {
	dsn := sourceTable(t)
	srv := testharness.S3(t)
	bucket := srv.Bucket(t)
	s := s3Settings(t, srv, bucket, dsn, nil)
	tg, _ := openLake(t, s)
	ctx := context.Background()
	for i := int64(0); i < 3; i++ {
		if err := tg.Apply(ctx, batch(i*2, item(i*2), item(i*2+1))); err != nil {
			t.Fatal(err)
		}
	}
	// Fencing works against the real server (If-None-Match on PUT).
	other, _ := openLake(t, s)
	other.seq, other.offsets = 1, target.Offsets{tpItems: 2} // a zombie that missed commits 2 and 3
	if err := other.Apply(ctx, batch(2, item(2), item(3), item(4))); err == nil || !strings.Contains(err.Error(), "another writer") {
		t.Fatalf("want a fencing error from put-if-absent, got %v", err)
	}
	_, offs := openLake(t, s)
	if got := offs[tpItems]; got != 6 {
		t.Fatalf("offsets after reopen: %v", offs)
	}
	// versitygw's posix backend stores objects as files: read them with DuckDB.
	root := filepath.Join(srv.Data, bucket, "lake")
	files := committedFiles(t, root)
	if len(files) != 3 {
		t.Fatalf("committed files %v", files)
	}
	rows := testharness.DuckDBQuery(t, "SELECT count(*) AS n, count(DISTINCT _offset) AS d, sum(price)::VARCHAR AS s FROM "+parquetList(files))
	if fmt.Sprint(rows[0]["n"]) != "6" || fmt.Sprint(rows[0]["d"]) != "6" || fmt.Sprint(rows[0]["s"]) != "75.00" {
		t.Fatalf("rows %v", rows)
	}
	// Bad credentials are permanent.
	bad := s3Settings(t, srv, bucket, dsn, func(c *Config) { c.S3.SecretAccessKey = "wrong" })
	if _, err := newTarget(bad, "pl", "lake", quiet).Open(ctx); err == nil || !isPermanent(err) {
		t.Fatalf("want a permanent error for bad credentials, got %v", err)
	} else if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("error shows the secret: %v", err)
	}
}

func TestIcebergAppendsExactlyOnce(t *testing.T) {
	for _, where := range []string{"local", "s3"} {
		t.Run(where, func(t *testing.T) {
			pg := testharness.Postgres(t)
			src := pg.NewDatabase(t)
			pg.Exec(t, src, `CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(10,2), seen timestamptz)`)
			catDB := pg.NewDatabase(t)
			ice := func(c *Config) { c.Iceberg = &IcebergConfig{CatalogDSN: config.DSN(pg.DSN(catDB))} }
			var s *settings
			var root string
			var srv *testharness.S3Server
			if where == "local" {
				root = t.TempDir()
				s = localSettings(t, root, pg.DSN(src), ice)
			} else {
				srv = testharness.S3(t)
				bucket := srv.Bucket(t)
				root = filepath.Join(srv.Data, bucket, "lake")
				s = s3Settings(t, srv, bucket, pg.DSN(src), ice)
			}
			ctx := context.Background()
			row := func(id int64) map[string]any {
				return map[string]any{"id": id, "name": fmt.Sprint("n", id), "price": "1.25", "seen": "2024-01-02T01:04:05.123456Z"}
			}
			tg, _ := openLake(t, s)
			if err := tg.Apply(ctx, batch(0, row(1), row(2))); err != nil {
				t.Fatal(err)
			}
			// Crash after the lake commit, before Iceberg: the retry and the
			// next Open catch up; nothing is appended twice.
			crash := errors.New("crash")
			tg.hookAfterManifest = func() error { return crash }
			b2 := batch(2, row(3))
			if err := tg.Apply(ctx, b2); !errors.Is(err, crash) {
				t.Fatal(err)
			}
			tg.hookAfterManifest = nil
			tg2, _ := openLake(t, s)                   // catches up commit 2
			if err := tg2.Apply(ctx, b2); err != nil { // the layer's replay: a no-op
				t.Fatal(err)
			}
			// Crash after the Iceberg metadata files are written, before the
			// catalog swap: the next attempt writes new ones; the orphans are
			// never referenced.
			pg.Exec(t, src, `ALTER TABLE public.items ADD COLUMN qty integer`)
			r := row(4)
			r["qty"] = int64(7)
			b3 := batch(3, r)
			tg2.ice.hookBeforeSwap = func(string) error { return crash }
			if err := tg2.Apply(ctx, b3); !errors.Is(err, crash) {
				t.Fatal(err)
			}
			tg2.ice.hookBeforeSwap = nil
			if err := tg2.Apply(ctx, b3); err != nil { // the layer's retry
				t.Fatal(err)
			}
			// A graceful stop (ctx cancelled) right after the lake commit:
			// Apply still finishes the Iceberg append before returning.
			stopCtx, stop := context.WithCancel(ctx)
			tg2.hookAfterManifest = func() error { stop(); return nil }
			if err := tg2.Apply(stopCtx, batch(4, row(5))); err != nil {
				t.Fatalf("apply during a stop: %v", err)
			}
			tg2.hookAfterManifest = nil

			// Read with iceberg-go, an independent implementation, through
			// its own SQL catalog on the same database.
			tbl := iceLoad(t, iceCatalog(t, pg.DSN(catDB), srv), "public_items")
			if seq, ok := iceLastSeq(tbl); !ok || seq != 4 {
				t.Fatalf("last commit-seq in Iceberg = %d %v, want 4", seq, ok)
			}
			if off := tbl.CurrentSnapshot().Summary.Properties[summaryOffsets]; off != `{"t.items":{"0":5}}` {
				t.Errorf("offsets in the snapshot summary = %s", off)
			}
			if n := len(tbl.Metadata().Snapshots()); n != 4 {
				t.Errorf("want 4 snapshots (one per commit), got %d", n)
			}
			if _, ok := tbl.Schema().FindFieldByName("qty"); !ok {
				t.Errorf("the Iceberg schema should have evolved: %v", tbl.Schema())
			}
			if got := iceSumAdded(tbl); got != 4 {
				t.Errorf("snapshots added %d files, want 4", got)
			}
			// Read through Iceberg (iceberg-go's scan: the table's own view).
			at, err := tbl.Scan().ToArrowTable(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer at.Release()
			if at.NumRows() != 5 {
				t.Fatalf("Iceberg scan: %d rows, want 5", at.NumRows())
			}
			// And the same files, by DuckDB, from the manifests.
			rows := testharness.DuckDBQuery(t, "SELECT count(*) AS n, count(qty) AS q FROM "+parquetList(committedFiles(t, root)))
			if fmt.Sprint(rows[0]["n"]) != "5" || fmt.Sprint(rows[0]["q"]) != "1" {
				t.Fatalf("rows %v", rows)
			}
			if where == "local" {
				if _, err := os.Stat(filepath.Join(root, "_iceberg", "plume", "public_items", "metadata")); err != nil {
					t.Errorf("Iceberg metadata under the lake: %v", err)
				}
			}
		})
	}
}
