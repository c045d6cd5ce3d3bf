package sql

import (
	"encoding/base64"
	"testing"
)

// TestTypesRoundTrip writes one row of every supported kind of column and
// reads it back as the database's own text.
func TestTypesRoundTrip(t *testing.T) {
	type field struct {
		col    string
		value  any
		read   string // expression that reads the column back
		want   string // the database's text form
		update any    // value of a second upsert of the same key (nil: NULL)
	}
	pgFields := []field{
		{col: "n", value: num("12345678901234567890.12345678901234567890"), want: "12345678901234567890.12345678901234567890"},
		{col: "big", value: num("9007199254740993"), want: "9007199254740993"},
		{col: "f", value: num("0.1"), want: "0.1"},
		{col: "ts", value: "2024-05-01T12:34:56.123456+02:00", read: "(ts AT TIME ZONE 'UTC')::text", want: "2024-05-01 10:34:56.123456"},
		{col: "tsz", value: "2024-05-01 12:34:56", read: "(tsz AT TIME ZONE 'UTC')::text", want: "2024-05-01 12:34:56"},
		{col: "tsl", value: "2024-05-01T12:34:56.5+02:00", want: "2024-05-01 10:34:56.5"},
		{col: "tsl2", value: "2024-05-01T12:34:56", want: "2024-05-01 12:34:56"},
		{col: "d", value: "2024-05-01", want: "2024-05-01"},
		{col: "j", value: map[string]any{"a": num("1.10"), "b": []any{true, nil, "x"}}, want: `{"a": 1.10, "b": [true, null, "x"]}`},
		{col: "j2", value: `{"x": 1}`, want: `{"x": 1}`},
		{col: "j3", value: "plain", want: `"plain"`},
		{col: "js", value: []any{num("1"), map[string]any{"k": "<v>"}}, want: `[1,{"k":"<v>"}]`},
		{col: "b", value: true, want: "t", update: false},
		{col: "b2", value: false, want: "f"},
		{col: "t", value: `héllo <&> "quoted"`, want: `héllo <&> "quoted"`},
		{col: "tj", value: map[string]any{"k": num("1")}, want: `{"k":1}`},
		{col: "nul", value: nil, want: "NULL", update: "now set"},
		{col: "arr", value: []any{num("1"), num("2"), nil}, want: "{1,2,NULL}"},
		{col: "tags", value: []any{"a b", `c"d`, "e,f"}, want: `{"a b","c\"d","e,f"}`},
		{col: "bin", value: base64.StdEncoding.EncodeToString([]byte("hello\x00")), want: `\x68656c6c6f00`},
		{col: "u", value: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", want: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{col: "c", value: "ab", want: "ab "},
		{col: "pos", value: num("42"), want: "42"},
		{col: "i", value: 7.0, want: "7"}, // a float64 from a decoder without UseNumber
	}
	pgDDL := `CREATE DOMAIN erp.posint AS integer CHECK (VALUE > 0);
	CREATE TABLE erp.types (
		id bigint PRIMARY KEY, n numeric(40,20), big bigint, f double precision,
		ts timestamptz, tsz timestamptz, tsl timestamp, tsl2 timestamp(3), d date,
		j jsonb, j2 jsonb, j3 jsonb, js json, b boolean, b2 boolean, t text, tj text, nul text,
		arr integer[], tags text[], bin bytea, u uuid, c char(3), pos erp.posint, i integer)`

	myFields := []field{
		{col: "n", value: num("12345678901234567890.12345678901234567890"), want: "12345678901234567890.12345678901234567890"},
		{col: "big", value: num("18446744073709551615"), want: "18446744073709551615"},
		{col: "f", value: num("0.1"), want: "0.1"},
		{col: "ts", value: "2024-05-01T12:34:56.123456+02:00", read: "UNIX_TIMESTAMP(ts)", want: "1714559696.123456"},
		{col: "dt", value: "2024-05-01T12:34:56.5+02:00", want: "2024-05-01 10:34:56.500000"},
		{col: "dt2", value: "2024-05-01 12:34:56", want: "2024-05-01 12:34:56"},
		{col: "d", value: "2024-05-01", want: "2024-05-01"},
		{col: "j", value: map[string]any{"a": num("1.10"), "b": []any{true, nil, "x"}}, read: "JSON_EXTRACT(j, '$.a')", want: "1.10"},
		{col: "j3", value: "plain", want: `"plain"`},
		{col: "b", value: true, want: "1", update: false},
		{col: "t", value: `héllo <&> "quoted"`, want: `héllo <&> "quoted"`},
		{col: "nul", value: nil, want: "NULL", update: "now set"},
		{col: "bin", value: base64.StdEncoding.EncodeToString([]byte("hello\x00")), read: "HEX(bin)", want: "68656C6C6F00"},
		{col: "bits", value: num("5"), read: "bits+0", want: "5"},
		{col: "i", value: 7.0, want: "7"},
	}
	myDDL := `CREATE TABLE types (
		id BIGINT PRIMARY KEY, n DECIMAL(40,20), big BIGINT UNSIGNED, f DOUBLE,
		ts TIMESTAMP(6) NULL, dt DATETIME(6), dt2 DATETIME, d DATE,
		j JSON, j3 JSON, b BOOL, t TEXT, nul TEXT, bin VARBINARY(16), bits BIT(8), i INT)`

	forEachDB(t, func(t *testing.T, db *testDB) {
		fields, ddl := myFields, myDDL
		if db.pg() {
			fields, ddl = pgFields, pgDDL
		}
		db.exec(t, ddl)
		tgt, _ := newTarget(t, db, func(c *Config) {
			c.Table = db.schema + ".types"
			c.Key = []string{"id"}
		})

		row := map[string]any{"id": num("1")}
		row2 := map[string]any{"id": num("1")}
		sel := "SELECT "
		for i, f := range fields {
			row[f.col] = f.value
			row2[f.col] = f.update
			if i > 0 {
				sel += ", "
			}
			if f.read != "" {
				sel += f.read
			} else {
				sel += f.col
			}
		}
		sel += " FROM " + db.schema + ".types"
		mustApply(t, tgt, (&msgs{}).ins(row).batch())
		got := db.rows(t, sel)
		if len(got) != 1 {
			t.Fatalf("rows: %v", got)
		}
		for i, f := range fields {
			if got[0][i] != f.want {
				t.Errorf("%s: got %q, want %q", f.col, got[0][i], f.want)
			}
		}

		// The same key again: an update, NULLs included.
		mustApply(t, tgt, (&msgs{from: 1}).upd(row2).batch())
		got = db.rows(t, sel)
		for i, f := range fields {
			want := "NULL"
			switch v := f.update.(type) {
			case string:
				want = v
			case bool:
				want = map[bool]string{true: db.pick("t", "1"), false: db.pick("f", "0")}[v]
			}
			if got[0][i] != want {
				t.Errorf("update %s: got %q, want %q", f.col, got[0][i], want)
			}
		}
	})
}
