package mysql

import (
	"sort"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

// TestSnapshotKeyShapes chunks tables by composite, decimal, nullable
// non-unique (override) and whole-row keys: every row is read exactly once.
func TestSnapshotKeyShapes(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, `CREATE TABLE c1 (a varchar(10), b int, v int, PRIMARY KEY (a, b));
		INSERT INTO c1 SELECT CHAR(65 + seq % 3), seq, seq FROM seq_1_to_250;
		CREATE TABLE c2 (d decimal(30,20) PRIMARY KEY, v int);
		INSERT INTO c2 SELECT seq / 7 + 0.00000000000000000001, seq FROM seq_1_to_250;
		CREATE TABLE c3 (x int NULL, y varchar(10));
		INSERT INTO c3 SELECT IF(seq % 5 = 0, NULL, seq % 40), CONCAT('y', seq) FROM seq_1_to_250;
		CREATE TABLE c4 (p int, q varchar(5), g point);
		INSERT INTO c4 SELECT seq % 17, 'dup', POINT(1, 1) FROM seq_1_to_250;
		CREATE TABLE c5 (id bigint unsigned PRIMARY KEY, t datetime(6));
		INSERT INTO c5 SELECT 18446744073709551615 - seq, '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_250;
		CREATE TABLE c6 (id int PRIMARY KEY);`)
	cfg := testConfig(t, m, db)
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 40
	cfg.Keys = map[string][]string{db + ".c3": {"x"}}
	src := newTestSource(t, cfg)
	em := &recEmitter{keep: true}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 60*time.Second, "snapshot to finish", func() bool {
		c, err := decodeCheckpoint(em.lastCP())
		return err == nil && c != nil && c.Snapshot == nil && countOps(em.changes(), true) > 0
	})
	got := map[string][]string{}
	for _, c := range em.changes() {
		if c.Snapshot {
			got[c.Table] = append(got[c.Table], flat(c.After))
		}
	}
	for _, tbl := range []string{"c1", "c2", "c3", "c4", "c5", "c6"} {
		rows := rowsJSON(t, src, db+"."+tbl)
		g := got[db+"."+tbl]
		sort.Strings(g)
		if len(g) != len(rows) {
			t.Errorf("%s: %d reads, %d rows", tbl, len(g), len(rows))
			continue
		}
		for i := range g {
			if g[i] != rows[i] {
				t.Errorf("%s: read %s, row %s", tbl, g[i], rows[i])
				break
			}
		}
	}
	keys := map[string][]int{}
	for _, c := range em.changes() {
		if c.Snapshot {
			keys[c.Table] = c.Change.Table.Key
		}
	}
	if len(keys[db+".c4"]) != 3 || len(keys[db+".c3"]) != 1 || len(keys[db+".c1"]) != 2 {
		t.Errorf("keys %v", keys)
	}
}

// rowsJSON reads every row of a table (duplicates included), sorted.
func rowsJSON(t *testing.T, s *Source, table string) []string {
	t.Helper()
	c, err := s.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := newSchemaCache(s.filter, s.cfg.Keys, defaultCollations, s.log)
	info, err := sc.loadTable(t.Context(), c, table)
	if err != nil {
		t.Fatal(err)
	}
	rows := selectRows(t, c, info)
	var out []string
	for _, row := range rows {
		out = append(out, flat(imageJSON(info.table, row)))
	}
	sort.Strings(out)
	return out
}
