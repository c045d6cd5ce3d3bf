package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// keyKindCases are edge values per chunkable key type, as SQL input text
// (ISO dates with explicit offsets: read the same under every session
// setting).
var keyKindCases = []struct {
	name, typ, kind string
	vals            []string
}{
	{"numeric", "numeric", kindNumeric, []string{
		"NaN", "Infinity", "-Infinity", "NaN", "0", "-0", "0.000", "1", "1.0", "1.00", "-1", "-1.000",
		"0.1", "0.10000000000000000001", "0.09999999999999999999", "0.3", "0.30000000000000004",
		"9007199254740992", "9007199254740993", "-9007199254740993", "1e-30", "-1e-30", "1e-1000",
		"123456789012345678901234567890.123456789", "-123456789012345678901234567890", "1e1000", "-1e1000",
		"99999999999999999999.9999999999", "100000000000000000000", "0.33333333333333333333", "0.33333333333333333334"}},
	{"numeric_domain", "kk_num", kindNumeric, []string{"NaN", "2.50", "2.5", "-Infinity", "1e20", "Infinity", "-3"}},
	{"date", "date", kindDate, []string{
		"infinity", "-infinity", "4714-11-24 BC", "4714-11-25 BC", "0001-01-01 BC", "0001-12-31 BC", "0044-03-15 BC",
		"0001-01-01", "0004-02-29", "1900-02-28", "1900-03-01", "1969-12-31", "1970-01-01", "1999-12-31", "2000-01-01",
		"2000-02-29", "2000-03-01", "2024-02-29", "9999-12-31", "10000-01-01", "5874897-12-31", "2000-01-01"}},
	{"timestamp", "timestamp", kindTimestamp, []string{
		"infinity", "-infinity", "4714-11-24 00:00:00 BC", "4714-11-24 00:00:00.000001 BC", "0044-03-15 12:00:00.5 BC",
		"0001-12-31 23:59:59.999999 BC", "0001-01-01 00:00:00", "1969-12-31 23:59:59.999999", "1970-01-01 00:00:00",
		"1999-12-31 23:59:59.999999", "2000-01-01 00:00:00", "2000-01-01 00:00:00.000001", "2024-02-29 12:34:56.789",
		"2024-02-29 12:34:56.789000", "9999-12-31 23:59:59.999999", "10000-01-01 00:00:00", "294276-12-31 23:59:59.999999"}},
	{"timestamptz", "timestamptz", kindTimestamptz, []string{
		"infinity", "-infinity", "4714-11-24 00:00:00+00 BC", "0044-03-15 12:00:00.5+00 BC", "0001-01-01 00:00:00+00",
		"0001-01-01 00:00:00+00 BC", "1969-12-31 23:59:59.999999+00", "1970-01-01 00:00:00+00",
		"2000-01-01 00:00:00+01", "1999-12-31 23:00:00+00", "2000-01-01 01:00:00+01", "2000-01-01 00:00:00+00",
		"2000-01-01 05:45:00.000001+05:45", "2024-03-10 02:30:00-05", "2024-03-10 07:30:00+00",
		"294276-12-31 23:59:59.999999+00", "294276-12-31 23:59:59.999998+00", "1999-12-31 23:59:59.999999-00:00:01"}},
	{"timestamptz_domain", "kk_ts2", kindTimestamptz, []string{"infinity", "2000-01-01 00:00:00+00", "-infinity", "0001-01-01 00:00:00+00 BC"}},
	{"bytea", "bytea", kindBytea, []string{
		`\x`, `\x00`, `\x0000`, `\x01`, `\x00ff`, `\xff`, `\xff00`, `\x7f`, `\x80`, `\xffff`, `\x`, `\x61`, `\x6162`}},
	{"bool", "boolean", kindBool, []string{"true", "false", "true", "false"}},
	{"oid", "oid", kindOID, []string{"0", "1", "2147483647", "2147483648", "4294967295", "0"}},
	{"int8", "bigint", kindInt, []string{"0", "-9223372036854775808", "9223372036854775807", "-1", "1"}},
	{"int2", "smallint", kindInt, []string{"0", "-32768", "32767", "-1"}},
	{"text", "varchar", kindText, []string{"", "a", "B", "é", "z", "ab", "a b", "\u007f", "\U0001F600", "Z", "\u00ff"}},
	{"uuid", "uuid", kindUUID, []string{"ffffffff-ffff-ffff-ffff-ffffffffffff", "00000000-0000-0000-0000-000000000000",
		"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12", "7fffffff-0000-0000-0000-000000000000"}},
}

// TestKeyKindOrder checks each chunkable key type against PostgreSQL's own
// btree order: edge values are inserted, PostgreSQL ranks them (ORDER BY,
// dense_rank for equalities), and Go's comparator must give exactly the same
// order and equalities from the bound text (boundExpr, computed in a session
// with odd DateStyle/TimeZone/bytea_output/extra_float_digits and in
// Plume's), from the values the replication stream decodes, and across the
// two. The chunk query's parameter (paramText/paramExpr) must select exactly
// the value's equality group in the odd session.
func TestKeyKindOrder(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	ctx := context.Background()
	pg.Exec(t, db, `CREATE DOMAIN kk_num AS numeric CHECK (VALUE IS NOT NULL);
		CREATE DOMAIN kk_ts AS timestamptz;
		CREATE DOMAIN kk_ts2 AS kk_ts;
		CREATE DOMAIN kk_txt AS text;
		CREATE TYPE kk_mood AS ENUM ('sad', 'ok', 'happy');
		CREATE DOMAIN kk_mood2 AS kk_mood`)
	for _, c := range keyKindCases {
		pg.Exec(t, db, fmt.Sprintf(`CREATE TABLE kk_%s (n int PRIMARY KEY, v %s)`, c.name, c.typ))
	}
	cfg := testConfig(pg, db, "keykinds", "public.kk_*")
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	want := 0
	for _, c := range keyKindCases {
		for i, v := range c.vals {
			pg.Exec(t, db, fmt.Sprintf(`INSERT INTO kk_%s VALUES ($1, $2::text::%s)`, c.name, c.typ), i, v)
			want++
		}
	}
	waitFor(t, 60*time.Second, "streamed inserts", func() bool { return len(rec.changes()) >= want })
	streamed := map[string]map[int64]event.Value{}
	for _, ch := range rec.changes() {
		tb := strings.TrimPrefix(ch.Table.Name, "kk_")
		if streamed[tb] == nil {
			streamed[tb] = map[int64]event.Value{}
		}
		streamed[tb][ch.After[0].(int64)] = ch.After[1]
	}

	plume, err := src.conn.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer plume.Close(ctx)
	odd := pg.Connect(t, db)
	if _, err := odd.Exec(ctx, `SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kathmandu';
		SET extra_float_digits = -3; SET bytea_output = 'escape'; SET IntervalStyle = 'sql_standard'`); err != nil {
		t.Fatal(err)
	}
	reg := newTypeRegistry()
	for _, typ := range []struct{ name, kind string }{{"kk_txt", kindText}, {"kk_mood", ""}, {"kk_mood2", ""}, {"kk_ts2", kindTimestamptz}, {"kk_num", kindNumeric}} {
		var oid uint32
		if err := plume.QueryRow(ctx, `SELECT $1::regtype::oid`, typ.name).Scan(&oid); err != nil {
			t.Fatal(err)
		}
		if k, err := keyKind(ctx, plume, reg, oid); err != nil || k != typ.kind {
			t.Errorf("keyKind(%s) = %q, %v; want %q", typ.name, k, err, typ.kind)
		}
	}

	for _, c := range keyKindCases {
		t.Run(c.name, func(t *testing.T) {
			var oid uint32
			if err := plume.QueryRow(ctx, `SELECT atttypid FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'v'`, "kk_"+c.name).Scan(&oid); err != nil {
				t.Fatal(err)
			}
			kind, err := keyKind(ctx, plume, reg, oid)
			if err != nil || kind != c.kind {
				t.Fatalf("kind %q, %v; want %q", kind, err, c.kind)
			}
			type row struct {
				n      int64
				bound  string
				rank   int64
				bv, ev keyVal
			}
			q := fmt.Sprintf(`SELECT n::int8, %s, dense_rank() OVER (ORDER BY v%s) FROM kk_%s ORDER BY v%[2]s, n`,
				boundExpr(kind, "v"), map[bool]string{true: ` COLLATE "C"`}[kind == kindText], c.name)
			read := func(conn *pgx.Conn) []row {
				rows, err := conn.Query(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				var out []row
				for rows.Next() {
					var r row
					if err := rows.Scan(&r.n, &r.bound, &r.rank); err != nil {
						t.Fatal(err)
					}
					out = append(out, r)
				}
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				return out
			}
			rows := read(odd)
			if got := read(plume); !slices.EqualFunc(got, rows, func(a, b row) bool { return a.n == b.n && a.bound == b.bound && a.rank == b.rank }) {
				t.Fatalf("bound text depends on the session:\nodd    %+v\nplume  %+v", rows, got)
			}
			if len(rows) != len(c.vals) {
				t.Fatalf("%d rows, want %d", len(rows), len(c.vals))
			}
			var dump strings.Builder
			defer func() {
				if t.Failed() {
					t.Logf("values in PostgreSQL's order:\n%s", dump.String())
				}
			}()
			for i := range rows {
				r := &rows[i]
				if r.bv, err = parseKeyText(kind, r.bound); err != nil {
					t.Fatal(err)
				}
				sv, ok := streamed[c.name][r.n]
				if !ok {
					t.Fatalf("row %d not streamed", r.n)
				}
				if r.ev, ok = keyValOf(kind, sv); !ok {
					t.Fatalf("keyValOf(%q, %#v) failed", kind, sv)
				}
				fmt.Fprintf(&dump, "  %-45.60q bound %-28.60q stream %.60v rank %d\n", c.vals[r.n], r.bound, sv, r.rank)
			}
			sign := func(x int64) int {
				switch {
				case x < 0:
					return -1
				case x > 0:
					return 1
				}
				return 0
			}
			kinds := []string{kind}
			for _, a := range rows {
				for _, b := range rows {
					w := sign(a.rank - b.rank)
					for _, p := range [][2]keyVal{{a.bv, b.bv}, {a.ev, b.ev}, {a.bv, b.ev}, {a.ev, b.bv}} {
						if got := compareKey(kinds, []keyVal{p[0]}, []keyVal{p[1]}); got != w {
							t.Errorf("compare(%.60q, %.60q) = %d, PostgreSQL says %d (bounds %.60q, %.60q)", c.vals[a.n], c.vals[b.n], got, w, a.bound, b.bound)
						}
					}
				}
			}
			// The chunk query's parameter, in the odd session, selects the
			// value's equality group and the same ranks below it.
			for _, a := range rows {
				var eq []int64
				below := 0
				for _, b := range rows {
					if b.rank == a.rank {
						eq = append(eq, b.n)
					}
					if b.rank < a.rank {
						below++
					}
				}
				slices.Sort(eq)
				p := paramExpr(kind, "$1")
				var got []int64
				var gotBelow int
				err := odd.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(array_agg(n::int8 ORDER BY n) FILTER (WHERE ROW(v) = ROW(%s)), '{}'),
					count(*) FILTER (WHERE ROW(v) < ROW(%[1]s)) FROM kk_%s`, p, c.name), paramText(kind, a.bound, a.bv)).Scan(&got, &gotBelow)
				if err != nil {
					t.Fatalf("parameter %q: %v", paramText(kind, a.bound, a.bv), err)
				}
				if !slices.Equal(got, eq) || gotBelow != below {
					t.Errorf("parameter %q (value %q) selects %v and %d below, want %v and %d", paramText(kind, a.bound, a.bv), c.vals[a.n], got, gotBelow, eq, below)
				}
			}
		})
	}
}

// TestKeyKindCalendar checks the Go calendar arithmetic against a reference
// (the time package) on every day of a range around the epochs and the
// Gregorian corner years.
func TestKeyKindCalendar(t *testing.T) {
	for _, start := range []int{-4713, -1, 0, 1, 1582, 1899, 1968, 1999, 2099, 9999} {
		d := time.Date(start, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := 0; i < 3*366; i++ {
			day := d.AddDate(0, 0, i)
			want := day.Unix()/86400 - unixToPGDays
			if day.Unix() < 0 && day.Unix()%86400 != 0 {
				t.Fatal("not midnight")
			}
			got := daysFromCivil(int64(day.Year()), int64(day.Month()), int64(day.Day()))
			if got != want {
				t.Fatalf("daysFromCivil(%v) = %d, want %d", day, got, want)
			}
			y, m, dd := civilFromDays(got)
			if y != int64(day.Year()) || m != int64(day.Month()) || dd != int64(day.Day()) {
				t.Fatalf("civilFromDays(%d) = %d-%d-%d, want %v", got, y, m, dd, day)
			}
		}
	}
	for _, c := range []struct {
		us   int64
		want string
	}{
		{0, "2000-01-01 00:00:00.000000+00"},
		{-1, "1999-12-31 23:59:59.999999+00"},
		{9223371331199999999, "294276-12-31 23:59:59.999999+00"},
		{-211813488000000000, "4714-11-24 00:00:00.000000+00 BC"},
		{-63082281600000000 - 1, "0001-12-31 23:59:59.999999+00 BC"}, // 1 µs before 0001-01-01 AD
		{-63113904000000000 - 1, "0002-12-31 23:59:59.999999+00 BC"},
	} {
		if got := isoTimestamp(c.us, true); got != c.want {
			t.Errorf("isoTimestamp(%d) = %q, want %q", c.us, got, c.want)
		}
	}
}

// startMixedWriter changes the mixed-key tables until stopped, bounded in
// count: inserts, updates, deletes and key changes (possibly across
// chunks), also of the edge rows.
func startMixedWriter(t testing.TB, pg *testharness.PG, db string, maxOps int, seed int64) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	conn := pg.Connect(t, db)
	go func() {
		defer close(w.done)
		ctx := context.Background()
		rnd := xorshift(seed)
		key := func() string { return strconv.Itoa(rnd(6000) + 1) }
		binK := func() string { return strconv.Itoa(rnd(1500) + 1) }
		for w.ops < maxOps {
			select {
			case <-w.stop:
				return
			default:
			}
			var sql string
			switch rnd(10) {
			case 0, 1:
				sql = fmt.Sprintf(`INSERT INTO mixed SELECT %s, 'w%d' ON CONFLICT (tenant, created, seq) DO UPDATE SET payload = 'upsert'`, mixedKey(key()), w.ops)
			case 2, 3:
				sql = fmt.Sprintf(`UPDATE mixed SET payload = 'u%d' WHERE (tenant, created, seq) = (SELECT %s)`, w.ops, mixedKey(key()))
			case 4:
				sql = fmt.Sprintf(`DELETE FROM mixed WHERE (tenant, created, seq) = (SELECT %s)`, mixedKey(key()))
			case 5:
				// Key change, possibly across chunks.
				sql = fmt.Sprintf(`UPDATE mixed SET (tenant, created, seq) = (SELECT %s) WHERE (tenant, created, seq) = (SELECT %s)
					AND NOT EXISTS (SELECT 1 FROM mixed WHERE (tenant, created, seq) = (SELECT %[1]s))`, mixedKey(key()), mixedKey(key()))
			case 6:
				// Edge rows: NaN, ±Infinity, ±infinity, BC, huge and tiny.
				sql = fmt.Sprintf(`UPDATE mixed SET payload = 'e%d' WHERE tenant = 't%d' AND payload LIKE 'edge%%'`, w.ops, rnd(5))
				if rnd(2) == 0 {
					sql = fmt.Sprintf(`UPDATE mixed SET payload = 'edge%d' WHERE tenant = 't%d' AND seq IN ('NaN', 'Infinity', '-Infinity')`, w.ops, rnd(5))
				}
			case 7:
				sql = fmt.Sprintf(`INSERT INTO bin SELECT %s, %d ON CONFLICT (d, b, f, o) DO UPDATE SET v = bin.v + 1`, binKey(binK()), w.ops)
			case 8:
				sql = fmt.Sprintf(`DELETE FROM bin WHERE (d, b, f, o) = (SELECT %s)`, binKey(binK()))
			case 9:
				sql = fmt.Sprintf(`UPDATE bin SET (d, b, f, o) = (SELECT %s) WHERE (d, b, f, o) = (SELECT %s)
					AND NOT EXISTS (SELECT 1 FROM bin WHERE (d, b, f, o) = (SELECT %[1]s))`, binKey(binK()), binKey(binK()))
			}
			if _, err := conn.Exec(ctx, sql); err != nil {
				w.err = fmt.Errorf("%s: %w", sql, err)
				return
			}
			w.ops++
			if w.ops%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	return w
}

// mixedKey is the select list of key number k (an SQL int expression) of
// table mixed: 130 consecutive keys share a tenant and a created time and
// differ in numerics of varying scale (0.00000000000000000000,
// 0.14285714285714285714, 1.0000000000000000, ...), so the numeric column
// decides around most chunk bounds.
func mixedKey(k string) string {
	return fmt.Sprintf(`'t' || (%[1]s / 130 %% 5), timestamptz '2024-01-01 00:00:00+00' + (%[1]s / 650) * interval '1 second' + (%[1]s / 130 %% 2) * interval '1 microsecond', (%[1]s %% 130)::numeric / 7`, k)
}

// binKey is the select list of key number k of table bin: 520 keys share a
// date (from BC on), 130 a bytea (empty, 00, 0000, ff); in those the
// boolean and then the oid (up to 4160000000, above 2^31) decide. Groups
// of 130 do not line up with chunks of 100, so every column decides
// around some bound.
func binKey(k string) string {
	return fmt.Sprintf(`date '2000-01-01' + (%[1]s / 520 - 1) * 300000, decode(('{"",00,0000,ff}'::text[])[%[1]s / 130 %% 4 + 1], 'hex'), %[1]s %% 2 = 0, ((%[1]s / 2 %% 65)::int8 * 65000000)::oid`, k)
}

func createMixedTables(t testing.TB, pg *testharness.PG, db string) {
	var edges []string
	for tn := 0; tn < 5; tn++ {
		for _, e := range [][2]string{
			{"-infinity", "0"}, {"-infinity", "NaN"}, {"infinity", "NaN"}, {"infinity", "Infinity"}, {"infinity", "-Infinity"},
			{"4714-11-24 00:00:00+00 BC", "1e-30"}, {"0044-03-15 12:00:00.5+00 BC", "-1e30"}, {"294276-12-31 23:59:59.999999+00", "NaN"},
			{"2024-01-01 00:00:01+00", "NaN"}, {"2024-01-01 00:00:01+00", "Infinity"}, {"2024-01-01 00:00:01+00", "-Infinity"},
			{"2024-01-01 00:00:01+00", "1e40"}, {"2024-01-01 00:00:01+00", "-1e-40"}, {"2024-01-01 00:00:01.000001+00", "0.3333333333333333333333333333333"},
		} {
			edges = append(edges, fmt.Sprintf("('t%d', '%s', '%s', 'edge')", tn, e[0], e[1]))
		}
	}
	pg.Exec(t, db, `CREATE TABLE mixed (tenant text, created timestamptz, seq numeric, payload text, PRIMARY KEY (tenant, created, seq));
		INSERT INTO mixed SELECT `+mixedKey("g")+`, 'v' || g FROM generate_series(1, 3000) g;
		INSERT INTO mixed VALUES `+strings.Join(edges, ", ")+`;
		CREATE TABLE bin (d date, b bytea, f boolean, o oid, v int, PRIMARY KEY (d, b, f, o));
		INSERT INTO bin SELECT `+binKey("g")+`, g FROM generate_series(1, 1200) g ON CONFLICT DO NOTHING;
		INSERT INTO bin VALUES ('infinity', '\x', true, 0, 0), ('infinity', '\xff', false, 4294967295, 0), ('-infinity', '\x00', false, 1, 0),
			('4714-11-24 BC', '\x', false, 0, 0), ('5874897-12-31', '\xffff', true, 7, 0);
		CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE TABLE enums (m mood PRIMARY KEY, v int);
		INSERT INTO enums VALUES ('happy', 1), ('sad', 2), ('ok', 3);
		CREATE TABLE marker (id int PRIMARY KEY)`)
}

// decodedState reads tables through Plume's own decoders (chunkQuery of a
// one-chunk plan, loadTableMeta's decoders), keyed by Change.Subject like
// the replayed state, so keys of any type compare.
func decodedState(t testing.TB, src *Source, db string, tables ...string) replayState {
	t.Helper()
	ctx := context.Background()
	conn, err := src.conn.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rels, _, err := resolveTables(ctx, conn, tables)
	if err != nil {
		t.Fatal(err)
	}
	st := replayState{}
	for _, rel := range rels {
		tm, err := loadTableMeta(ctx, conn, newTypeRegistry(), db, rel, nil)
		if err != nil {
			t.Fatal(err)
		}
		st[rel.qualified()] = map[string]map[string]any{}
		sql, args := chunkQuery(tm, &snapTable{}, 0)
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			vals := make([]event.Value, len(tm.decs))
			for i, b := range rows.RawValues() {
				if b != nil {
					if vals[i], err = tm.decs[i](b); err != nil {
						t.Fatal(err)
					}
				}
			}
			st.apply(t, toReplay(&event.Change{Op: event.OpRead, Table: tm.table, After: vals}))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestSnapshotMixedKeysResumeAfterKill snapshots tables keyed by (text,
// timestamptz, numeric) and (date, bytea, boolean, oid), edge values
// included, in many chunks with two workers while a writer changes them
// (keys too); SIGKILLs the source twice mid-snapshot, writes more while it
// is down, and restarts it: the remaining chunks are read in fresh
// snapshots and the stream catches up with the catch-up rule deciding chunk
// membership in Go. The replayed state equals the tables, with no event id
// twice and no inconsistent event (a lost or duplicated change shows as
// one). An enum-keyed table is read as one chunk.
func TestSnapshotMixedKeysResumeAfterKill(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	createMixedTables(t, pg, db)
	out := filepath.Join(t.TempDir(), "events.jsonl")
	if d := os.Getenv("KK_DEBUG_OUT"); d != "" {
		out = d
		os.Remove(d)
	}
	tables := []string{"public.mixed", "public.bin", "public.enums", "public.marker"}
	cfg := testConfig(pg, db, "snap-mixed", tables...)
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 100
	cfg.SnapshotWorkers = 2
	spec, _ := json.Marshal(helperConfig{Config: cfg, Out: out, Delay: 25 * time.Millisecond})
	child := func() *testharness.Proc {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
		return testharness.StartCommand(t, cmd)
	}

	w := startMixedWriter(t, pg, db, 12000, 5)
	// Tables are read in name order: bin, enums, marker, mixed. The first
	// run is killed in the middle of bin, the second in the middle of
	// mixed, so each table has chunks read in different snapshots and the
	// catch-up rule must place changes on both sides of its bounds.
	read := func(table string) (n, of int, done bool) {
		lines, _ := readFileLines(out)
		if len(lines) == 0 {
			return 0, 0, false
		}
		cp, err := decodeCheckpoint(lines[len(lines)-1].CP)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Snap == nil || cp.Snap.Done {
			return 0, 0, true
		}
		tb := cp.Snap.table(table)
		for _, r := range tb.Read {
			if r != 0 {
				n++
			}
		}
		return n, len(tb.Read), false
	}
	var p *testharness.Proc
	for run, kill := range []string{"public.bin", "public.mixed"} {
		p = child()
		waitFor(t, 60*time.Second, "a third of the chunks of "+kill, func() bool {
			if p.Exited() {
				t.Fatalf("child exited: %s", p.Output())
			}
			n, of, done := read(kill)
			if done {
				t.Fatalf("run %d: killed too late, snapshot already done", run+1)
			}
			return of > 0 && n >= of/3
		})
		p.Kill()
		n, of, _ := read(kill)
		t.Logf("run %d killed with %d of %d chunks of %s read", run+1, n, of, kill)
		if n == of {
			t.Errorf("run %d: killed after all chunks of %s", run+1, kill)
		}
		time.Sleep(300 * time.Millisecond) // the writer keeps writing while the source is down
	}
	lines, _ := readFileLines(out)
	plan, err := decodeCheckpoint(lines[0].CP)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		table, kinds string
		minChunks    int
	}{{"public.mixed", "text,timestamptz,numeric", 30}, {"public.bin", "date,bytea,bool,oid", 10}, {"public.enums", "", 1}} {
		tb := plan.Snap.table(c.table)
		if tb == nil {
			t.Fatalf("no plan of %s", c.table)
		}
		if strings.Join(tb.Kinds, ",") != c.kinds || len(tb.Read) < c.minChunks || (c.kinds == "" && len(tb.Read) != 1) {
			t.Errorf("plan of %s: kinds %v, %d chunks; want kinds %q and >= %d chunks", c.table, tb.Kinds, len(tb.Read), c.kinds, c.minChunks)
		}
	}

	p = child()
	waitFor(t, 90*time.Second, "resumed snapshot done", func() bool {
		if p.Exited() {
			t.Fatalf("child exited: %s", p.Output())
		}
		_, _, done := read("public.mixed")
		return done
	})
	time.Sleep(300 * time.Millisecond)
	finishAtMarker(t, pg, db, w, p, out)
	lines, _ = readFileLines(out)
	evs := fileEvents(lines)
	var points []string
	streamed := 0
	for _, l := range lines {
		if cp, _ := decodeCheckpoint(l.CP); cp.Snap != nil {
			points = cp.Snap.Points
		}
		for _, e := range l.Events {
			if !e.Snapshot {
				streamed++
			}
		}
	}
	t.Logf("writer ran %d ops; %d events (%d streamed) in %d commits", w.ops, len(evs), streamed, len(lines))
	if len(points) != 3 {
		t.Errorf("snapshot points %v, want one per run", points)
	}
	checkUniqueIDs(t, evs)
	st := replayState{}
	for _, e := range evs {
		st.apply(t, e)
	}
	src := newSource(t, cfg)
	compareState(t, st, decodedState(t, src, db, "public.mixed", "public.bin", "public.enums"))
	if t.Failed() {
		t.Logf("child output:\n%s", p.Output())
	}
}
