package validate

import (
	"context"
	dbsql "database/sql"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// mustFail fails t unless err is non-nil and mentions every part.
func mustFail(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("validator passed, want a failure mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("report does not mention %q:\n%v", p, err)
		}
	}
}

func ev(source, id, key string) Event {
	return Event{ID: id, Source: source, Table: "public.products", Key: key, Op: "update", Pos: id}
}

func TestValidateNoDuplicates(t *testing.T) {
	a := ev("/s", "lsn:0/10/0", "id=1")
	b := ev("/s", "lsn:0/10/1", "id=2")
	sameIDOtherSource := ev("/other", "lsn:0/10/0", "id=1")
	if err := NoDuplicates([]Event{a, b, sameIDOtherSource}); err != nil {
		t.Fatalf("distinct identities: %v", err)
	}
	if err := NoDuplicates(nil); err != nil {
		t.Fatal(err)
	}
	mustFail(t, NoDuplicates([]Event{a, b, a, a}), "1 of 2 distinct events delivered more than once", "2 extra deliveries", "/s lsn:0/10/0 ×3")

	// Many duplicates: the report is bounded.
	var many []Event
	for i := range 50 {
		e := ev("/s", fmt.Sprintf("lsn:0/10/%d", i), "id=1")
		many = append(many, e, e)
	}
	err := NoDuplicates(many)
	mustFail(t, err, "50 of 50", "... and 40 more")
	if n := strings.Count(err.Error(), "\n"); n > MaxExamples+1 {
		t.Errorf("report has %d lines", n)
	}
}

func TestValidateNoLossAndNoExtra(t *testing.T) {
	want := []string{"a", "b", "c", "d"}
	if err := NoLoss(want, []string{"d", "c", "b", "a", "a"}); err != nil {
		t.Fatalf("all there: %v", err)
	}
	mustFail(t, NoLoss(want, []string{"a", "c"}), "2 missing event ids (of 4)", "\n  b", "\n  d")
	if err := NoLoss(want, append(want, "zzz")); err != nil {
		t.Fatalf("extra ids are not loss: %v", err)
	}
	mustFail(t, NoExtra(want, append(want, "zzz")), "1 unexpected event ids", "zzz")
	if err := NoExtra(want, []string{"a"}); err != nil {
		t.Fatalf("missing ids are not extras: %v", err)
	}
	// The first missing ids are listed in want's order.
	var big []string
	for i := range 100 {
		big = append(big, fmt.Sprintf("id-%03d", i))
	}
	err := NoLoss(big, big[:50])
	mustFail(t, err, "50 missing", "id-050", "id-059", "... and 40 more")
	if strings.Contains(err.Error(), "id-060") {
		t.Errorf("report lists more than %d ids:\n%v", MaxExamples, err)
	}
}

func TestValidatePositionLess(t *testing.T) {
	ordered := [][2]string{
		{"lsn:0/16B3748/0", "lsn:0/16B3748/1"},
		{"lsn:0/16B3748/9", "lsn:0/16B3800/0"},
		{"lsn:0/FFFFFFFF/0", "lsn:1/0/0"},       // high word
		{"lsn:0/9A/0", "lsn:0/10A/0"},           // numeric, not textual
		{"lsn:0/16B3748/2", "lsn:0/16B3748/10"}, // row index numeric
		{"gtid:0-1-9/0", "gtid:0-1-10/0"},
		{"gtid:0-1-42/1", "gtid:0-1-42/2"},
		{"binlog:mysql-bin.000003:999/0", "binlog:mysql-bin.000003:1000/0"},
		{"binlog:mysql-bin.000003:5000/0", "binlog:mysql-bin.000004:4/0"},
	}
	for _, p := range ordered {
		if !PositionLess(p[0], p[1]) {
			t.Errorf("%s < %s: false", p[0], p[1])
		}
		if PositionLess(p[1], p[0]) {
			t.Errorf("%s < %s: true", p[1], p[0])
		}
	}
	if PositionLess("lsn:0/10/0", "lsn:0/10/0") {
		t.Error("a position is not less than itself")
	}
}

func TestValidatePerKeyOrder(t *testing.T) {
	k1a := ev("/s", "lsn:0/10/0", "id=1")
	k1b := ev("/s", "lsn:0/20/0", "id=1")
	k2a := ev("/s", "lsn:0/15/0", "id=2")
	snap := Event{ID: "snapshot:0/5/public.products/id=1", Source: "/s", Table: "public.products", Key: "id=1", Op: "read"}
	if err := PerKeyOrder([]Event{snap, k1a, k2a, k1b}, PositionLess); err != nil {
		t.Fatalf("in order: %v", err)
	}
	// Keys interleave freely; only a key's own sequence matters.
	if err := PerKeyOrder([]Event{k2a, k1a, k1b}, PositionLess); err != nil {
		t.Fatalf("other keys between: %v", err)
	}
	mustFail(t, PerKeyOrder([]Event{k1b, k2a, k1a}, PositionLess), "1 events arrived out of order", "public.products id=1: lsn:0/10/0 after lsn:0/20/0")
	// The same position twice is not "after": a redelivery is out of order
	// unless removed with Dedup first.
	mustFail(t, PerKeyOrder([]Event{k1a, k1b, k1a}, PositionLess), "out of order")
	if err := PerKeyOrder(Dedup([]Event{k1a, k1b, k1a, k1b}), PositionLess); err != nil {
		t.Fatalf("deduplicated redeliveries: %v", err)
	}
	// The same key in another table or source is another key.
	other := k1a
	other.Table = "public.orders"
	if err := PerKeyOrder([]Event{k1b, other}, PositionLess); err != nil {
		t.Fatalf("other table: %v", err)
	}
}

func TestValidateDedup(t *testing.T) {
	a, b := ev("/s", "1/0", "k"), ev("/s", "2/0", "k")
	got := Dedup([]Event{a, b, a, b, a})
	if len(got) != 2 || got[0].ID != "1/0" || got[1].ID != "2/0" {
		t.Fatalf("Dedup = %v", got)
	}
	if ids := IDs(got); len(ids) != 2 || ids[0] != "/s 1/0" {
		t.Fatalf("IDs = %v", ids)
	}
}

func TestValidateDiffRows(t *testing.T) {
	want := Rows{
		"1": {"id": "1", "name": "a", "price": "12.50"},
		"2": {"id": "2", "name": nil, "price": "1.00"},
		"3": {"id": "3", "name": "c", "price": "3.00"},
	}
	same := Rows{
		"1": {"id": int64(1), "name": []byte("a"), "price": json.Number("12.50")},
		"2": {"id": uint64(2), "name": nil, "price": "1.00"},
		"3": {"id": big.NewInt(3), "name": "c", "price": "3.00"},
	}
	if err := DiffRows(want, same); err != nil {
		t.Fatalf("equal tables: %v", err)
	}
	if err := DiffRows(Rows{}, Rows{}); err != nil {
		t.Fatal(err)
	}
	got := Rows{
		"1":  {"id": "1", "name": "a", "price": "12.5"}, // different text
		"2":  {"id": "2", "name": "", "price": "1.00"},  // NULL vs empty string
		"10": {"id": "10", "name": "x", "price": "1"},
	}
	err := DiffRows(want, got)
	mustFail(t, err, "want 3 rows, got 3: 1 missing, 1 extra, 2 different",
		"missing keys:\n  3", "extra keys:\n  10",
		`1: price: "12.5" != "12.50"`, `2: name: "" != NULL`)
	// Absent columns differ from NULL.
	mustFail(t, DiffRows(Rows{"1": {"id": "1", "x": nil}}, Rows{"1": {"id": "1"}}), "x: (absent) != NULL")
	mustFail(t, DiffRows(Rows{"1": {"id": "1"}}, Rows{"1": {"id": "1", "y": "v"}}), `y: "v" != (absent)`)
	// Keys sort numerically in the report.
	many := Rows{}
	for i := range 30 {
		many[fmt.Sprint(i)] = map[string]any{"id": fmt.Sprint(i)}
	}
	err = DiffRows(many, Rows{})
	mustFail(t, err, "30 missing", "missing keys:\n  0\n  1\n  2\n", "... and 20 more")
}

func TestValidateText(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	for _, c := range []struct {
		v    any
		want string
	}{
		{"s", "s"}, {[]byte("b"), "b"}, {int32(-7), "-7"}, {uint8(7), "7"}, {1.5, "1.5"}, {float32(0.1), "0.1"},
		{true, "true"}, {json.Number("1e3"), "1e3"}, {ts, "2026-01-02T02:04:05.000000006Z"},
		{map[string]any{"b": 1, "a": []any{"x"}}, `{"a":["x"],"b":1}`},
	} {
		if got, ok := Text(c.v); !ok || got != c.want {
			t.Errorf("Text(%#v) = %q, %v; want %q", c.v, got, ok, c.want)
		}
	}
	if _, ok := Text(nil); ok {
		t.Error("Text(nil) is not NULL")
	}
	if _, ok := Text([]byte(nil)); ok {
		t.Error("Text([]byte(nil)) is not NULL")
	}
	if Equal(nil, "") || !Equal(int64(5), "5") {
		t.Error("Equal")
	}
}

// records encodes changes as Plume's capture does.
func records(t *testing.T, structured bool) []*kgo.Record {
	t.Helper()
	tbl := &event.Table{Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
		Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}, {Name: "price", Type: "numeric(10,2)"}},
		Key:     []int{0}}
	commit := time.Date(2026, 11, 24, 10, 30, 0, 0, time.UTC)
	enc := &event.Encoder{Pipeline: "p", Structured: structured}
	var out []*kgo.Record
	for _, c := range []*event.Change{
		{Op: event.OpRead, Table: tbl, After: []event.Value{int64(7), "SKU-7", event.Decimal("1.00")}, Commit: commit, Pos: "snapshot:0/10", Snapshot: true},
		{Op: event.OpCreate, Table: tbl, After: []event.Value{int64(42), "SKU-42", event.Decimal("12.50")}, Commit: commit, TxID: "771", Pos: "lsn:0/16B3748", Index: 0, TableIndex: 1},
		{Op: event.OpDelete, Table: tbl, Before: []event.Value{int64(42), "SKU-42", event.Decimal("12.50")}, Commit: commit, TxID: "772", Pos: "lsn:0/16B3800", Index: 0, TableIndex: 1},
	} {
		r := enc.Record("p.public.products", c)
		out = append(out, r)
		if c.Op == event.OpDelete {
			out = append(out, event.Tombstone(r.Topic, r.Key))
		}
	}
	return out
}

func TestValidateFromRecord(t *testing.T) {
	for _, structured := range []bool{false, true} {
		var got []Event
		for _, r := range records(t, structured) {
			e, ok, err := FromRecord(r)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				got = append(got, e)
			}
		}
		if len(got) != 3 {
			t.Fatalf("structured=%v: %d events (the tombstone is no event)", structured, len(got))
		}
		read, ins, del := got[0], got[1], got[2]
		if read.Op != "read" || read.Pos != "" || read.Table != "public.products" || read.Key != "id=7" || read.Source != "/plume/p/postgresql/shop" {
			t.Errorf("snapshot read: %+v", read)
		}
		if ins.Op != "insert" || ins.Pos != "lsn:0/16B3748/0" || ins.Row["sku"] != "SKU-42" || ins.Row["id"] != json.Number("42") || ins.Row["price"] != "12.50" {
			t.Errorf("insert: %+v", ins)
		}
		if del.Op != "delete" || del.Row["sku"] != "SKU-42" {
			t.Errorf("a delete's row is the before image: %+v", del)
		}
	}
	if _, _, err := FromRecord(&kgo.Record{Value: []byte("{}")}); err == nil {
		t.Error("a record without CloudEvents headers is an error")
	}
}

func TestValidateFromReceiver(t *testing.T) {
	rc := receiver.New()
	rc.Keep = true
	srv := httptest.NewServer(rc)
	defer srv.Close()
	post := func(h map[string]string, body string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("receiver answered %s", resp.Status)
		}
	}
	// Binary mode with the change envelope.
	post(map[string]string{"Content-Type": "application/json", "Ce-Specversion": "1.0", "Ce-Id": "gtid:0-1-5/0",
		"Ce-Source": "/plume/p/mysql/shop", "Ce-Type": "io.plume.row.update", "Ce-Subject": "id=3", "Ce-Database": "shop", "Ce-Table": "t"},
		`{"before":{"id":3,"v":"a"},"after":{"id":3,"v":"b"},"source":{"db":"shop"},"op":"u"}`)
	// Batch mode with body: row.
	post(map[string]string{"Content-Type": "application/cloudevents-batch+json"},
		`[{"specversion":"1.0","id":"lsn:0/A/0","source":"/plume/p/postgresql/shop","type":"io.plume.row.delete","subject":"id=4","schema":"public","table":"products","data":{"sku":"S4"}}]`)
	evs := rc.Events()
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	a, err := FromReceiver(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	if a.Table != "shop.t" || a.Op != "update" || a.Pos != "gtid:0-1-5/0" || a.Row["v"] != "b" || a.Key != "id=3" {
		t.Errorf("binary: %+v", a)
	}
	b, err := FromReceiver(evs[1])
	if err != nil {
		t.Fatal(err)
	}
	if b.Table != "public.products" || b.Op != "delete" || b.Row["sku"] != "S4" {
		t.Errorf("batch, body row: %+v", b)
	}
	if _, err := FromReceiver(receiver.Event{Source: "/s"}); err == nil {
		t.Error("an event without id is an error")
	}
}

// The table readers against real servers: one table per database, read
// three ways, equal by DiffRows; then a change makes DiffRows fail.
func TestValidateSQLTables(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL and MariaDB")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg := testharness.Postgres(t)
	pdb := pg.NewDatabase(t)
	pg.Exec(t, pdb, `CREATE TABLE p (id bigint PRIMARY KEY, name text, price numeric(12,2));
		INSERT INTO p VALUES (1, 'a', 12.5), (2, NULL, 1), (3, 'ü €', 0.01)`)
	pconn := pg.Connect(t, pdb)
	prows, err := PostgresTable(ctx, pconn, `SELECT id, name, price FROM p`)
	if err != nil {
		t.Fatal(err)
	}
	if prows["1"]["price"] != "12.50" || prows["2"]["name"] != nil || prows["3"]["name"] != "ü €" {
		t.Fatalf("PostgresTable = %v", prows)
	}

	my := testharness.MariaDB(t)
	mdb := my.NewDatabase(t)
	my.Exec(t, mdb, "CREATE TABLE p (id bigint PRIMARY KEY, name varchar(20), price decimal(12,2)) DEFAULT CHARSET utf8mb4")
	my.Exec(t, mdb, "INSERT INTO p VALUES (1, 'a', 12.5), (2, NULL, 1), (3, 'ü €', 0.01)")
	mrows, err := MySQLTable(ctx, my.Connect(t, mdb), "SELECT id, name, price FROM p")
	if err != nil {
		t.Fatal(err)
	}
	if err := DiffRows(prows, mrows); err != nil {
		t.Fatalf("PostgreSQL vs MariaDB (go-mysql): %v", err)
	}
	db, err := dbsql.Open("mysql", my.DSN(mdb))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srows, err := SQLTable(ctx, db, "SELECT id, name, price FROM p")
	if err != nil {
		t.Fatal(err)
	}
	if err := DiffRows(prows, srows); err != nil {
		t.Fatalf("PostgreSQL vs MariaDB (database/sql): %v", err)
	}

	my.Exec(t, mdb, "UPDATE p SET price = 13 WHERE id = 1; DELETE FROM p WHERE id = 2; INSERT INTO p VALUES (4, 'x', 1)")
	mrows, err = MySQLTable(ctx, my.Connect(t, mdb), "SELECT id, name, price FROM p")
	if err != nil {
		t.Fatal(err)
	}
	mustFail(t, DiffRows(prows, mrows), "1 missing, 1 extra, 1 different", `1: price: "13.00" != "12.50"`)

	// A duplicated key is an error, not a silently merged row.
	if _, err := PostgresTable(ctx, pconn, `SELECT 1 AS k UNION ALL SELECT 1`); err == nil || !strings.Contains(err.Error(), "occurs twice") {
		t.Errorf("duplicate key: %v", err)
	}
	if _, err := PostgresTable(ctx, pconn, `SELECT NULL::int AS k`); err == nil || !strings.Contains(err.Error(), "NULL key") {
		t.Errorf("NULL key: %v", err)
	}
}
