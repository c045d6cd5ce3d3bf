package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// typeCase is one column of the type matrix: its SQL type, values (SQL
// expressions) and the SQL expression (over the column "c") that makes
// PostgreSQL compute the JSON Plume must produce.
type typeCase struct {
	typ    string
	values []string
	want   string
}

// tsWant renders timestamps the way docs/types-postgres.md says, computed
// by PostgreSQL.
const (
	dateWant = `CASE WHEN NOT isfinite(c) THEN to_jsonb(c::text)
		WHEN extract(year FROM c) < 0 THEN to_jsonb('-' || lpad((-extract(year FROM c)::int - 1)::text, 4, '0') || to_char(c, '-MM-DD'))
		ELSE to_jsonb(to_char(c, 'YYYY-MM-DD')) END`
	tsWant   = `CASE WHEN isfinite(c) THEN to_jsonb(to_char(c, 'YYYY-MM-DD"T"HH24:MI:SS.US')) ELSE to_jsonb(c::text) END`
	tstzWant = `CASE WHEN isfinite(c) THEN to_jsonb(to_char(c AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) ELSE to_jsonb(c::text) END`
)

var typeMatrix = []typeCase{
	{"smallint", []string{"-32768", "32767", "0"}, "to_jsonb(c)"},
	{"integer", []string{"-2147483648", "2147483647"}, "to_jsonb(c)"},
	{"bigint", []string{"-9223372036854775808", "9223372036854775807"}, "to_jsonb(c)"},
	{"numeric", []string{"'NaN'", "'Infinity'", "'-Infinity'",
		"'123456789012345678901234567890.123456789012345678901234567890'",
		"'-0.000000000000000000001'", "0", "repeat('9', 1000)::numeric", "'1e-30'"}, "to_jsonb(c::text)"},
	{"numeric(10,2)", []string{"12.5", "-99999999.99"}, "to_jsonb(c::text)"},
	{"real", []string{"'NaN'", "'Infinity'", "'-Infinity'", "1.1", "3.4028235e38", "-1.17549435e-38", "0"}, "to_jsonb(c)"},
	{"double precision", []string{"'NaN'", "'Infinity'", "'-Infinity'", "1.7976931348623157e308", "5e-324", "0.1", "-0.0", "123456789.125"}, "to_jsonb(c)"},
	{"boolean", []string{"true", "false"}, "to_jsonb(c)"},
	{"text", []string{"'hello'", "'😀👍🏽 émoji'", `E'quote " backslash \\ newline \n tab \t ctl \x01'`, "''"}, "to_jsonb(c)"},
	{"varchar(20)", []string{"'abc'"}, "to_jsonb(c)"},
	{"char(5)", []string{"'ab'"}, "to_jsonb(c)"},
	{"bytea", []string{`'\x00ff10'`, "''", "decode(repeat('ab', 100), 'hex')"}, `to_jsonb(translate(encode(c, 'base64'), E'\n', ''))`},
	{"uuid", []string{"'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"}, "to_jsonb(c::text)"},
	{"json", []string{`'{"b": 1,  "a": [1, 2]}'`, `'"😀"'`}, "to_jsonb(c::text)"},
	{"jsonb", []string{`'{"b": 1, "a": "😀", "n": 1.50}'`, "'[]'"}, "to_jsonb(c::text)"},
	{"date", []string{"'2024-02-29'", "'infinity'", "'-infinity'", "'0001-01-01'", "'9999-12-31'", "'0044-03-15 BC'"}, dateWant},
	{"time", []string{"'00:00:00'", "'23:59:59.999999'", "'12:34:56.5'"}, `to_jsonb(to_char('2000-01-01'::date + c, 'HH24:MI:SS.US'))`},
	{"time(3)", []string{"'12:34:56.12345'"}, `to_jsonb(to_char('2000-01-01'::date + c, 'HH24:MI:SS.US'))`},
	{"timetz", []string{"'12:34:56.789+05:30'", "'23:00:00-03'", "'00:00:00+00'"},
		`to_jsonb(to_char('2000-01-01'::date + (c AT TIME ZONE 'UTC')::time, 'HH24:MI:SS.US') || 'Z')`},
	{"timestamp", []string{"'2024-01-02 03:04:05.123456'", "'2024-01-02 03:04:05'", "'infinity'", "'-infinity'", "'1999-12-31 23:59:59.5'"}, tsWant},
	{"timestamptz", []string{"'2024-01-02 03:04:05.123456+02'", "'infinity'", "'-infinity'", "'2000-01-01 00:00:00Z'", "'2024-06-30 23:30:00-08:00'"}, tstzWant},
	{"interval", []string{"'1 year 2 months 3 days 04:05:06.789'", "'-1 day'", "'0'", "'1 mon -1 day'", "'-00:00:01.5'"}, "to_jsonb(c::text)"},
	{"inet", []string{"'192.168.1.1'", "'10.0.0.0/8'", "'::1/128'", "'2001:db8::1/64'"}, "to_jsonb(c)"},
	{"cidr", []string{"'10.0.0.0/8'"}, "to_jsonb(c)"},
	{"macaddr", []string{"'08:00:2B:01:02:03'"}, "to_jsonb(c)"},
	{"money", []string{"1234.56", "-0.01", "'92233720368547758.07'", "-1000000"}, "to_jsonb(c::numeric::text)"},
	{"bit(4)", []string{"B'1010'"}, "to_jsonb(c::text)"},
	{"varbit", []string{"B'1'", "B''", "B'0000000011111111'"}, "to_jsonb(c::text)"},
	{"xml", []string{"'<a x=\"1\">x &amp; y</a>'"}, "to_jsonb(c::text)"},
	{"mood", []string{"'happy'", "'sad'"}, "to_jsonb(c::text)"},
	{"posint", []string{"5"}, "to_jsonb(c)"},
	{"dnum", []string{"1.5", "'NaN'"}, "to_jsonb(c::text)"},
	{"integer[]", []string{"'{1,2,NULL}'", "'{}'", "'{{1,2},{3,4}}'", "'[0:1]={5,6}'"}, "to_jsonb(c)"},
	{"text[]", []string{`'{"a b","c\"d",NULL,"NULL","😀","", "x,y", "{}"}'`}, "to_jsonb(c)"},
	{"bigint[]", []string{"'{9223372036854775807}'"}, "to_jsonb(c)"},
	{"numeric[]", []string{"'{1.50,NaN,-3}'"}, "to_jsonb(c::text[])"},
	{"date[]", []string{"'{2024-01-01,infinity}'"}, "to_jsonb(c::text[])"},
	{"mood[]", []string{"'{happy,sad}'"}, "to_jsonb(c::text[])"},
	{"hstore", []string{`'"a"=>"1", "b"=>NULL, "c d"=>"x\"y", "😀"=>""'`, "''"}, "hstore_to_jsonb(c)"},
	{"int4range", []string{"'[1,10)'", "'empty'"}, "to_jsonb(c::text)"},
	{"tstzrange", []string{"'[2024-01-01 00:00+00,2024-02-01 00:00+00)'"}, "to_jsonb(c::text)"},
	{"point", []string{"'(1,2.5)'"}, "to_jsonb(c::text)"},
}

// TestTypeMatrix checks every mapping of docs/types-postgres.md on both
// paths (stream and snapshot) against JSON computed by PostgreSQL.
func TestTypeMatrix(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE EXTENSION hstore;
		CREATE TYPE mood AS ENUM ('happy', 'sad');
		CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
		CREATE DOMAIN dnum AS numeric(8,3)`)
	cols := []string{"id int PRIMARY KEY"}
	rows := 0
	for i, c := range typeMatrix {
		cols = append(cols, fmt.Sprintf("c%d %s", i, c.typ))
		rows = max(rows, len(c.values))
	}
	pg.Exec(t, db, `CREATE TABLE types (`+strings.Join(cols, ", ")+`)`)

	// Stream path: a source started before the rows are written.
	streamSrc := newSource(t, testConfig(pg, db, "types-stream", "public.types"))
	streamRec := newRecorder(streamSrc, true)
	r := startRun(t, streamSrc, nil, streamRec)
	waitStreaming(t, pg, db, r)

	for k := 0; k <= rows; k++ { // the last row is all NULLs
		vals := []string{fmt.Sprint(k)}
		for _, c := range typeMatrix {
			v := "NULL"
			if k < len(c.values) {
				v = c.values[k]
			}
			vals = append(vals, v)
		}
		pg.Exec(t, db, `INSERT INTO types VALUES (`+strings.Join(vals, ", ")+`)`)
	}
	waitFor(t, 30*time.Second, "stream rows", func() bool { return len(streamRec.changes()) >= rows+1 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	// Snapshot path.
	cfg := testConfig(pg, db, "types-snap", "public.types")
	cfg.Snapshot = true
	snapSrc := newSource(t, cfg)
	snapRec := newRecorder(snapSrc, true)
	r2 := startRun(t, snapSrc, nil, snapRec)
	waitFor(t, 30*time.Second, "snapshot rows", func() bool { return len(snapRec.changes()) >= rows+1 })
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}

	// Expected JSON per row and column, computed by PostgreSQL in a session
	// with Plume's session parameters (interval style, time zone).
	want := expectedJSON(t, pg, db, streamSrc, rows+1)
	for path, changes := range map[string][]*event.Change{"stream": streamRec.changes(), "snapshot": snapRec.changes()} {
		if len(changes) != rows+1 {
			t.Fatalf("%s: %d rows, want %d", path, len(changes), rows+1)
		}
		sort.Slice(changes, func(i, j int) bool { return changes[i].After[0].(int64) < changes[j].After[0].(int64) })
		for _, ch := range changes {
			id := ch.After[0].(int64)
			for i, c := range typeMatrix {
				got := string(event.AppendJSON(nil, ch.After[i+1]))
				exp := want[id][i]
				if !jsonEqual(t, got, exp) {
					t.Errorf("%s: %s value %d: got %s, want %s", path, c.typ, id, got, exp)
				}
			}
		}
		// Column types are the catalog's names.
		tb := changes[0].Table
		for i, c := range typeMatrix {
			if got := tb.Columns[i+1].Type; got != c.typ && !(c.typ == "varbit" && got == "bit varying") &&
				!(c.typ == "char(5)" && got == "character(5)") && !(c.typ == "varchar(20)" && got == "character varying(20)") &&
				!(c.typ == "time" && got == "time without time zone") && !(c.typ == "time(3)" && got == "time(3) without time zone") &&
				!(c.typ == "timetz" && got == "time with time zone") && !(c.typ == "timestamp" && got == "timestamp without time zone") &&
				!(c.typ == "timestamptz" && got == "timestamp with time zone") {
				t.Errorf("%s: column %d type %q, want %q", path, i, got, c.typ)
			}
		}
	}
}

func expectedJSON(t *testing.T, pg *testharness.PG, db string, src *Source, n int) map[int64][]string {
	t.Helper()
	ctx := context.Background()
	conn, err := src.conn.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exprs := []string{"id"}
	for i, c := range typeMatrix {
		e := replaceCol(c.want, fmt.Sprintf("c%d", i))
		exprs = append(exprs, "coalesce(("+e+")::text, 'null')")
	}
	rows, err := conn.Query(ctx, `SELECT `+strings.Join(exprs, ", ")+` FROM types ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64][]string{}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		switch v := vals[0].(type) {
		case int32:
			id = int64(v)
		case int64:
			id = v
		}
		for _, v := range vals[1:] {
			out[id] = append(out[id], v.(string))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) != n {
		t.Fatalf("expected rows: %d", len(out))
	}
	return out
}

// replaceCol replaces the identifier c (not part of a longer word) with col.
func replaceCol(expr, col string) string {
	var b strings.Builder
	isWord := func(r byte) bool {
		return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
	}
	inStr := false
	for i := 0; i < len(expr); i++ {
		ch := expr[i]
		if ch == '\'' {
			inStr = !inStr
		}
		if !inStr && ch == 'c' && (i == 0 || !isWord(expr[i-1]) && expr[i-1] != '"') && (i+1 == len(expr) || !isWord(expr[i+1])) {
			b.WriteString(col)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// jsonEqual compares two JSON texts semantically, numbers exactly.
func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	va, err := decodeJSON(a)
	if err != nil {
		t.Errorf("Plume JSON %s: %v", a, err)
		return false
	}
	vb, err := decodeJSON(b)
	if err != nil {
		t.Errorf("expected JSON %s: %v", b, err)
		return false
	}
	return jsonValueEqual(va, vb)
}

func decodeJSON(s string) (any, error) {
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}

func jsonValueEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		ra, ok1 := new(big.Rat).SetString(string(x))
		rb, ok2 := new(big.Rat).SetString(string(y))
		return ok1 && ok2 && ra.Cmp(rb) == 0
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonValueEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !jsonValueEqual(v, w) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}
