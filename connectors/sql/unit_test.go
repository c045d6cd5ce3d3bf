package sql

import (
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

func TestParseDSN(t *testing.T) {
	tests := []struct {
		dsn, dialect, host, db string
		wantErr                string
	}{
		{dsn: "postgres://u:secretpw@db.example:5433/erp?sslmode=disable", dialect: dialectPostgres, host: "db.example:5433", db: "erp"},
		{dsn: "postgresql://u@localhost/erp", dialect: dialectPostgres, host: "localhost:5432", db: "erp"},
		{dsn: "host=pg.example port=5434 user=u password=secretpw dbname=erp", dialect: dialectPostgres, host: "pg.example:5434", db: "erp"},
		{dsn: "mysql://u:secretpw@my.example:3307/erp?tls=false", dialect: dialectMySQL, host: "my.example:3307", db: "erp"},
		{dsn: "mariadb://u:secretpw@my.example/erp", dialect: dialectMySQL, host: "my.example:3306", db: "erp"},
		{dsn: "u:secretpw@tcp(my.example:3306)/erp?charset=utf8mb4", dialect: dialectMySQL, host: "my.example:3306", db: "erp"},
		{dsn: "u:p@ss/w0rd@tcp(h:1)/erp", dialect: dialectMySQL, host: "h:1", db: "erp"},
		{dsn: "sqlserver://u:secretpw@h/erp", wantErr: "unsupported scheme"},
		{dsn: "postgres://u:secretpw@h:notaport/erp", wantErr: "invalid PostgreSQL DSN"},
	}
	for _, tc := range tests {
		t.Run(tc.dsn, func(t *testing.T) {
			info, err := parseDSN(tc.dsn)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secretpw") {
					t.Fatalf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.dialect != tc.dialect || info.host != tc.host || info.database != tc.db {
				t.Fatalf("got %s %s %s, want %s %s %s", info.dialect, info.host, info.database, tc.dialect, tc.host, tc.db)
			}
			if info.my != nil && (!info.my.InterpolateParams || info.my.Params["time_zone"] != "'+00:00'") {
				t.Fatalf("mysql options not forced: %+v", info.my)
			}
			if info.pg != nil && info.pg.RuntimeParams["timezone"] != "UTC" {
				t.Fatalf("pg time zone not UTC")
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.DSN = config.DSN("postgres://u:pw@h/db")
		c.Table = "erp.products"
		c.Key = []string{"sku"}
		return c
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{name: "ok", mod: func(*Config) {}},
		{name: "soft", mod: func(c *Config) { c.Delete = "soft:deleted" }},
		{name: "no dsn", mod: func(c *Config) { c.DSN = "" }, wantErr: "dsn: is required"},
		{name: "no table", mod: func(c *Config) { c.Table = "" }, wantErr: "table: is required"},
		{name: "bad table", mod: func(c *Config) { c.Table = "a.b.c" }, wantErr: "table:"},
		{name: "no key", mod: func(c *Config) { c.Key = nil }, wantErr: "key:"},
		{name: "dup key", mod: func(c *Config) { c.Key = []string{"a", "a"} }, wantErr: "listed twice"},
		{name: "batch", mod: func(c *Config) { c.BatchSize = -1 }, wantErr: "batch_size"},
		{name: "delete", mod: func(c *Config) { c.Delete = "soft:" }, wantErr: "delete:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			s, err := c.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.batchSize != DefaultBatchSize || s.offsets.name != DefaultOffsetsTable {
					t.Fatalf("defaults not applied: %+v", s)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestCoalesce(t *testing.T) {
	up := func(i int, key string) *rowOp { return &rowOp{index: i, kind: opUpsert, key: key} }
	del := func(i int, key string) *rowOp { return &rowOp{index: i, kind: opDelete, key: key} }
	trunc := func(i int) *rowOp { return &rowOp{index: i, kind: opTruncate} }
	idx := func(ops []*rowOp) []int {
		out := []int{}
		for _, op := range ops {
			out = append(out, op.index)
		}
		return out
	}
	tests := []struct {
		name     string
		ops      []*rowOp
		truncate bool
		upserts  []int
		deletes  []int
	}{
		{"insert update delete insert", []*rowOp{up(0, "k"), up(1, "k"), del(2, "k"), up(3, "k")}, false, []int{3}, []int{}},
		{"ends in delete", []*rowOp{up(0, "k"), del(1, "k")}, false, []int{}, []int{1}},
		{"independent keys", []*rowOp{up(0, "a"), del(1, "b"), up(2, "c"), up(3, "a")}, false, []int{3, 2}, []int{1}},
		{"truncate discards earlier", []*rowOp{up(0, "a"), del(1, "b"), trunc(2), up(3, "c")}, true, []int{3}, []int{}},
		{"truncate last", []*rowOp{up(0, "a"), trunc(1)}, true, []int{}, []int{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := coalesce(tc.ops, nil)
			if p.truncate != tc.truncate || itoas(idx(p.upserts)) != itoas(tc.upserts) || itoas(idx(p.deletes)) != itoas(tc.deletes) {
				t.Fatalf("got truncate=%v upserts=%v deletes=%v, want %v %v %v",
					p.truncate, idx(p.upserts), idx(p.deletes), tc.truncate, tc.upserts, tc.deletes)
			}
		})
	}
}

func itoas(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = itoa(n)
	}
	return strings.Join(s, ",")
}

func TestConversions(t *testing.T) {
	for in, want := range map[string]string{
		"2024-05-01T12:00:00+02:00":     "2024-05-01 10:00:00",
		"2024-05-01T12:00:00.25Z":       "2024-05-01 12:00:00.25",
		"2024-05-01 12:00:00.123456-01": "2024-05-01 13:00:00.123456",
		"2024-05-01T12:00:00":           "2024-05-01 12:00:00",
		"2024-05-01":                    "2024-05-01",
		"infinity":                      "infinity",
	} {
		if got := wallClockUTC(in); got != want {
			t.Errorf("wallClockUTC(%q) = %q, want %q", in, got, want)
		}
	}
	lit, err := pgArrayLiteral([]any{"a", nil, num("1.5"), []any{true}, map[string]any{"k": `v"`}})
	if err != nil || lit != `{"a",NULL,"1.5",{"true"},"{\"k\":\"v\\\"\"}"}` {
		t.Errorf("pgArrayLiteral = %s, %v", lit, err)
	}
	for _, tc := range []struct {
		in   any
		want string
	}{
		{`{"a":1}`, `{"a":1}`},
		{"[1, 2]", "[1, 2]"},
		{"12", `"12"`},
		{"{not json", `"{not json"`},
		{num("1.50"), "1.50"},
		{map[string]any{"b": "<x>", "a": nil}, `{"a":null,"b":"<x>"}`},
	} {
		if got, err := jsonColumnText(tc.in); err != nil || got != tc.want {
			t.Errorf("jsonColumnText(%v) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for f, want := range map[float64]string{0.1: "0.1", 1e21: "1e+21", 123456789: "123456789", -2.5e-7: "-2.5e-07"} {
		if got := formatFloat(f, 64); got != want {
			t.Errorf("formatFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

// TestStatements checks the SQL text of both dialects without a database.
func TestStatements(t *testing.T) {
	sku := &column{name: "sku", kind: kText, cast: "text"}
	price := &column{name: "price", kind: kNumber, cast: "numeric"}
	info := &tableInfo{
		name:    tableName{"erp", "products"},
		columns: map[string]*column{"sku": sku, "price": price},
		key:     []*column{sku},
	}
	for _, tc := range []struct {
		b    backend
		want []string
	}{
		{&pgBackend{}, []string{
			`DELETE FROM "erp"."products" WHERE "sku" IN ($1::text::text, $2::text::text)`,
			`INSERT INTO "erp"."products" ("price", "sku") VALUES ($1::text::numeric, $2::text::text), ($3::text::numeric, $4::text::text) ON CONFLICT ("sku") DO UPDATE SET "price" = EXCLUDED."price"`,
			`INSERT INTO "erp"."products" ("price", "sku") VALUES ($1::text::numeric, $2::text::text) ON CONFLICT ("sku") DO UPDATE SET "price" = EXCLUDED."price"`,
		}},
		{&myBackend{}, []string{
			"DELETE FROM `erp`.`products` WHERE `sku` IN (?, ?)",
			"INSERT INTO `erp`.`products` (`price`, `sku`) VALUES (?, ?), (?, ?) ON DUPLICATE KEY UPDATE `price` = VALUES(`price`)",
			"INSERT INTO `erp`.`products` (`price`, `sku`) VALUES (?, ?) ON DUPLICATE KEY UPDATE `price` = VALUES(`price`)",
		}},
	} {
		info.quoted = quoteTable(tc.b, info.name)
		set := &settings{batchSize: 2, table: info.name}
		tgt := &Target{set: set, db: tc.b, info: info}
		m := []target.Message{
			{Op: event.OpDelete, Row: map[string]any{"sku": "x"}},
			{Op: event.OpDelete, Row: map[string]any{"sku": "y"}},
			{Op: event.OpCreate, Row: map[string]any{"sku": "a", "price": num("1")}},
			{Op: event.OpCreate, Row: map[string]any{"sku": "b", "price": num("2")}},
			{Op: event.OpCreate, Row: map[string]any{"sku": "c", "price": num("3")}},
		}
		var ops []*rowOp
		for i := range m {
			op, err := tgt.prepare(i, &m[i])
			if err != nil {
				t.Fatal(err)
			}
			ops = append(ops, op)
		}
		stmts := tgt.statements(coalesce(ops, nil))
		var got []string
		for _, s := range stmts {
			got = append(got, s.sql)
		}
		if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
		if len(stmts[1].args) != 4 || stmts[1].args[0] != "1" || stmts[1].args[1] != "a" {
			if _, my := tc.b.(*myBackend); !my || stmts[1].args[0] != int64(1) {
				t.Errorf("args = %#v", stmts[1].args)
			}
		}
	}
}

func TestCoalesceSoftDelete(t *testing.T) {
	marked := func(up, del *rowOp) *rowOp {
		m := *up
		m.index = del.index
		m.sig = "marked"
		return &m
	}
	ops := []*rowOp{
		{index: 0, kind: opUpsert, key: "a"},
		{index: 1, kind: opDelete, key: "a"}, // upsert then delete: one marked upsert
		{index: 2, kind: opDelete, key: "b"}, // delete alone: stays a delete
		{index: 3, kind: opUpsert, key: "c"},
		{index: 4, kind: opDelete, key: "c"},
		{index: 5, kind: opUpsert, key: "c"}, // revived
	}
	p := coalesce(ops, marked)
	if len(p.upserts) != 2 || p.upserts[0].index != 1 || p.upserts[0].sig != "marked" ||
		p.upserts[1].index != 5 || p.upserts[1].sig == "marked" {
		t.Fatalf("upserts: %+v %+v", p.upserts[0], p.upserts[len(p.upserts)-1])
	}
	if len(p.deletes) != 1 || p.deletes[0].index != 2 {
		t.Fatalf("deletes: %+v", p.deletes)
	}
}
