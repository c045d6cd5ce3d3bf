package main

import (
	"context"
	dbsql "database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	iceio "github.com/apache/iceberg-go/io"
	_ "github.com/apache/iceberg-go/io/gocloud/s3"
	"github.com/apache/iceberg-go/table"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/testharness"
)

// The data-lake target end to end (issue 9): PostgreSQL or MariaDB ->
// plume (real binary, real Apache Kafka) -> Parquet files on versitygw
// (S3) and an Iceberg table (SQL catalog in PostgreSQL). The plume process
// is SIGKILLed several times while changes stream and a column is added to
// the source table; afterwards DuckDB (an independent reader) reads exactly
// the files the commit manifests list and must see every change once, with
// the source's types, and the change log's last image of every key must
// equal the source table. The Iceberg table must hold the same rows.

const (
	lakeSnapshotRows = 300
	lakeKills        = 3
	lakeWriteTime    = 25 * time.Second
	lakeMaxChanges   = 4000
)

type lakeSource struct {
	kind   string // postgres or mysql
	exec   func(q string, args ...any) error
	table  string // as in source.tables
	dsn    string
	finalQ string // id, name, price::text, note of the source rows
	rows   func(q string) []string
}

func TestLakeFromPostgres(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE items (id bigint PRIMARY KEY, qty integer, price numeric(10,2), name text,
		raw bytea, doc jsonb, born date, seen timestamptz);
		ALTER TABLE items REPLICA IDENTITY FULL;
		INSERT INTO items SELECT g, g % 7, g * 1.25, 'item ' || g, '\x00ff'::bytea, '{"g": 1}', date '2024-02-29',
		       timestamptz '2024-01-02 03:04:05.123456+00' FROM generate_series(1, `+fmt.Sprint(lakeSnapshotRows)+`) g`)
	conn, err := dbsql.Open("pgx", pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &lakeSource{kind: "postgres", table: "public.items", dsn: pg.DSN(db),
		exec: func(q string, args ...any) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := conn.ExecContext(ctx, pgPlaceholders(q), args...)
			return err
		},
		finalQ: `SELECT id::text, name, price::text, coalesce(note, 'NULL') FROM items`,
	}
	src.rows = func(q string) []string { return sqlRows(t, conn, q) }
	runLakeE2E(t, src, map[string]string{"price": "DECIMAL(10,2)", "qty": "INTEGER", "id": "BIGINT", "raw": "BLOB",
		"born": "DATE", "seen": "TIMESTAMP WITH TIME ZONE", "doc": "VARCHAR", "note": "VARCHAR"})
}

func TestLakeFromMariaDB(t *testing.T) {
	my := testharness.MariaDB(t)
	db := my.NewDatabase(t)
	my.Exec(t, db, `CREATE TABLE items (id bigint PRIMARY KEY, qty int, price decimal(10,2), name varchar(100),
		raw blob, doc json, born date, seen timestamp(6) NULL, made datetime(6)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`)
	conn, err := dbsql.Open("mysql", my.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetMaxOpenConns(1)
	t.Cleanup(func() { conn.Close() })
	for g := 1; g <= lakeSnapshotRows; g++ {
		if _, err := conn.Exec(`INSERT INTO items VALUES (?, ?, ?, ?, x'00ff', '{"g": 1}', '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5')`,
			g, g%7, fmt.Sprintf("%.2f", float64(g)*1.25), fmt.Sprint("item ", g)); err != nil {
			t.Fatal(err)
		}
	}
	src := &lakeSource{kind: "mysql", table: db + ".items", dsn: my.DSN(db),
		exec: func(q string, args ...any) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := conn.ExecContext(ctx, strings.ReplaceAll(q, "::text", ""), args...)
			return err
		},
		finalQ: `SELECT CAST(id AS char), name, CAST(price AS char), coalesce(note, 'NULL') FROM items`,
	}
	src.rows = func(q string) []string { return sqlRows(t, conn, q) }
	runLakeE2E(t, src, map[string]string{"price": "DECIMAL(10,2)", "qty": "INTEGER", "id": "BIGINT", "raw": "BLOB",
		"born": "DATE", "seen": "TIMESTAMP WITH TIME ZONE", "made": "TIMESTAMP", "doc": "VARCHAR", "note": "VARCHAR"})
}

func pgPlaceholders(q string) string {
	n := 0
	var b strings.Builder
	for _, c := range q {
		if c == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

func sqlRows(t *testing.T, db *dbsql.DB, q string) []string {
	t.Helper()
	rs, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var a, b, c, d dbsql.NullString
		if err := rs.Scan(&a, &b, &c, &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.Join([]string{nz(a), nz(b), nz(c), nz(d)}, "|"))
	}
	sort.Strings(out)
	return out
}

func nz(s dbsql.NullString) string {
	if !s.Valid {
		return "NULL"
	}
	return s.String
}

func runLakeE2E(t *testing.T, src *lakeSource, wantTypes map[string]string) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	bin := testharness.BuildPlume(t)
	brokers := testharness.Kafka(t).Brokers()
	s3 := testharness.S3(t)
	bucket := s3.Bucket(t)
	pg := testharness.Postgres(t)
	catDB := pg.NewDatabase(t)
	name := testharness.UniqueName(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pipeline.yaml")
	cfg := fmt.Sprintf(`name: %s
state_dir: %s
log: { level: info }
source:
  type: %s
  dsn: %q
  tables: [%q]
  snapshot: initial
  heartbeat_interval: 1s
kafka:
  brokers: [%q]
  topic_prefix: %s
  batch_linger: 20ms
  topics: { partitions: 2 }
routes:
  - name: all
    to: [lake]
targets:
  lake:
    type: lake
    path: s3://%s/lake
    s3: { endpoint: %q, region: us-east-1, access_key_id: %q, secret_access_key: "${LAKE_S3_SECRET}" }
    iceberg: { catalog_dsn: %q }
    delivery: { batch_linger: 300ms, batch_max_events: 400 }
`, name, filepath.Join(dir, "state"), src.kind, src.dsn, src.table, brokers[0], name, bucket, s3.Endpoint, s3.AccessKey, pg.DSN(catDB))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LAKE_S3_SECRET", s3.SecretKey)
	start := func() *testharness.Proc {
		p := testharness.StartProcess(t, bin, "run", "-c", cfgPath)
		if !p.WaitOutput("pipeline running", 90*time.Second) {
			t.Fatalf("plume did not start:\n%s", tail(p.Output(), 30))
		}
		return p
	}
	proc := start()
	// Changes made before capture fixes its first position are folded into
	// the snapshot by design (the snapshot reads them): write once the lake
	// holds the snapshot, so that every statement is exactly one change.
	// (A kill before the first data commit is TestCaptureKilledBeforeFirstDataCommit.)
	root := filepath.Join(s3.Data, bucket, "lake")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, n := lakeCommitted(t, root); n >= lakeSnapshotRows {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the snapshot did not reach the lake:\n%s", tail(proc.Output(), 30))
		}
	}

	// The writer: single-row statements, so every successful statement is
	// exactly one change. Halfway a column is added.
	var changes atomic.Int64
	var byOp [3]atomic.Int64 // inserts, updates, deletes
	changes.Store(lakeSnapshotRows)
	live := map[int64]bool{}
	for i := int64(1); i <= lakeSnapshotRows; i++ {
		live[i] = true
	}
	next := int64(lakeSnapshotRows + 1)
	done := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		deadline := time.Now().Add(lakeWriteTime)
		altered := false
		var n int64
		for time.Now().Before(deadline) && n < lakeMaxChanges {
			if !altered && time.Until(deadline) < lakeWriteTime/2 {
				if err := src.exec(`ALTER TABLE items ADD COLUMN note varchar(50)`); err != nil {
					done <- err
					return
				}
				altered = true
			}
			note := any(nil)
			if altered {
				note = fmt.Sprint("note ", n)
			}
			id := rng.Int64N(next-1) + 1
			var err error
			switch k := rng.IntN(10); {
			case k < 4 || !live[id]:
				id = next
				next++
				if altered {
					err = src.exec(`INSERT INTO items (id, qty, price, name, born, note) VALUES (?, ?, ?, ?, '2025-01-01', ?)`, id, k, fmt.Sprintf("%d.%02d", id, k), fmt.Sprint("new ", id), note)
				} else {
					err = src.exec(`INSERT INTO items (id, qty, price, name, born) VALUES (?, ?, ?, ?, '2025-01-01')`, id, k, fmt.Sprintf("%d.%02d", id, k), fmt.Sprint("new ", id))
				}
				live[id] = true
				byOp[0].Add(1)
			case k < 8:
				byOp[1].Add(1)
				if altered {
					err = src.exec(`UPDATE items SET price = ?, name = ?, note = ? WHERE id = ?`, fmt.Sprintf("%d.%02d", n%1000, k), fmt.Sprint("upd ", n), note, id)
				} else {
					err = src.exec(`UPDATE items SET price = ?, name = ? WHERE id = ?`, fmt.Sprintf("%d.%02d", n%1000, k), fmt.Sprint("upd ", n), id)
				}
			default:
				err = src.exec(`DELETE FROM items WHERE id = ?`, id)
				delete(live, id)
				byOp[2].Add(1)
			}
			if err != nil {
				done <- err
				return
			}
			n++
			changes.Add(1)
			time.Sleep(8 * time.Millisecond)
		}
		done <- nil
	}()

	// SIGKILL plume while the changes stream.
	for k := 0; k < lakeKills; k++ {
		time.Sleep(time.Duration(4+k*2) * time.Second)
		if err := proc.Kill(); err != nil {
			t.Fatal(err)
		}
		proc = start()
	}
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	want := changes.Load()
	t.Logf("%d changes (snapshot included), %d kills", want, lakeKills)

	// Wait until the committed files hold every change (bounded).
	var files []string
	deadline := time.Now().Add(90 * time.Second)
	var got int64
	for {
		files, got = lakeCommitted(t, root)
		if got >= want || time.Now().After(deadline) {
			break
		}
		if proc.Exited() {
			t.Fatalf("plume exited:\n%s", tail(proc.Output(), 40))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got != want {
		latest := lakeLatestOffsets(t, root)
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err == nil {
			ends, err := kadm.NewClient(cl).ListEndOffsets(context.Background(), name+"."+src.table)
			t.Logf("topic end offsets: %v %v; lake offsets %v", ends, err, latest)
			cl.Close()
		}
		t.Logf("writer: %d inserts, %d updates, %d deletes; lake by op: %v", byOp[0].Load(), byOp[1].Load(), byOp[2].Load(),
			testharness.DuckDBQuery(t, "SELECT _op, count(*) AS n FROM "+lakeParquetList(files)+" GROUP BY _op ORDER BY _op"))
		t.Fatalf("manifests list %d rows, want %d changes\n%s", got, want, tail(proc.Output(), 30))
	}
	if err := proc.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}

	// The independent reader.
	list := lakeParquetList(files)
	counts := testharness.DuckDBQuery(t, `SELECT count(*) AS n, count(DISTINCT (_topic, _partition, _offset)) AS recs,
		count(DISTINCT _event_id) AS ids, count(note) AS notes FROM `+list)[0]
	if fmt.Sprint(counts["n"]) != fmt.Sprint(want) || fmt.Sprint(counts["recs"]) != fmt.Sprint(want) || fmt.Sprint(counts["ids"]) != fmt.Sprint(want) {
		t.Fatalf("DuckDB: %v; want %d rows, each Kafka record and event id once", counts, want)
	}
	if fmt.Sprint(counts["notes"]) == "0" {
		t.Errorf("no row carries the column added mid-stream")
	}
	types := map[string]string{}
	for _, r := range testharness.DuckDBQuery(t, "DESCRIBE SELECT * FROM "+list) {
		types[fmt.Sprint(r["column_name"])] = fmt.Sprint(r["column_type"])
	}
	for c, w := range wantTypes {
		if types[c] != w {
			t.Errorf("column %s: DuckDB type %q, want %q", c, types[c], w)
		}
	}
	// Files written before the column was added do not have it, and stay readable.
	var without int
	for _, f := range files {
		d := testharness.DuckDBQuery(t, "SELECT count(*) AS n FROM (DESCRIBE SELECT * FROM "+lakeParquetList([]string{f})+") WHERE column_name = 'note'")
		if fmt.Sprint(d[0]["n"]) == "0" {
			without++
		}
		if without > 0 {
			break
		}
	}
	if without == 0 {
		t.Errorf("expected early files without the added column")
	}
	// The change log's last image per key equals the source table.
	last := testharness.DuckDBQuery(t, `SELECT id::VARCHAR AS id, name, price::VARCHAR AS price, coalesce(note, 'NULL') AS note FROM (
		SELECT *, row_number() OVER (PARTITION BY id ORDER BY _offset DESC) AS rn FROM `+list+`) WHERE rn = 1 AND _op <> 'd'`)
	var lake []string
	for _, r := range last {
		lake = append(lake, fmt.Sprintf("%v|%v|%v|%v", r["id"], r["name"], r["price"], r["note"]))
	}
	sort.Strings(lake)
	source := src.rows(src.finalQ)
	if strings.Join(lake, "\n") != strings.Join(source, "\n") {
		t.Fatalf("last images (%d) differ from the source table (%d rows); first lake %q, first source %q", len(lake), len(source), first(lake), first(source))
	}
	// A typed value, exactly.
	v := testharness.DuckDBQuery(t, `SELECT hex(raw) AS raw, born::VARCHAR AS born, epoch_us(seen) AS seen FROM `+list+` WHERE id = 1 AND _op = 'r'`)
	if len(v) != 1 || v[0]["raw"] != "00FF" || v[0]["born"] != "2024-02-29" || fmt.Sprint(v[0]["seen"]) != "1704164645123456" {
		t.Errorf("snapshot row 1: %v", v)
	}

	// Iceberg: the same rows, each file appended once.
	checkLakeIceberg(t, pg.DSN(catDB), s3, src.table, want, len(files))
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// lakeCommitted reads the manifests of a lake (a directory) and returns
// the files they list and their total rows.
func lakeCommitted(t *testing.T, root string) ([]string, int64) {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(root, "_plume", "commits", "*.json"))
	var files []string
	var rows int64
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		var mf struct {
			Files []struct {
				Path string `json:"path"`
				Rows int64  `json:"rows"`
			} `json:"files"`
		}
		if err := json.Unmarshal(b, &mf); err != nil {
			t.Fatalf("manifest %s: %v", m, err)
		}
		for _, f := range mf.Files {
			files = append(files, filepath.Join(root, f.Path))
			rows += f.Rows
		}
	}
	return files, rows
}

func lakeLatestOffsets(t *testing.T, root string) string {
	ms, _ := filepath.Glob(filepath.Join(root, "_plume", "commits", "*.json"))
	if len(ms) == 0 {
		return "none"
	}
	sort.Strings(ms)
	b, _ := os.ReadFile(ms[len(ms)-1])
	var m struct {
		Seq     int64                       `json:"seq"`
		Offsets map[string]map[string]int64 `json:"offsets"`
	}
	json.Unmarshal(b, &m)
	return fmt.Sprint(m.Seq, m.Offsets)
}

func lakeParquetList(files []string) string {
	q := make([]string, len(files))
	for i, f := range files {
		q[i] = "'" + strings.ReplaceAll(f, "'", "''") + "'"
	}
	return "read_parquet([" + strings.Join(q, ",") + "], union_by_name = true)"
}

func checkLakeIceberg(t *testing.T, catalogDSN string, s3 *testharness.S3Server, srcTable string, want int64, nfiles int) {
	t.Helper()
	ctx := context.Background()
	db, err := dbsql.Open("pgx", catalogDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = stdlib.GetDefaultDriver()
	cat, err := sqlcat.NewCatalog("plume", db, sqlcat.Postgres, iceberg.Properties{
		iceio.S3EndpointURL: s3.Endpoint, iceio.S3Region: s3.Region, iceio.S3AccessKeyID: s3.AccessKey,
		iceio.S3SecretAccessKey: s3.SecretKey, iceio.S3ForceVirtualAddressing: "false"})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	ident := table.Identifier{"plume", strings.ReplaceAll(srcTable, ".", "_")}
	tbl, err := cat.LoadTable(ctx, ident)
	if err != nil {
		t.Fatalf("load Iceberg table %v: %v (tables: %v)", ident, err, listTables(ctx, cat))
	}
	var files int
	for _, s := range tbl.Metadata().Snapshots() {
		if v, ok := s.Summary.Properties["added-data-files"]; ok {
			var n int
			fmt.Sscan(v, &n)
			files += n
		}
	}
	if files != nfiles {
		t.Errorf("Iceberg snapshots added %d files, the manifests list %d", files, nfiles)
	}
	at, err := tbl.Scan().ToArrowTable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer at.Release()
	if at.NumRows() != want {
		t.Fatalf("Iceberg scan: %d rows, want %d", at.NumRows(), want)
	}
	if _, ok := tbl.Schema().FindFieldByName("note"); !ok {
		t.Errorf("Iceberg schema did not evolve: %v", tbl.Schema())
	}
}

func listTables(ctx context.Context, cat *sqlcat.Catalog) []string {
	var out []string
	for id, err := range cat.ListTables(ctx, table.Identifier{"plume"}) {
		if err != nil {
			break
		}
		out = append(out, strings.Join(id, "."))
	}
	return out
}

var _ = catalog.ErrNoSuchTable
