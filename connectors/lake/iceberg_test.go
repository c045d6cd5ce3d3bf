package lake

import (
	"context"
	dbsql "database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/iceberg-go"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	iceio "github.com/apache/iceberg-go/io"
	_ "github.com/apache/iceberg-go/io/gocloud/s3"
	"github.com/apache/iceberg-go/table"
	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/testharness"
)

// The tests here read what Plume's own Iceberg writer wrote with
// iceberg-go (an independent implementation) through iceberg-go's own SQL
// catalog: its loader, its Avro readers and its scan.

// iceCatalog opens iceberg-go's SQL catalog on the PostgreSQL database of
// dsn (with S3 access to srv, if set).
func iceCatalog(t *testing.T, dsn string, srv *testharness.S3Server) *sqlcat.Catalog {
	t.Helper()
	pc, err := pgxConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*pc)
	t.Cleanup(func() { db.Close() })
	return iceCatalogOn(t, db, sqlcat.Postgres, srv)
}

func iceCatalogOn(t *testing.T, db *dbsql.DB, dialect sqlcat.SupportedDialect, srv *testharness.S3Server) *sqlcat.Catalog {
	t.Helper()
	props := iceberg.Properties{}
	if srv != nil {
		props = iceberg.Properties{iceio.S3EndpointURL: srv.Endpoint, iceio.S3Region: srv.Region, iceio.S3AccessKeyID: srv.AccessKey,
			iceio.S3SecretAccessKey: srv.SecretKey, iceio.S3ForceVirtualAddressing: "false"}
	}
	cat, err := sqlcat.NewCatalog("plume", db, dialect, props)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	return cat
}

func iceLoad(t *testing.T, cat *sqlcat.Catalog, name string) *table.Table {
	t.Helper()
	tbl, err := cat.LoadTable(context.Background(), table.Identifier{"plume", name})
	if err != nil {
		t.Fatalf("iceberg-go LoadTable plume.%s: %v", name, err)
	}
	return tbl
}

// iceLastSeq is the commit-seq of the newest snapshot Plume wrote, walking
// back from the current one.
func iceLastSeq(tbl *table.Table) (int64, bool) {
	snap := tbl.CurrentSnapshot()
	for snap != nil {
		if snap.Summary != nil {
			if v, ok := snap.Summary.Properties[summarySeq]; ok {
				var n int64
				_, err := fmt.Sscan(v, &n)
				return n, err == nil
			}
		}
		if snap.ParentSnapshotID == nil {
			break
		}
		snap = tbl.SnapshotByID(*snap.ParentSnapshotID)
	}
	return 0, false
}

// iceSumAdded sums added-data-files over the snapshots.
func iceSumAdded(tbl *table.Table) int {
	var files int
	for _, s := range tbl.Metadata().Snapshots() {
		var n int
		fmt.Sscan(s.Summary.Properties["added-data-files"], &n)
		files += n
	}
	return files
}

func iceScan(t *testing.T, tbl *table.Table) (rows int64, nonNull map[string]int64) {
	t.Helper()
	at, err := tbl.Scan().ToArrowTable(context.Background())
	if err != nil {
		t.Fatalf("iceberg-go scan: %v", err)
	}
	defer at.Release()
	nonNull = map[string]int64{}
	for i, f := range at.Schema().Fields() {
		nonNull[f.Name] = at.NumRows() - int64(at.Column(i).NullN())
	}
	return at.NumRows(), nonNull
}

// A table Plume creates loads in iceberg-go with the manifest's columns,
// metadata columns first, field ids 1..n, the Iceberg types of the lake
// types, unpartitioned, with a name mapping; on a PostgreSQL and on a
// MariaDB catalog.
func TestIcebergTableLoadsInIcebergGo(t *testing.T) {
	for _, catalog := range []string{"postgres", "mariadb"} {
		t.Run(catalog, func(t *testing.T) {
			pg := testharness.Postgres(t)
			src := pg.NewDatabase(t)
			pg.Exec(t, src, `CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(10,2), seen timestamptz,
				born date, ok boolean, ratio real, local_ts timestamp, raw bytea, doc jsonb, qty integer)`)
			var catDSN string
			var ice func() *sqlcat.Catalog
			var catQuery func(q string) string
			if catalog == "postgres" {
				db := pg.NewDatabase(t)
				catDSN = pg.DSN(db)
				ice = func() *sqlcat.Catalog { return iceCatalog(t, catDSN, nil) }
				catQuery = func(q string) string { return pg.QueryValue(t, db, q) }
			} else {
				my := testharness.MariaDB(t)
				db := my.NewDatabase(t)
				catDSN = fmt.Sprintf("mysql://%s@%s/%s", my.User, my.Addr(), db)
				ice = func() *sqlcat.Catalog {
					sdb, err := dbsql.Open("mysql", my.DSN(db))
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { sdb.Close() })
					return iceCatalogOn(t, sdb, sqlcat.MySQL, nil)
				}
				catQuery = func(q string) string { return my.QueryValue(t, db, q) }
			}
			root := t.TempDir()
			s := localSettings(t, root, pg.DSN(src), func(c *Config) {
				c.Iceberg = &IcebergConfig{CatalogDSN: config.DSN(catDSN)}
			})
			tg, _ := openLake(t, s)
			r := map[string]any{"id": int64(1), "name": "a", "price": "1.25", "seen": "2024-01-02T01:04:05.123456Z", "born": "2024-02-29",
				"ok": true, "ratio": 1.5, "local_ts": "2024-01-02T03:04:05.5", "raw": "AP8Q", "doc": `{"a":1}`, "qty": int64(3)}
			if err := tg.Apply(context.Background(), batch(0, r)); err != nil {
				t.Fatal(err)
			}
			// The catalog rows are those of the JDBC layout.
			if v := catQuery(`SELECT iceberg_type FROM iceberg_tables WHERE catalog_name = 'plume' AND table_namespace = 'plume' AND table_name = 'public_items'`); v != "TABLE" {
				t.Errorf("iceberg_type = %q", v)
			}
			if v := catQuery(`SELECT property_value FROM iceberg_namespace_properties WHERE catalog_name = 'plume' AND namespace = 'plume' AND property_key = 'exists'`); v != "true" {
				t.Errorf("namespace property exists = %q", v)
			}

			tbl := iceLoad(t, ice(), "public_items")
			if v := tbl.Metadata().Version(); v != 2 {
				t.Errorf("format version %d", v)
			}
			if loc, want := tbl.Location(), "file://"+filepath.ToSlash(filepath.Join(root, "_iceberg", "plume", "public_items")); loc != want {
				t.Errorf("location %s, want %s", loc, want)
			}
			if !tbl.Spec().IsUnpartitioned() {
				t.Errorf("partition spec %v", tbl.Spec())
			}
			want := []string{
				"1 _op string", "2 _commit_time timestamptz", "3 _position string", "4 _txid string", "5 _event_id string",
				"6 _topic string", "7 _partition int", "8 _offset long",
				"9 id long", "10 name string", "11 price decimal(10, 2)", "12 seen timestamptz", "13 born date", "14 ok boolean",
				"15 ratio float", "16 local_ts timestamp", "17 raw binary", "18 doc string", "19 qty int",
			}
			var got []string
			for _, f := range tbl.Schema().Fields() {
				if f.Required {
					t.Errorf("field %s is required; all are optional", f.Name)
				}
				got = append(got, fmt.Sprintf("%d %s %s", f.ID, f.Name, f.Type))
			}
			if strings.Join(got, "; ") != strings.Join(want, "; ") {
				t.Errorf("schema\n got %v\nwant %v", got, want)
			}
			nm := tbl.Metadata().NameMapping()
			if nm == nil || len(nm) != len(want) {
				t.Fatalf("name mapping %v", nm)
			}
			if nm[8].FieldID == nil || *nm[8].FieldID != 9 || nm[8].Names[0] != "id" {
				t.Errorf("name mapping entry %v", nm[8])
			}
			if tbl.Metadata().LastColumnID() != 19 {
				t.Errorf("last-column-id %d", tbl.Metadata().LastColumnID())
			}
			snap := tbl.CurrentSnapshot()
			if snap == nil || snap.Summary.Operation != table.OpAppend || snap.Summary.Properties["added-records"] != "1" ||
				snap.Summary.Properties["total-records"] != "1" || snap.Summary.Properties["total-data-files"] != "1" {
				t.Fatalf("snapshot %+v", snap)
			}
			var mainRef int64
			for name, ref := range tbl.Metadata().Refs() {
				if name == "main" {
					mainRef = ref.SnapshotID
				}
			}
			if mainRef != snap.SnapshotID {
				t.Errorf("refs.main = %d, want %d", mainRef, snap.SnapshotID)
			}
			n, nonNull := iceScan(t, tbl)
			if n != 1 || nonNull["qty"] != 1 || nonNull["doc"] != 1 || nonNull["_op"] != 1 {
				t.Errorf("scan: %d rows, non-null %v", n, nonNull)
			}
		})
	}
}

// icebergItemsLake is a local lake with Iceberg on, for a PostgreSQL
// source table public.items (id, name) and a catalog database of its own.
func icebergItemsLake(t *testing.T) (pg *testharness.PG, src, catDB, root string, s *settings) {
	pg = testharness.Postgres(t)
	src = pg.NewDatabase(t)
	pg.Exec(t, src, `CREATE TABLE public.items (id bigint PRIMARY KEY, name text)`)
	catDB = pg.NewDatabase(t)
	root = t.TempDir()
	s = localSettings(t, root, pg.DSN(src), func(c *Config) {
		c.Iceberg = &IcebergConfig{CatalogDSN: config.DSN(pg.DSN(catDB))}
	})
	return pg, src, catDB, root, s
}

// Two columns added at the source, in two commits: the Iceberg schema
// evolves twice with fresh field ids, and iceberg-go reads every row, with
// nulls where older files lack a column.
func TestIcebergTwoSchemaEvolutions(t *testing.T) {
	pg, src, catDB, _, s := icebergItemsLake(t)
	ctx := context.Background()
	tg, _ := openLake(t, s)
	if err := tg.Apply(ctx, batch(0, map[string]any{"id": int64(1), "name": "a"}, map[string]any{"id": int64(2), "name": "b"})); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, src, `ALTER TABLE public.items ADD COLUMN qty integer`)
	if err := tg.Apply(ctx, batch(2, map[string]any{"id": int64(3), "name": "c", "qty": int64(5)})); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, src, `ALTER TABLE public.items ADD COLUMN note text`)
	// A new Target, as after a restart: the table state comes from the
	// manifest, the Iceberg schema from the catalog.
	tg2, _ := openLake(t, s)
	if err := tg2.Apply(ctx, batch(3, map[string]any{"id": int64(4), "name": "d", "qty": int64(6), "note": "x"},
		map[string]any{"id": int64(5), "name": "e", "qty": int64(7), "note": "y"})); err != nil {
		t.Fatal(err)
	}
	tbl := iceLoad(t, iceCatalog(t, pg.DSN(catDB), nil), "public_items")
	if n := len(tbl.Schemas()); n != 3 {
		t.Errorf("want 3 schemas, got %d", n)
	}
	for name, id := range map[string]int{"id": 9, "name": 10, "qty": 11, "note": 12} {
		if f, ok := tbl.Schema().FindFieldByName(name); !ok || f.ID != id {
			t.Errorf("field %s: %v %v, want id %d", name, f, ok, id)
		}
	}
	if nm := tbl.Metadata().NameMapping(); len(nm) != 12 {
		t.Errorf("name mapping has %d fields, want 12", len(nm))
	}
	if seq, ok := iceLastSeq(tbl); !ok || seq != 3 {
		t.Errorf("commit-seq %d %v", seq, ok)
	}
	if got := tbl.CurrentSnapshot().Summary.Properties["total-records"]; got != "5" {
		t.Errorf("total-records %s", got)
	}
	n, nonNull := iceScan(t, tbl)
	if n != 5 || nonNull["id"] != 5 || nonNull["qty"] != 3 || nonNull["note"] != 2 {
		t.Fatalf("scan: %d rows, non-null %v", n, nonNull)
	}
}

// Someone else commits to the table between Plume's read and its catalog
// swap: the swap fails, Plume reads again and appends on top of that
// commit, keeping its files. Once by iceberg-go (a foreign append), once
// by a second Plume that appends the same lake commit (the retry must see
// it there and not append it again).
func TestIcebergConcurrentCommit(t *testing.T) {
	pg, _, catDB, root, s := icebergItemsLake(t)
	ctx := context.Background()
	row := func(id int64) map[string]any { return map[string]any{"id": id, "name": fmt.Sprint("n", id)} }
	tg, _ := openLake(t, s)
	if err := tg.Apply(ctx, batch(0, row(1), row(2))); err != nil {
		t.Fatal(err)
	}
	// A foreign file with 2 rows (a copy of commit 1's file).
	files := committedFiles(t, root)
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(root, "foreign", "x.parquet")
	if err := os.MkdirAll(filepath.Dir(foreign), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(foreign, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cat := iceCatalog(t, pg.DSN(catDB), nil)

	// 1. iceberg-go appends between Plume's read and swap.
	swaps := 0
	tg.ice.hookBeforeSwap = func(string) error {
		swaps++
		if swaps == 1 {
			tx := iceLoad(t, cat, "public_items").NewTransaction()
			if err := tx.AddFiles(ctx, []string{"file://" + filepath.ToSlash(foreign)}, iceberg.Properties{"writer": "other"}, false); err != nil {
				return fmt.Errorf("foreign AddFiles: %w", err)
			}
			if _, err := tx.Commit(ctx); err != nil {
				return fmt.Errorf("foreign commit: %w", err)
			}
		}
		return nil
	}
	if err := tg.Apply(ctx, batch(2, row(3))); err != nil {
		t.Fatal(err)
	}
	if swaps != 2 {
		t.Errorf("want a swap that failed and one that worked, got %d swap attempts", swaps)
	}
	tbl := iceLoad(t, cat, "public_items")
	if n, _ := iceScan(t, tbl); n != 5 {
		t.Fatalf("scan after the foreign commit: %d rows, want 5 (3 from Plume, 2 foreign)", n)
	}
	snaps := tbl.Metadata().Snapshots()
	if len(snaps) != 3 || snaps[1].Summary.Properties["writer"] != "other" || snaps[2].Summary.Properties[summarySeq] != "2" ||
		snaps[2].ParentSnapshotID == nil || *snaps[2].ParentSnapshotID != snaps[1].SnapshotID {
		t.Fatalf("snapshots %+v", snaps)
	}
	if got := tbl.CurrentSnapshot().Summary.Properties["total-records"]; got != "5" {
		t.Errorf("total-records %s, want 5", got)
	}

	// 2. A second Plume (a zombie) appends the same lake commit between
	// the first one's read and swap: the retry finds it there.
	swaps = 0
	tg.ice.hookBeforeSwap = func(string) error {
		swaps++
		if swaps == 1 {
			other := newTarget(s, "pl", "lake", quiet)
			if _, err := other.Open(ctx); err != nil { // catches up commit 3
				return err
			}
			other.Close()
		}
		return nil
	}
	if err := tg.Apply(ctx, batch(3, row(4))); err != nil {
		t.Fatal(err)
	}
	if swaps != 1 {
		t.Errorf("want one swap attempt (the retry skips the commit), got %d", swaps)
	}
	tbl = iceLoad(t, cat, "public_items")
	if n, _ := iceScan(t, tbl); n != 6 {
		t.Fatalf("scan after the zombie: %d rows, want 6", n)
	}
	if n := len(tbl.Metadata().Snapshots()); n != 4 {
		t.Errorf("want 4 snapshots, got %d", n)
	}
	if seq, _ := iceLastSeq(tbl); seq != 3 {
		t.Errorf("commit-seq %d", seq)
	}

	// 3. Someone commits before every swap: the append gives up after
	// maxCommitAttempts with an error (retried by the delivery layer).
	tg.ice.hookBeforeSwap = func(string) error {
		tx := iceLoad(t, cat, "public_items").NewTransaction()
		if err := tx.SetProperties(iceberg.Properties{"touched": fmt.Sprint(swaps)}); err != nil {
			return err
		}
		swaps++
		_, err := tx.Commit(ctx)
		return err
	}
	swaps = 0
	if err := tg.Apply(ctx, batch(4, row(5))); err == nil || !strings.Contains(err.Error(), "concurrent") {
		t.Fatalf("want a concurrent-commit error, got %v", err)
	}
	if swaps != maxCommitAttempts {
		t.Errorf("%d attempts, want %d", swaps, maxCommitAttempts)
	}
	tg.ice.hookBeforeSwap = nil
	if err := tg.Apply(ctx, batch(4, row(5))); err != nil { // the layer's retry
		t.Fatal(err)
	}
	tbl = iceLoad(t, cat, "public_items")
	if n, _ := iceScan(t, tbl); n != 7 {
		t.Fatalf("final scan: %d rows, want 7", n)
	}
	if got := iceSumAdded(tbl); got != 5 {
		t.Errorf("snapshots added %d files, want 5", got)
	}
}
