package mysql

import (
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestDDLMidStream(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE d (id int primary key, a int)")
	src := newTestSource(t, testConfig(t, m, db))
	em := &recEmitter{keep: true}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })

	steps := []string{
		"INSERT INTO d VALUES (1, 10)",
		"INSERT INTO d VALUES (2, 11)",
		"ALTER TABLE d ADD COLUMN b varchar(10) DEFAULT 'x'",
		"INSERT INTO d VALUES (3, 20, 'y')",
		"ALTER TABLE d DROP COLUMN a",
		"INSERT INTO d VALUES (4, 'z')",
		"ALTER TABLE d MODIFY b varchar(10) CHARACTER SET latin1",
		"INSERT INTO d VALUES (5, 'é')",
		"RENAME TABLE d TO d2",
		"INSERT INTO d2 VALUES (6, 'r')",
		"CREATE TABLE n (id int primary key)",
		"INSERT INTO n VALUES (1)",
		"DROP TABLE n",
		"TRUNCATE TABLE d2",
		"ALTER TABLE d2 DROP PRIMARY KEY, ADD PRIMARY KEY (b)",
		"INSERT INTO d2 VALUES (7, 'k')",
	}
	for _, q := range steps {
		m.Exec(t, db, q)
	}
	waitFor(t, r, 20*time.Second, "9 changes", func() bool { return len(em.changes()) >= 9 })
	got := em.changes()
	type want struct {
		op, table, cols, subject, after string
	}
	wants := []want{
		{"insert", "d", "id int,a int", "id=1", `{"a":10,"id":1}`},
		{"insert", "d", "id int,a int", "id=2", `{"a":11,"id":2}`},
		{"insert", "d", "id int,a int,b varchar", "id=3", `{"a":20,"b":"y","id":3}`},
		{"insert", "d", "id int,b varchar", "id=4", `{"b":"z","id":4}`},
		{"insert", "d", "id int,b varchar", "id=5", `{"b":"é","id":5}`},
		{"insert", "d2", "id int,b varchar", "id=6", `{"b":"r","id":6}`},
		{"insert", "n", "id int", "id=1", `{"id":1}`},
		{"truncate", "d2", "id int,b varchar", "", ""},
		{"insert", "d2", "id int,b varchar", "b=k", `{"b":"k","id":7}`},
	}
	if len(got) != len(wants) {
		t.Fatalf("got %d changes: %s", len(got), mustJSON(got))
	}
	cols := func(tb *event.Table) string {
		var s []string
		for _, c := range tb.Columns {
			s = append(s, c.Name+" "+c.Type)
		}
		return strings.Join(s, ",")
	}
	for i, w := range wants {
		c := got[i]
		if c.Op != w.op || c.Table != db+"."+w.table || cols(c.Change.Table) != w.cols || c.Subject != w.subject || flat(c.After) != w.after {
			t.Errorf("change %d: %s %s [%s] %s %s; want %+v", i, c.Op, c.Table, cols(c.Change.Table), c.Subject, flat(c.After), w)
		}
	}
	// One *event.Table per table version: shared by rows of the same
	// version, new after every change of shape.
	tb := func(i int) *event.Table { return got[i].Change.Table }
	if tb(0) != tb(1) {
		t.Error("rows of the same table version have different *event.Table")
	}
	for _, pair := range [][2]int{{1, 2}, {2, 3}, {3, 4}, {4, 5}, {5, 8}} {
		if tb(pair[0]) == tb(pair[1]) {
			t.Errorf("changes %d and %d share a *event.Table across a schema change", pair[0], pair[1])
		}
	}
	if tb(4).Columns[1].Type != "varchar" || tb(3) == tb(4) {
		t.Errorf("charset change not picked up")
	}
}
