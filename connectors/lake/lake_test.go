package lake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sourceTable creates a PostgreSQL table with the types the lake maps and
// returns a DSN of its database.
func sourceTable(t *testing.T) string {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE public.items (
		id bigint PRIMARY KEY, qty integer, price numeric(10,2), big numeric(38,10), wide numeric,
		name text, raw bytea, doc jsonb, born date, seen timestamptz, local_ts timestamp(3),
		ratio real, score double precision, ok boolean, tags text[])`)
	return pg.DSN(db)
}

func localSettings(t *testing.T, dir, srcDSN string, mod func(*Config)) *settings {
	cfg := DefaultConfig()
	cfg.Path = dir
	if mod != nil {
		mod(&cfg)
	}
	var errs []string
	s := cfg.validate("", config.SourcePostgres, srcDSN, func(k, f string, a ...any) { errs = append(errs, k+": "+fmt.Sprintf(f, a...)) })
	if len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	return s
}

func openLake(t *testing.T, s *settings) (*Target, target.Offsets) {
	t.Helper()
	tg := newTarget(s, "pl", "lake", quiet)
	offs, err := tg.Open(context.Background())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg, offs
}

var commit0 = time.Date(2026, 11, 24, 10, 30, 0, 123456000, time.UTC)

// batch builds a batch of messages for public.items on topic "t.items"
// partition 0 with consecutive offsets from first.
func batch(first int64, rows ...map[string]any) *target.Batch {
	b := &target.Batch{Offsets: target.Offsets{}}
	for i, r := range rows {
		off := first + int64(i)
		op := event.OpCreate
		if o, ok := r["__op"]; ok {
			op = o.(event.Op)
			delete(r, "__op")
		}
		b.Messages = append(b.Messages, target.Message{
			Topic: "t.items", Partition: 0, Offset: off, ID: fmt.Sprintf("lsn:0/%X/0", off),
			Op: op, Subject: fmt.Sprintf("id=%v", r["id"]), Database: "shop", Schema: "public", Table: "items",
			Time: commit0.Add(time.Duration(off) * time.Second), Position: fmt.Sprintf("lsn:0/%X", off), Row: r,
			TxID: fmt.Sprint(700 + off), // no record: the target is RowsOnly
		})
		b.Offsets[target.TopicPartition{Topic: "t.items", Partition: 0}] = off + 1
	}
	return b
}

func item(id int64) map[string]any {
	return map[string]any{
		"id": id, "qty": int64(3), "price": "12.50", "big": "1234567890123456789012345678.0123456789", "wide": "1e-3",
		"name": "émoji 😀", "raw": "AP8Q", "doc": `{"a": 1}`, "born": "2024-02-29", "seen": "2024-01-02T01:04:05.123456Z",
		"local_ts": "2024-01-02T03:04:05.500000", "ratio": 1.5, "score": 0.1, "ok": true, "tags": []any{"a", "b"},
	}
}

// committedFiles lists the files of every manifest under a local lake.
func committedFiles(t *testing.T, dir string) []string {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "_plume", "commits", "*.json"))
	var files []string
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		var mf manifest
		if err := json.Unmarshal(b, &mf); err != nil {
			t.Fatal(err)
		}
		for _, f := range mf.Files {
			files = append(files, filepath.Join(dir, f.Path))
		}
	}
	sort.Strings(files)
	return files
}

func parquetList(files []string) string {
	q := make([]string, len(files))
	for i, f := range files {
		q[i] = "'" + strings.ReplaceAll(f, "'", "''") + "'"
	}
	return "read_parquet([" + strings.Join(q, ",") + "], union_by_name = true)"
}

func TestParquetTypesAndExactlyOnce(t *testing.T) {
	dsn := sourceTable(t)
	dir := t.TempDir()
	s := localSettings(t, dir, dsn, nil)
	tg, offs := openLake(t, s)
	if len(offs) != 0 {
		t.Fatalf("fresh lake: offsets %v", offs)
	}
	ctx := context.Background()
	del := map[string]any{"id": int64(2), "__op": event.OpDelete}
	b1 := batch(0, item(1), item(2), del)
	if err := tg.Apply(ctx, b1); err != nil {
		t.Fatal(err)
	}
	// The delivery layer replays the same batch after a crash before its
	// checkpoint: nothing is written twice.
	if err := tg.Apply(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if err := tg.Apply(ctx, batch(2, map[string]any{"id": int64(2), "__op": event.OpDelete}, item(3))); err != nil {
		t.Fatal(err)
	}
	files := committedFiles(t, dir)
	if len(files) != 2 {
		t.Fatalf("want 2 committed files, got %v", files)
	}
	for _, f := range files {
		if !strings.Contains(f, "/table=public.items/commit_date=2026-11-24/t.items-0-") {
			t.Errorf("file %s: want the Hive-style layout", f)
		}
	}
	// Reopen: offsets come from the manifest.
	_, offs = openLake(t, s)
	if got := offs[target.TopicPartition{Topic: "t.items", Partition: 0}]; got != 4 {
		t.Fatalf("offsets after reopen = %v, want 4", offs)
	}

	// The independent reader: DuckDB's types and values.
	desc := testharness.DuckDBQuery(t, "DESCRIBE SELECT * FROM "+parquetList(files))
	types := map[string]string{}
	for _, r := range desc {
		types[r["column_name"].(string)] = r["column_type"].(string)
	}
	want := map[string]string{
		"_op": "VARCHAR", "_commit_time": "TIMESTAMP WITH TIME ZONE", "_offset": "BIGINT", "_partition": "INTEGER",
		"id": "BIGINT", "qty": "INTEGER", "price": "DECIMAL(10,2)", "big": "DECIMAL(38,10)", "wide": "VARCHAR",
		"name": "VARCHAR", "raw": "BLOB", "doc": "VARCHAR", "born": "DATE", "seen": "TIMESTAMP WITH TIME ZONE",
		"local_ts": "TIMESTAMP", "ratio": "FLOAT", "score": "DOUBLE", "ok": "BOOLEAN", "tags": "VARCHAR",
	}
	for c, w := range want {
		if types[c] != w {
			t.Errorf("column %s: DuckDB type %q, want %q", c, types[c], w)
		}
	}
	rows := testharness.DuckDBQuery(t, `SELECT _op, _offset, _txid, id, qty, price::VARCHAR AS price, big::VARCHAR AS big, name,
		hex(raw) AS raw, doc, born::VARCHAR AS born, epoch_us(seen) AS seen_us, local_ts::VARCHAR AS local_ts, ratio, score, ok, tags,
		epoch_us(_commit_time) AS ct FROM `+parquetList(files)+` ORDER BY _offset`)
	if len(rows) != 4 {
		t.Fatalf("want 4 rows (every change once), got %d: %v", len(rows), rows)
	}
	r := rows[0]
	check := map[string]string{"_op": "c", "_offset": "0", "_txid": "700", "id": "1", "qty": "3", "price": "12.50",
		"big": "1234567890123456789012345678.0123456789", "name": "émoji 😀", "raw": "00FF10", "doc": `{"a": 1}`,
		"born": "2024-02-29", "seen_us": "1704157445123456", "local_ts": "2024-01-02 03:04:05.5", "ratio": "1.5", "score": "0.1",
		"ok": "true", "tags": `["a","b"]`, "ct": fmt.Sprint(commit0.UnixMicro())}
	for k, w := range check {
		if got := fmt.Sprint(r[k]); got != w {
			t.Errorf("row 0 %s = %q, want %q", k, got, w)
		}
	}
	ops := ""
	for _, r := range rows {
		ops += fmt.Sprint(r["_op"])
	}
	if ops != "ccdc" {
		t.Errorf("ops in offset order = %q, want ccdc (the replayed delete at offset 2 once)", ops)
	}
}

func TestPoisonValueIsRejectedAndNothingWritten(t *testing.T) {
	dsn := sourceTable(t)
	dir := t.TempDir()
	tg, _ := openLake(t, localSettings(t, dir, dsn, nil))
	bad := item(2)
	bad["price"] = "NaN" // numeric(10,2) can hold NaN in PostgreSQL; Parquet DECIMAL cannot
	b := batch(0, item(1), bad, item(3))
	err := tg.Apply(context.Background(), b)
	var re *target.RecordErrors
	if !errors.As(err, &re) || re.Applied || len(re.Failed) != 1 || re.Failed[1] == nil {
		t.Fatalf("want RecordErrors{Failed: {1: ...}, Applied: false}, got %v", err)
	}
	if !strings.Contains(re.Failed[1].Error(), "price") {
		t.Errorf("error should name the column: %v", re.Failed[1])
	}
	if files := committedFiles(t, dir); len(files) != 0 {
		t.Fatalf("nothing may be committed: %v", files)
	}
	// The layer dead-letters it and applies the rest with the same offsets.
	b.Messages = append(b.Messages[:1], b.Messages[2])
	if err := tg.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	rows := testharness.DuckDBQuery(t, "SELECT id FROM "+parquetList(committedFiles(t, dir))+" ORDER BY id")
	if len(rows) != 2 || fmt.Sprint(rows[0]["id"]) != "1" || fmt.Sprint(rows[1]["id"]) != "3" {
		t.Fatalf("rows %v", rows)
	}
}

// A crash after the data files but before the manifest: the files are
// invisible, the next Open deletes them, and the rewrite commits once.
func TestCrashBeforeManifest(t *testing.T) {
	dsn := sourceTable(t)
	dir := t.TempDir()
	s := localSettings(t, dir, dsn, nil)
	tg, _ := openLake(t, s)
	crash := errors.New("crash")
	tg.hookAfterData = func() error { return crash }
	if err := tg.Apply(context.Background(), batch(0, item(1), item(2))); !errors.Is(err, crash) {
		t.Fatal(err)
	}
	orphans, _ := filepath.Glob(filepath.Join(dir, "table=*", "*", "*.parquet"))
	if len(orphans) != 1 || len(committedFiles(t, dir)) != 0 {
		t.Fatalf("want one uncommitted file, got %v (committed %v)", orphans, committedFiles(t, dir))
	}
	tg2, offs := openLake(t, s)
	if len(offs) != 0 {
		t.Fatalf("offsets %v", offs)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "table=*", "*", "*.parquet")); len(left) != 0 {
		t.Fatalf("Open should remove the interrupted commit's files: %v", left)
	}
	// The replay after the crash may batch differently.
	if err := tg2.Apply(context.Background(), batch(0, item(1), item(2), item(3))); err != nil {
		t.Fatal(err)
	}
	rows := testharness.DuckDBQuery(t, "SELECT count(*) AS n, count(DISTINCT _offset) AS d FROM "+parquetList(committedFiles(t, dir)))
	if fmt.Sprint(rows[0]["n"]) != "3" || fmt.Sprint(rows[0]["d"]) != "3" {
		t.Fatalf("rows %v", rows)
	}
}

// A second writer of the same commit number is refused.
func TestSecondWriterFenced(t *testing.T) {
	dsn := sourceTable(t)
	dir := t.TempDir()
	s := localSettings(t, dir, dsn, nil)
	a, _ := openLake(t, s)
	b, _ := openLake(t, s)
	if err := a.Apply(context.Background(), batch(0, item(1))); err != nil {
		t.Fatal(err)
	}
	// Same records, another batching: commit 1 exists, so b is refused.
	err := b.Apply(context.Background(), batch(0, item(1), item(2)))
	if err == nil || !strings.Contains(err.Error(), "another writer") {
		t.Fatalf("want a fencing error, got %v", err)
	}
	if n := len(committedFiles(t, dir)); n != 1 {
		t.Fatalf("committed files %d", n)
	}
}

// A column added at the source mid-stream: new files carry it, old files
// stay readable (null there).
func TestSchemaChangeAddsColumn(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE public.items (id bigint PRIMARY KEY, name text)`)
	dir := t.TempDir()
	s := localSettings(t, dir, pg.DSN(db), nil)
	tg, _ := openLake(t, s)
	ctx := context.Background()
	if err := tg.Apply(ctx, batch(0, map[string]any{"id": int64(1), "name": "a"})); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, db, `ALTER TABLE public.items ADD COLUMN price numeric(8,3)`)
	tg.tables["public.items"].srcLoaded = time.Time{} // no 10 s wait in the test
	if err := tg.Apply(ctx, batch(1, map[string]any{"id": int64(2), "name": "b", "price": "1.500"})); err != nil {
		t.Fatal(err)
	}
	files := committedFiles(t, dir)
	rows := testharness.DuckDBQuery(t, "SELECT id, price::VARCHAR AS price, typeof(price) AS ty FROM "+parquetList(files)+" ORDER BY id")
	if len(rows) != 2 || rows[0]["price"] != nil || fmt.Sprint(rows[1]["price"]) != "1.500" || rows[1]["ty"] != "DECIMAL(8,3)" {
		t.Fatalf("rows %v", rows)
	}
	old := testharness.DuckDBQuery(t, "SELECT count(*) AS n FROM (DESCRIBE SELECT * FROM "+parquetList(files[:1])+") WHERE column_name = 'price'")
	if fmt.Sprint(old[0]["n"]) != "0" {
		t.Fatalf("the first file should not have the new column: %v", old)
	}
}

var tpItems = target.TopicPartition{Topic: "t.items", Partition: 0}

func isPermanent(err error) bool { return target.IsPermanent(err) }
