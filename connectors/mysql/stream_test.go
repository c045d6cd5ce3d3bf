package mysql

import (
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestStreamMultiRowStatements(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE a (id int primary key, v varchar(20)); CREATE TABLE b (k varchar(10) primary key, n int)")
	src := newTestSource(t, testConfig(t, m, db))
	em := &recEmitter{}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })

	m.Exec(t, db, "INSERT INTO a VALUES (1,'x'),(2,'y'),(3,'z')")
	m.Exec(t, db, "UPDATE a SET v = CONCAT(v, '!')")
	m.Exec(t, db, "DELETE FROM a WHERE id < 3")
	m.Exec(t, db, "BEGIN; INSERT INTO b VALUES ('p',1),('q',2); INSERT INTO a VALUES (4,'w'); UPDATE b SET n = n + 10 WHERE k = 'q'; COMMIT")
	// A key change: a delete of the old key, then an insert of the new one.
	m.Exec(t, db, "BEGIN; UPDATE a SET id = 5 WHERE id = 4; UPDATE a SET v = 'v' WHERE id = 3; COMMIT")

	waitFor(t, r, 20*time.Second, "15 changes", func() bool { return len(em.changes()) >= 15 })
	got := em.changes()
	if len(got) != 15 {
		t.Fatalf("got %d changes, want 15: %s", len(got), mustJSON(got))
	}
	ids := map[string]bool{}
	for _, c := range got {
		if ids[c.ID] {
			t.Errorf("duplicate id %s", c.ID)
		}
		ids[c.ID] = true
		if !strings.HasPrefix(c.Pos, "gtid:0-1-") || c.TxID != strings.TrimPrefix(c.Pos, "gtid:") {
			t.Errorf("pos %q txid %q", c.Pos, c.TxID)
		}
	}
	type want struct {
		op, table, subject string
		index, tableIndex  int64
		before, after      string
	}
	wants := []want{
		{"insert", "a", "id=1", 0, 1, "", `{"id":1,"v":"x"}`},
		{"insert", "a", "id=2", 1, 2, "", `{"id":2,"v":"y"}`},
		{"insert", "a", "id=3", 2, 3, "", `{"id":3,"v":"z"}`},
		{"update", "a", "id=1", 0, 1, `{"id":1,"v":"x"}`, `{"id":1,"v":"x!"}`},
		{"update", "a", "id=2", 1, 2, `{"id":2,"v":"y"}`, `{"id":2,"v":"y!"}`},
		{"update", "a", "id=3", 2, 3, `{"id":3,"v":"z"}`, `{"id":3,"v":"z!"}`},
		{"delete", "a", "id=1", 0, 1, `{"id":1,"v":"x!"}`, ""},
		{"delete", "a", "id=2", 1, 2, `{"id":2,"v":"y!"}`, ""},
		{"insert", "b", "k=p", 0, 1, "", `{"k":"p","n":1}`},
		{"insert", "b", "k=q", 1, 2, "", `{"k":"q","n":2}`},
		{"insert", "a", "id=4", 2, 1, "", `{"id":4,"v":"w"}`},
		{"update", "b", "k=q", 3, 3, `{"k":"q","n":2}`, `{"k":"q","n":12}`},
		{"delete", "a", "id=4", 0, 1, `{"id":4,"v":"w"}`, ""},
		{"insert", "a", "id=5", 1, 2, "", `{"id":5,"v":"w"}`},
		{"update", "a", "id=3", 2, 3, `{"id":3,"v":"z!"}`, `{"id":3,"v":"v"}`},
	}
	for i, w := range wants {
		c := got[i]
		if c.Op != w.op || c.Table != db+"."+w.table || c.Subject != w.subject || c.Index != w.index || c.TableIndex != w.tableIndex ||
			flat(c.Before) != w.before || flat(c.After) != w.after {
			t.Errorf("change %d = %s %s %s idx=%d tidx=%d before=%s after=%s; want %+v", i, c.Op, c.Table, c.Subject, c.Index, c.TableIndex, flat(c.Before), flat(c.After), w)
		}
	}
	// Five source transactions, each committed once after its rows.
	var sizes []int
	for _, tx := range em.committed {
		if len(tx.Changes) > 0 {
			sizes = append(sizes, len(tx.Changes))
		}
	}
	if mustJSON(sizes) != "[3,3,2,4,3]" {
		t.Errorf("transaction sizes %v, want [3 3 2 4 3]", sizes)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// flat renders an image map as sorted JSON object text.
func flat(m map[string]string) string {
	if m == nil {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	var sb strings.Builder
	sb.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`"` + k + `":` + m[k])
	}
	sb.WriteByte('}')
	return sb.String()
}

func TestHeartbeatMovesCheckpointPastUncapturedChanges(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE captured (id int primary key); CREATE TABLE other (id int primary key)")
	for _, hb := range []time.Duration{time.Second, 0} {
		cfg := testConfig(t, m, db)
		cfg.Tables = []string{db + ".captured"}
		cfg.HeartbeatInterval = hb
		src := newTestSource(t, cfg)
		em := &recEmitter{}
		r := startRun(t, src, nil, em)
		waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
		first, _ := decodeCheckpoint(em.lastCP())
		m.Exec(t, db, "INSERT INTO other VALUES (1); DELETE FROM other")
		target := m.QueryValue(t, "", "SELECT @@gtid_binlog_pos")
		if hb > 0 {
			waitFor(t, r, 10*time.Second, "checkpoint at "+target, func() bool {
				c, _ := decodeCheckpoint(em.lastCP())
				return c.GTID == target && c.position().Compare(first.position()) > 0
			})
		} else {
			time.Sleep(2500 * time.Millisecond)
			if n := em.commits(); n != 1 {
				t.Errorf("heartbeats off: %d commits, want only the initial one", n)
			}
		}
		if len(em.changes()) != 0 {
			t.Errorf("uncaptured changes emitted: %v", em.changes())
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}
