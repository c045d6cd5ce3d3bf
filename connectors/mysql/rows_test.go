package mysql

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestDirectRowsMatchGoMySQL runs two sources side by side over the same
// binlog: one with the direct row decoder (rows.go), one with go-mysql's
// decoder and colType.fromBinlog. Every change must come out the same from
// both, value for value and Go type for Go type. The rows cover every
// column type of the type matrix at its edges (typesInsert) and a few
// hundred random rows, updates (full and MINIMAL row images, so absent
// columns too) and deletes.
func TestDirectRowsMatchGoMySQL(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, typesDDL)
	// A table the direct decoder leaves to go-mysql: the pre-5.6 temporal
	// formats (MYSQL_TYPE_DATETIME, _TIME, _TIMESTAMP).
	m.Exec(t, db, "SET GLOBAL mysql56_temporal_format = OFF; CREATE TABLE old (id int primary key, dt datetime, tm time, ts timestamp NULL DEFAULT NULL); SET GLOBAL mysql56_temporal_format = ON")

	// Length prefixes and pack lengths the type matrix does not reach: CHAR
	// and VARCHAR over 255 bytes (2-byte lengths, from 256 on), tiny/medium blobs (1 and
	// 3 bytes), a 2-byte ENUM, an 8-byte SET, BIT widths, DECIMAL shapes.
	var enum, set []string
	for i := 0; i < 300; i++ {
		enum = append(enum, fmt.Sprintf("'e%d'", i))
	}
	for i := 0; i < 64; i++ {
		set = append(set, fmt.Sprintf("'s%d'", i))
	}
	m.Exec(t, db, "CREATE TABLE wide (id int primary key, c200 char(200), vcl varchar(300) CHARACTER SET latin1, vbin varbinary(300), "+
		"tb tinyblob, mt mediumtext, mb mediumblob, e2 enum("+strings.Join(enum, ",")+"), s8 set("+strings.Join(set, ",")+"), "+
		"b7 bit(7), b33 bit(33), d1 decimal(1,0), d9 decimal(9,9), d18 decimal(18,4), d30 decimal(30,0), dt1 datetime(1), ts3 timestamp(3) NULL DEFAULT NULL, tm5 time(5), "+
		"c64 char(64), v256 varchar(256) CHARACTER SET latin1, v255 varchar(255) CHARACTER SET latin1)")

	direct := newTestSource(t, testConfig(t, m, db))
	cfg := testConfig(t, m, db)
	cfg.Pipeline += "-gomysql"
	viaGo := newTestSource(t, cfg)
	viaGo.noDirectRows = true
	emD, emG := &recEmitter{keep: true}, &recEmitter{keep: true}
	rD, rG := startRun(t, direct, nil, emD), startRun(t, viaGo, nil, emG)
	waitFor(t, rD, 20*time.Second, "initial commit", func() bool { return emD.commits() >= 1 })
	waitFor(t, rG, 20*time.Second, "initial commit", func() bool { return emG.commits() >= 1 })

	m.Exec(t, db, typesInsert)
	rng := rand.New(rand.NewSource(7))
	const random = 300
	for lo := 0; lo < random; lo += 50 {
		var vals []string
		for id := lo; id < lo+50; id++ {
			vals = append(vals, randomTypesRow(rng, 1000+id))
		}
		m.Exec(t, db, "SET SESSION sql_mode = ''; INSERT INTO types (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec1, dec2, f, d, b1, b64, b10, dt, dtm, dtm6, ts, ts0, tm, tm6, tm3, yr, c10, vc, vcl, ctl, tx, lt, arm, bin4, vb, bl, e, el, s, j, flag) VALUES "+strings.Join(vals, ","))
	}
	m.Exec(t, db, "SET SESSION sql_mode = ''; UPDATE types SET tm3 = '-12:34:56.789', dec2 = -dec2, vc = CONCAT(vc, 'é'), b10 = b10 ^ 1 WHERE id % 3 = 0")
	m.Exec(t, db, "SET SESSION sql_mode = ''; SET SESSION binlog_row_image = 'MINIMAL'; UPDATE types SET ti = ti DIV 2, tx = NULL WHERE id % 5 = 1; DELETE FROM types WHERE id % 7 = 2; SET SESSION binlog_row_image = 'FULL'")
	m.Exec(t, db, "SET SESSION sql_mode = ''; UPDATE types SET id = id + 100000 WHERE id BETWEEN 1000 AND 1010") // key changes
	m.Exec(t, db, "DELETE FROM types WHERE id % 11 = 4")
	var wide []string
	for id := 0; id < 100; id++ {
		wide = append(wide, randomWideRow(rng, id))
	}
	m.Exec(t, db, "SET SESSION sql_mode = ''; INSERT INTO wide VALUES "+strings.Join(wide, ","))
	m.Exec(t, db, "INSERT INTO old VALUES (1, '2024-02-29 12:34:56', '-838:59:59', '2001-02-03 04:05:06'), (2, NULL, '00:00:00', NULL)")
	m.Exec(t, db, "INSERT INTO types (id, vc) VALUES (999999, 'last')")

	last := func(em *recEmitter) func() bool {
		return func() bool {
			cs := em.changes()
			return len(cs) > 0 && cs[len(cs)-1].Subject == "id=999999"
		}
	}
	waitFor(t, rD, 60*time.Second, "the direct source's last row", last(emD))
	waitFor(t, rG, 60*time.Second, "go-mysql's last row", last(emG))
	for _, r := range []*running{rD, rG} {
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
	if n := direct.directEvents.Load(); n == 0 {
		t.Fatal("the direct source decoded no rows event itself")
	}
	if n := viaGo.directEvents.Load(); n != 0 {
		t.Fatalf("the go-mysql source decoded %d rows events directly", n)
	}
	cd, cg := emD.changes(), emG.changes()
	if len(cd) != len(cg) {
		t.Fatalf("direct decoding emitted %d changes, go-mysql %d", len(cd), len(cg))
	}
	if len(cd) < random {
		t.Fatalf("only %d changes", len(cd))
	}
	t.Logf("%d changes from %d rows events decoded directly", len(cd), direct.directEvents.Load())
	bad := 0
	for i := range cd {
		a, b := cd[i].Change, cg[i].Change
		if a.Op != b.Op || a.Table.Name != b.Table.Name || a.Index != b.Index {
			t.Fatalf("change %d: %s %s #%d, go-mysql %s %s #%d", i, a.Op, a.Table.Name, a.Index, b.Op, b.Table.Name, b.Index)
		}
		for _, img := range [][2][]event.Value{{a.Before, b.Before}, {a.After, b.After}} {
			if (img[0] == nil) != (img[1] == nil) || len(img[0]) != len(img[1]) {
				t.Fatalf("change %d (%s %s): image shapes differ", i, a.Op, cd[i].Subject)
			}
			for j := range img[0] {
				if d := sameValue(img[0][j], img[1][j]); d != "" && bad < 10 {
					bad++
					t.Errorf("change %d (%s key %s) column %s: %s", i, a.Op, cd[i].Subject, a.Table.Columns[j].Name, d)
				}
			}
		}
	}
}

// sameValue describes how direct differs from viaGo ("" if not at all).
func sameValue(direct, viaGo event.Value) string {
	if fmt.Sprintf("%T", direct) != fmt.Sprintf("%T", viaGo) {
		return fmt.Sprintf("direct %T %v, go-mysql %T %v", direct, direct, viaGo, viaGo)
	}
	if a, ok := direct.([]byte); ok {
		if !bytes.Equal(a, viaGo.([]byte)) {
			return fmt.Sprintf("direct %x, go-mysql %x", a, viaGo)
		}
		return ""
	}
	if fmt.Sprintf("%#v", direct) != fmt.Sprintf("%#v", viaGo) {
		return fmt.Sprintf("direct %#v, go-mysql %#v", direct, viaGo)
	}
	return ""
}

// randomWideRow is a VALUES tuple for the wide table, each value NULL one
// time in ten.
func randomWideRow(rng *rand.Rand, id int) string {
	or := func(v string) string {
		if rng.Intn(10) == 0 {
			return "NULL"
		}
		return v
	}
	rep := func(s string, n int) string { return "'" + strings.Repeat(s, rng.Intn(n+1)) + "'" }
	digits := func(n int) string {
		var sb strings.Builder
		for i := 0; i < n; i++ {
			sb.WriteByte(byte('0' + rng.Intn(10)))
		}
		return sb.String()
	}
	var setv []string
	for i := 0; i < 64; i++ {
		if rng.Intn(3) == 0 {
			setv = append(setv, fmt.Sprintf("s%d", i))
		}
	}
	return "(" + strings.Join([]string{
		fmt.Sprint(id), or(rep("é", 200)), or(rep("ÿ", 300)), or(fmt.Sprintf("REPEAT(x'ab', %d)", rng.Intn(301))),
		or(fmt.Sprintf("REPEAT(x'cd', %d)", rng.Intn(256))), or(rep("長", 3000)), or(fmt.Sprintf("REPEAT(x'00ff', %d)", rng.Intn(40000))),
		or(fmt.Sprintf("'e%d'", rng.Intn(300))), or("'" + strings.Join(setv, ",") + "'"),
		or(fmt.Sprint(rng.Intn(128))), or(fmt.Sprint(rng.Int63n(1 << 33))),
		or(fmt.Sprintf("-%s", digits(1))), or("0." + digits(9)), or(fmt.Sprintf("%s.%s", digits(14), digits(4))), or("-" + digits(30)),
		or(fmt.Sprintf("'2%s-0%d-1%d 0%d:1%d:2%d.%s'", digits(3), 1+rng.Intn(9), rng.Intn(9), rng.Intn(9), rng.Intn(6), rng.Intn(6), digits(1))),
		or(fmt.Sprintf("'20%02d-0%d-1%d 0%d:1%d:2%d.%s'", 1+rng.Intn(36), 1+rng.Intn(9), rng.Intn(9), rng.Intn(9), rng.Intn(6), rng.Intn(6), digits(3))),
		or(fmt.Sprintf("'-%d:%02d:%02d.%s'", rng.Intn(839), rng.Intn(60), rng.Intn(60), digits(5))),
		or(rep("😀", 64)), or(rep("y", 256)), or(rep("z", 255)),
	}, ", ") + ")"
}

// randomTypesRow is a VALUES tuple for the types table's non-spatial
// columns, each NULL one time in ten.
func randomTypesRow(rng *rand.Rand, id int) string {
	pick := func(vs ...string) string { return vs[rng.Intn(len(vs))] }
	or := func(v string) string {
		if rng.Intn(10) == 0 {
			return "NULL"
		}
		return v
	}
	num := func(lo, hi int64) string { return fmt.Sprint(lo + rng.Int63n(hi-lo+1)) }
	digits := func(n int) string {
		var sb strings.Builder
		for i := 0; i < n; i++ {
			sb.WriteByte(byte('0' + rng.Intn(10)))
		}
		return sb.String()
	}
	sign := func() string { return pick("", "-") }
	frac := func(n int) string { return "." + digits(n) }
	date := func() string {
		return fmt.Sprintf("%04d-%02d-%02d", 1000+rng.Intn(9000), 1+rng.Intn(12), 1+rng.Intn(28))
	}
	clock := func() string { return fmt.Sprintf("%02d:%02d:%02d", rng.Intn(24), rng.Intn(60), rng.Intn(60)) }
	tsv := func() string {
		return fmt.Sprintf("'%04d-%02d-%02d %s%s'", 1971+rng.Intn(66), 1+rng.Intn(12), 1+rng.Intn(28), clock(), frac(6))
	}
	timev := func(fd int) string {
		return fmt.Sprintf("'%s%d:%02d:%02d%s'", sign(), rng.Intn(839), rng.Intn(60), rng.Intn(60), frac(fd))
	}
	text := func(n int) string {
		runes := []rune("abcxyz 09é€😀長'\\\"")
		var sb strings.Builder
		for i := rng.Intn(n + 1); i > 0; i-- {
			r := runes[rng.Intn(len(runes))]
			switch r {
			case '\'', '\\':
				sb.WriteRune('\\')
			}
			sb.WriteRune(r)
		}
		return "'" + sb.String() + "'"
	}
	latin := func(n int) string {
		runes := []rune("abcéÿ ")
		var sb strings.Builder
		for i := rng.Intn(n + 1); i > 0; i-- {
			sb.WriteRune(runes[rng.Intn(len(runes))])
		}
		return "'" + sb.String() + "'"
	}
	hexv := func(n int) string {
		b := make([]byte, rng.Intn(n+1))
		rng.Read(b)
		return fmt.Sprintf("x'%x'", b)
	}
	cols := []string{
		fmt.Sprint(id),
		or(num(-128, 127)), or(num(0, 255)), or(num(-32768, 32767)), or(num(0, 65535)),
		or(num(-8388608, 8388607)), or(num(0, 16777215)),
		or(num(-2147483648, 2147483647)), or(num(0, 4294967295)),
		or(fmt.Sprint(int64(rng.Uint64()))), or(fmt.Sprint(rng.Uint64())),
		or("'" + sign() + digits(1+rng.Intn(35)) + frac(1+rng.Intn(30)) + "'"),
		or(sign() + digits(1+rng.Intn(8)) + frac(2)),
		or(sign() + digits(1+rng.Intn(5)) + frac(rng.Intn(3))),
		or(fmt.Sprintf("%g", rng.NormFloat64()*1e10)),
		or(pick("b'0'", "b'1'")), or(fmt.Sprintf("%d", rng.Uint64()>>rng.Intn(64))), or(num(0, 1023)),
		or("'" + pick(date(), "0000-00-00") + "'"),
		or("'" + date() + " " + clock() + "'"),
		or("'" + date() + " " + clock() + frac(rng.Intn(7)) + "'"),
		or(tsv()), or(tsv()),
		or(timev(0)), or(timev(6)), or(timev(3)),
		or(pick("0", num(1901, 2155))),
		or(text(10)), or(text(100)), or(latin(20)), or(latin(5)),
		or(text(300)), or(text(2000)), or(pick("'abc'", "''")),
		or(hexv(4)), or(hexv(10)), or(hexv(300)),
		or(pick("'a'", "'b'", "'ç'", "''")), or(pick("'x'", "'é'")),
		or(pick("''", "'x'", "'y,z'", "'x,y,z'")),
		or(pick(`'{"k": [1, 2.5, "v"]}'`, "'[]'", "'null'")),
		or(pick("true", "false")),
	}
	return "(" + strings.Join(cols, ", ") + ")"
}
