package mysql

import (
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestResnapshotWhileStreaming(t *testing.T) {
	const rows = 800
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	fillTable(t, m, db, rows)
	cfg := testConfig(t, m, db)
	src := newTestSource(t, cfg)
	em := &recEmitter{}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	if err := src.Resnapshot("otherdb.s"); err == nil {
		t.Error("Resnapshot of an uncaptured table succeeded")
	}
	stopChurn := churn(t, m, db, rows, 3, time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	if err := src.Resnapshot(db + ".s"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 30*time.Second, "the re-snapshot to finish", func() bool {
		em.mu.Lock()
		defer em.mu.Unlock()
		saw := false
		for _, tx := range em.committed {
			c, err := decodeCheckpoint(tx.CP)
			if err != nil {
				t.Fatal(err)
			}
			saw = saw || c.Snapshot != nil
		}
		c, _ := decodeCheckpoint(em.committed[len(em.committed)-1].CP)
		return saw && c.Snapshot == nil
	})
	writes := stopChurn()
	want := tableState(t, src, db+".s")
	var p *replayer
	waitFor(t, r, 30*time.Second, "replayed state to equal the table", func() bool {
		p = newReplayer()
		for _, c := range em.changes() {
			p.apply(c)
		}
		ok, _ := sameState(p.state, want)
		return ok
	})
	for i, e := range p.errs {
		if i > 10 {
			break
		}
		t.Error(e)
	}
	t.Logf("%d reads, %d concurrent writes", countOps(em.changes(), true), writes)
}

func TestLag(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE l (id int primary key)")
	src := newTestSource(t, testConfig(t, m, db))
	em := &recEmitter{}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	m.Exec(t, db, "INSERT INTO l VALUES (1)")
	waitFor(t, r, 20*time.Second, "caught up", func() bool {
		sec, bytes := src.Lag()
		return len(em.changes()) == 1 && sec == 0 && bytes == 0
	})
}
