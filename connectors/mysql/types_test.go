package mysql

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

const typesDDL = `CREATE TABLE types (
 id int primary key,
 ti tinyint, tiu tinyint unsigned, si smallint, siu smallint unsigned, mi mediumint, miu mediumint unsigned,
 i int, iu int unsigned, bi bigint, biu bigint unsigned,
 dec1 decimal(65,30), dec2 decimal(10,2),
 f float, d double,
 b1 bit(1), b64 bit(64), b10 bit(10),
 dt date, dtm datetime, dtm6 datetime(6), ts timestamp(6) NULL DEFAULT NULL, ts0 timestamp NULL DEFAULT NULL,
 tm time, tm6 time(6), tm3 time(3), yr year,
 c10 char(10), vc varchar(100), vcl varchar(20) CHARACTER SET latin1, ctl char(5) CHARACTER SET latin1,
 tx text, lt longtext, arm varchar(10) CHARACTER SET armscii8,
 bin4 binary(4), vb varbinary(10), bl blob,
 e enum('a','b','ç'), el enum('x','é') CHARACTER SET latin1, s set('x','y','z'),
 j json,
 g geometry, pt point, mp multipolygon, mpt multipoint, gsr geometry, gce geometry, flag bool,
 gv int AS (i * 2) VIRTUAL, gs varchar(120) AS (CONCAT(vc, '!')) STORED
)`

const typesInsert = `SET SESSION sql_mode = ''; SET SESSION time_zone = '+05:30';
INSERT INTO types (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec1, dec2, f, d, b1, b64, b10,
 dt, dtm, dtm6, ts, ts0, tm, tm6, tm3, yr, c10, vc, vcl, ctl, tx, lt, arm, bin4, vb, bl, e, el, s, j, g, pt, mp, mpt, gsr, gce, flag) VALUES
(1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
 '-99999999999999999999999999999999999.999999999999999999999999999999', -12345678.90, -1234.5, -1.7976931348623157e308,
 b'0', b'0', b'1010101010',
 '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00.000000', '1970-01-01 05:30:01.000001', '2000-01-01 05:30:00',
 '-838:59:59', '-838:59:59.000000', '-00:00:01.5', 1901,
 'a', '', 'é€Ÿ', 'ÿ', 'emoji 😀 ok', '', 'abc',
 'ab', x'00ff', x'', 'ç', 'é', 'x,z', '{"a": [1, 2.5, "x"], "b": null}',
 ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0),(1 1,2 1,2 2,1 1))'), POINT(1.5, -2),
 ST_GeomFromText('MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))'),
 ST_GeomFromText('MULTIPOINT(1 1,2 2.25)'), ST_GeomFromText('POINT(1 2)', 4326), ST_GeomFromText('GEOMETRYCOLLECTION EMPTY'), true),
(2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
 '99999999999999999999999999999999999.999999999999999999999999999999', 0.01, 1.5, 0.1,
 b'1', b'1111111111111111111111111111111111111111111111111111111111111111', b'0',
 '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999999', '2038-01-19 08:44:07.999999', '2024-02-29 23:59:59',
 '838:59:59', '838:59:59.000000', '25:00:00.5', 2155,
 'trail  ', 'q " b \\\\ n \n t \t u \0 end', 'plain', 'abc', REPEAT('x', 300), REPEAT('長', 1000), NULL,
 x'01020304', x'', x'deadbeef', 'a', 'x', '', '[]',
 ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1,2 3))'), POINT(0, 0),
 NULL, NULL, NULL, NULL, false),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00.000000', '0000-00-00 00:00:00', NULL,
 NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL)`

// typeChecks says how to read each column's expected value from the server
// and how to compare it with Plume's JSON.
var typeChecks = []struct{ col, expr, mode string }{
	{"ti", "CAST(ti AS CHAR)", "num"}, {"tiu", "CAST(tiu AS CHAR)", "num"},
	{"si", "CAST(si AS CHAR)", "num"}, {"siu", "CAST(siu AS CHAR)", "num"},
	{"mi", "CAST(mi AS CHAR)", "num"}, {"miu", "CAST(miu AS CHAR)", "num"},
	{"i", "CAST(i AS CHAR)", "num"}, {"iu", "CAST(iu AS CHAR)", "num"},
	{"bi", "CAST(bi AS CHAR)", "num"}, {"biu", "CAST(biu AS CHAR)", "num"},
	{"dec1", "CAST(dec1 AS CHAR)", "str"}, {"dec2", "CAST(dec2 AS CHAR)", "str"},
	{"f", "CAST(f AS CHAR)", "float"}, {"d", "CAST(d AS CHAR)", "float"},
	{"b1", "CAST(b1 AS UNSIGNED)", "num"}, {"b64", "CAST(b64 AS UNSIGNED)", "num"}, {"b10", "CAST(b10 AS UNSIGNED)", "num"},
	{"dt", "CAST(dt AS CHAR)", "str"},
	{"dtm", "REPLACE(CAST(dtm AS CHAR), ' ', 'T')", "str"},
	{"dtm6", "REPLACE(CAST(dtm6 AS CHAR), ' ', 'T')", "str"},
	{"ts", "CONCAT(REPLACE(CAST(ts AS CHAR), ' ', 'T'), 'Z')", "str"},
	{"ts0", "CONCAT(REPLACE(CAST(ts0 AS CHAR), ' ', 'T'), 'Z')", "str"},
	{"tm", "CAST(tm AS CHAR)", "str"}, {"tm6", "CAST(tm6 AS CHAR)", "str"}, {"tm3", "CAST(tm3 AS CHAR)", "str"},
	{"yr", "CAST(yr AS UNSIGNED)", "num"},
	{"c10", "c10", "str"}, {"vc", "vc", "str"}, {"vcl", "vcl", "str"}, {"ctl", "ctl", "str"},
	{"tx", "tx", "str"}, {"lt", "lt", "str"}, {"arm", "HEX(arm)", "hex"},
	{"bin4", "HEX(bin4)", "hex"}, {"vb", "HEX(vb)", "hex"}, {"bl", "HEX(bl)", "hex"},
	{"e", "e", "str"}, {"el", "el", "str"}, {"s", "s", "str"}, {"j", "j", "str"},
	{"g", "ST_AsText(g)", "str"}, {"pt", "ST_AsText(pt)", "str"}, {"mp", "ST_AsText(mp)", "str"},
	{"mpt", "ST_AsText(mpt)", "str"}, {"gce", "ST_AsText(gce)", "str"},
	{"gsr", "IF(ST_SRID(gsr) = 0, ST_AsText(gsr), CONCAT('SRID=', ST_SRID(gsr), ';', ST_AsText(gsr)))", "str"},
	{"flag", "CAST(flag AS CHAR)", "num"},
	{"gv", "CAST(gv AS CHAR)", "num"}, {"gs", "gs", "str"},
}

// expectedRows reads the expected JSON values per id and column from the
// server itself.
func expectedRows(t *testing.T, m *testharness.MySQL, db string) map[string]map[string]string {
	c := m.Connect(t, db)
	if _, err := c.Execute("SET time_zone = '+00:00'"); err != nil {
		t.Fatal(err)
	}
	exprs := make([]string, len(typeChecks))
	for i, ck := range typeChecks {
		exprs[i] = ck.expr
	}
	r, err := c.Execute("SELECT id, " + strings.Join(exprs, ", ") + " FROM types ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for row := 0; row < r.RowNumber(); row++ {
		id, _ := r.GetString(row, 0)
		vals := map[string]string{}
		for i, ck := range typeChecks {
			if null, _ := r.IsNull(row, i+1); null {
				vals[ck.col] = "null"
				continue
			}
			s, _ := r.GetString(row, i+1)
			vals[ck.col] = s
		}
		out[id] = vals
	}
	return out
}

// checkImage compares one Plume image with the server's values.
func checkImage(t *testing.T, what string, got map[string]string, want map[string]string) {
	t.Helper()
	for _, ck := range typeChecks {
		g, w := got[ck.col], want[ck.col]
		if w == "null" {
			if g != "null" {
				t.Errorf("%s %s: got %s, want null", what, ck.col, g)
			}
			continue
		}
		ok := false
		switch ck.mode {
		case "num":
			ok = g == w
		case "float":
			gf, err1 := strconv.ParseFloat(g, 64)
			wf, err2 := strconv.ParseFloat(w, 64)
			ok = err1 == nil && err2 == nil && gf == wf
		case "str":
			ok = g == jsonString(w)
		case "hex":
			var s string
			if json.Unmarshal([]byte(g), &s) == nil {
				b, err := base64.StdEncoding.DecodeString(s)
				ok = err == nil && strings.EqualFold(hex.EncodeToString(b), w)
				g = hex.EncodeToString(b)
			}
		}
		if !ok {
			t.Errorf("%s %s (%s): plume %s, server %q", what, ck.col, ck.mode, g, w)
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	// encoding/json escapes <, >, & and U+2028/9; event.AppendJSONString does
	// not escape <>&: undo those for comparison.
	r := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&")
	return r.Replace(string(b))
}

func TestTypeMatrix(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, typesDDL)

	src := newTestSource(t, testConfig(t, m, db))
	em := &recEmitter{keep: true}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	m.Exec(t, db, typesInsert)
	waitFor(t, r, 20*time.Second, "3 inserts", func() bool { return len(em.changes()) >= 3 })

	want := expectedRows(t, m, db)
	stream := map[string]rec{}
	for _, c := range em.changes() {
		if c.Op != "insert" {
			t.Fatalf("unexpected %s", c.Op)
		}
		id := c.After["id"]
		stream[id] = c
		checkImage(t, "binlog row "+id, c.After, want[id])
	}
	if len(stream) != 3 {
		t.Fatalf("got rows %v", stream)
	}
	// Column type names and key.
	tbl := stream["1"].Change.Table
	types := map[string]string{}
	for _, c := range tbl.Columns {
		types[c.Name] = c.Type
	}
	for col, typ := range map[string]string{"biu": "bigint unsigned", "dec1": "decimal(65,30)", "dtm6": "datetime(6)",
		"ts": "timestamp(6)", "tm": "time", "vcl": "varchar", "bin4": "binary", "bl": "blob", "lt": "longtext",
		"e": "enum", "pt": "point", "b64": "bit(64)", "j": "longtext"} {
		if types[col] != typ {
			t.Errorf("column %s type %q, want %q", col, types[col], typ)
		}
	}
	if len(tbl.Key) != 1 || tbl.Columns[tbl.Key[0]].Name != "id" {
		t.Errorf("key %v", tbl.Key)
	}

	// Update and delete: the before images are rendered the same way.
	m.Exec(t, db, "SET SESSION sql_mode = ''; UPDATE types SET tiu = 1 WHERE id = 1; UPDATE types SET siu = 1 WHERE id = 2; DELETE FROM types WHERE id = 3")
	waitFor(t, r, 20*time.Second, "update and delete", func() bool { return len(em.changes()) >= 6 })
	for _, c := range em.changes()[3:] {
		id := c.Before["id"]
		checkImage(t, c.Op+" before "+id, c.Before, want[id])
		if c.After != nil {
			stream[id] = c
		}
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	// A snapshot of the same rows renders every value exactly like the binlog.
	cfg := testConfig(t, m, db)
	cfg.Pipeline += "-snap"
	cfg.Snapshot = true
	snap := newTestSource(t, cfg)
	em2 := &recEmitter{}
	r2 := startRun(t, snap, nil, em2)
	waitFor(t, r2, 30*time.Second, "snapshot rows", func() bool { return countOps(em2.changes(), true) >= 2 })
	want = expectedRows(t, m, db)
	for _, c := range em2.changes() {
		if !c.Snapshot {
			continue
		}
		id := c.After["id"]
		checkImage(t, "snapshot row "+id, c.After, want[id])
		if flat(c.After) != flat(stream[id].After) {
			t.Errorf("snapshot row %s differs from binlog row:\n%s\n%s", id, flat(c.After), flat(stream[id].After))
		}
		if !strings.HasPrefix(c.ID, c.Pos+"/"+db+".types/id=") || !strings.HasPrefix(c.Pos, "snapshot:") {
			t.Errorf("snapshot id %q pos %q", c.ID, c.Pos)
		}
	}
}
