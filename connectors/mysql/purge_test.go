package mysql

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestPurgedBinlogStops(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE p (id int primary key)")
	cfg := testConfig(t, m, db)
	em := &recEmitter{}
	r := startRun(t, startSourceFor(t, cfg), nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	m.Exec(t, db, "INSERT INTO p VALUES (1)")
	waitFor(t, r, 20*time.Second, "first row", func() bool { return len(em.changes()) == 1 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	cp := em.lastCP()

	// While the pipeline is down: more changes, then the binlogs holding
	// them are purged.
	m.Exec(t, db, "INSERT INTO p VALUES (2); FLUSH BINARY LOGS; INSERT INTO p VALUES (3); FLUSH BINARY LOGS")
	c := m.Connect(t, "")
	res, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	current, _ := res.GetString(0, 0)
	purgeTo(t, m, current)

	for _, tc := range []struct {
		name string
		cp   []byte
	}{
		{"gtid", cp},
		{"filepos", withoutGTID(t, cp)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			em2 := &recEmitter{}
			src := startSourceFor(t, cfg)
			r2 := startRun(t, src, tc.cp, em2)
			var runErr error
			select {
			case runErr = <-r2.done:
				close(r2.done)
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not stop on a purged position")
			}
			var pe *PurgedError
			if !errors.As(runErr, &pe) {
				t.Fatalf("Run error %v is not a PurgedError", runErr)
			}
			msg := runErr.Error()
			var c checkpoint
			_ = json.Unmarshal(tc.cp, &c)
			for _, want := range []string{c.File + ":", "oldest binlog the server still has is " + current, "re-snapshot", "docs/mysql.md"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			if len(em2.changes()) != 0 {
				t.Errorf("changes emitted after a purge: %v", em2.changes())
			}
			t.Logf("error: %s", msg)
		})
	}
}

func startSourceFor(t *testing.T, cfg Config) *Source { return newTestSource(t, cfg) }

func withoutGTID(t *testing.T, cp []byte) []byte {
	var c checkpoint
	if err := json.Unmarshal(cp, &c); err != nil {
		t.Fatal(err)
	}
	c.GTID = ""
	return c.encode()
}

// purgeTo purges binlogs before file. MariaDB keeps files that InnoDB crash
// recovery may still need (until the binlog checkpoint passes them), so it
// retries for a while.
func purgeTo(t *testing.T, m *testharness.MySQL, file string) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		m.Exec(t, "", "PURGE BINARY LOGS TO '"+file+"'")
		c := m.Connect(t, "")
		res, err := c.Execute("SHOW BINARY LOGS")
		if err != nil {
			t.Fatal(err)
		}
		if first, _ := res.GetString(0, 0); first == file {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("binlogs before %s were not purged", file)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
