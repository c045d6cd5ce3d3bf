package mysql

import (
	"fmt"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestPooledPacketsKeepValues checks the dump connection's buffer reuse
// (dumpConn): rows events are parsed in pooled packet buffers and their
// values point into them, so a buffer handed back before its event was
// handled, or a table map parsed in a reused buffer, would show up as
// another row's bytes or a wrong table. Two tables take turns in every
// transaction (a table map each), rows are ~1 KB and distinct, and the
// emitter is slowed down so the event queue fills and every buffer is
// reused many times; a long transaction follows its one table map with
// hundreds of rows events. Every value is checked at Emit, and the kept copies
// (event.CloneImage) again after the stream moved on.
func TestPooledPacketsKeepValues(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE a (id int primary key, pad varchar(2000))")
	m.Exec(t, db, "CREATE TABLE b (id int primary key, pad varchar(2000))")
	src := newTestSource(t, testConfig(t, m, db))
	const txns, perTxn = 40, 100 // 4,000 rows of ~1 KB, two table maps per transaction
	em := &recEmitter{keep: true}
	var bad []string
	em.onEmit = func(c *event.Change) error {
		id, _ := c.After[0].(int64)
		pad, _ := c.After[1].(string)
		if exp := testharness.Pad(c.Table.Name, id); pad != exp && len(bad) < 5 {
			bad = append(bad, fmt.Sprintf("%s id %d: pad %.40q..., want %.40q...", c.Table.Name, id, pad, exp))
		}
		if id%500 == 0 {
			time.Sleep(20 * time.Millisecond) // let the reader run ahead: the queue fills
		}
		return nil
	}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	conn := m.Connect(t, db)
	for i := 0; i < txns; i++ {
		lo, hi := i*perTxn/2+1, (i+1)*perTxn/2
		for _, q := range []string{"BEGIN",
			fmt.Sprintf("INSERT INTO a SELECT seq, %s FROM seq_%d_to_%d", testharness.PadSQL(false, "a", "seq"), lo, hi),
			fmt.Sprintf("INSERT INTO b SELECT seq, %s FROM seq_%d_to_%d", testharness.PadSQL(false, "b", "seq"), lo, hi),
			"COMMIT"} {
			if _, err := conn.Execute(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	// One long transaction: a single table map, then ~400 rows events that
	// are decoded against it long after its own packet was handled.
	const long = 3000
	m.Exec(t, db, fmt.Sprintf("INSERT INTO a SELECT seq, %s FROM seq_100001_to_%d", testharness.PadSQL(false, "a", "seq"), 100000+long))
	total := txns*perTxn + long
	waitFor(t, r, 60*time.Second, "every row", func() bool { return len(em.changes()) >= total })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("values changed under the stream: %v", bad)
	}
	var kept []*event.Change
	for _, rc := range em.changes() {
		kept = append(kept, rc.Change)
	}
	testharness.CheckPads(t, kept, total) // the recorder's copies, after the stream moved on
}
