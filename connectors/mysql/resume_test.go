package mysql

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

// writer runs small transactions until stopped or n are done.
func writer(t *testing.T, m *testharness.MySQL, db string, n int, pause time.Duration) (wait func() int) {
	var wg sync.WaitGroup
	done := make(chan struct{})
	count := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := m.Connect(t, db)
		deadline := time.Now().Add(60 * time.Second)
		for i := 0; i < n && time.Now().Before(deadline); i++ {
			select {
			case <-done:
				return
			default:
			}
			var stmts []string
			switch i % 3 {
			case 0:
				stmts = []string{fmt.Sprintf("INSERT INTO w (id, v) VALUES (%d, 'v%d'), (%d, 'v%d')", 2*i, i, 2*i+1, i)}
			case 1:
				stmts = []string{"BEGIN", fmt.Sprintf("INSERT INTO w (id, v) VALUES (%d, 'a')", 2*i),
					fmt.Sprintf("UPDATE w SET v = 'u%d' WHERE id = %d", i, 2*(i-1)), "COMMIT"}
			case 2:
				stmts = []string{"BEGIN", fmt.Sprintf("INSERT INTO w (id, v) VALUES (%d, 'b')", 2*i),
					fmt.Sprintf("DELETE FROM w WHERE id = %d", 2*(i-2)+1), "COMMIT"}
			}
			var err error
			for _, q := range stmts {
				if _, err = c.Execute(q); err != nil {
					break
				}
			}
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			count++
			time.Sleep(pause)
		}
	}()
	return func() int { close(done); wg.Wait(); return count }
}

func TestRestartResumeByGTID(t *testing.T) { testRestartResume(t, false) }

// TestRestartResumeByFilePos resumes by binlog file and position, the path
// of MySQL servers without GTIDs.
func TestRestartResumeByFilePos(t *testing.T) { testRestartResume(t, true) }

func testRestartResume(t *testing.T, filePos bool) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE w (id int primary key, v varchar(20))")
	cfg := testConfig(t, m, db)
	em := &recEmitter{}
	src := newTestSource(t, cfg)
	src.noGTID = filePos
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })

	stopWriter := writer(t, m, db, 400, 3*time.Millisecond)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 4; i++ {
		time.Sleep(time.Duration(150+rng.Intn(300)) * time.Millisecond)
		if err := r.stop(t); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		// Uncommitted changes die with the run (Kafka aborts them).
		em.mu.Lock()
		em.open = nil
		em.mu.Unlock()
		cp := em.lastCP()
		var c checkpoint
		if err := json.Unmarshal(cp, &c); err != nil || (c.GTID == "") != filePos || c.File == "" {
			t.Fatalf("checkpoint %s: %v", cp, err)
		}
		src = newTestSource(t, cfg) // a new process
		src.noGTID = filePos
		r = startRun(t, src, cp, em)
	}
	writes := stopWriter()
	want := m.QueryValue(t, db, "SELECT CONCAT(COUNT(*), ':', IFNULL(SUM(id),0)) FROM w")
	// Wait for the final state, then compare.
	replay := func() (map[string]string, []string) {
		state := map[string]string{}
		var dup []string
		seen := map[string]bool{}
		for _, c := range em.changes() {
			if seen[c.ID] {
				dup = append(dup, c.ID)
			}
			seen[c.ID] = true
			switch c.Op {
			case "insert", "update":
				state[c.After["id"]] = c.After["v"]
			case "delete":
				delete(state, c.Before["id"])
			}
		}
		return state, dup
	}
	waitFor(t, r, 30*time.Second, "replayed state to match "+want, func() bool {
		state, _ := replay()
		sum := 0
		for id := range state {
			var n int
			fmt.Sscan(id, &n)
			sum += n
		}
		return fmt.Sprintf("%d:%d", len(state), sum) == want
	})
	state, dup := replay()
	if len(dup) > 0 {
		t.Errorf("%d duplicate ids, e.g. %v", len(dup), dup[:min(3, len(dup))])
	}
	// Compare values too.
	rows := m.Connect(t, db)
	res, err := rows.Execute("SELECT id, v FROM w")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < res.RowNumber(); i++ {
		id, _ := res.GetString(i, 0)
		v, _ := res.GetString(i, 1)
		if state[id] != jsonString(v) {
			t.Errorf("row %s: replayed %s, table %q", id, state[id], v)
		}
	}
	// Every transaction's rows are contiguous and numbered from 0.
	for _, tx := range em.committed {
		for i, c := range tx.Changes {
			if c.Index != int64(i) || !strings.HasPrefix(c.Pos, "gtid:") {
				t.Fatalf("transaction numbering: %+v at %d", c, i)
			}
		}
	}
	t.Logf("%d writer transactions, %d changes, %d commits, 5 runs", writes, len(em.changes()), em.commits())
	_ = context.Background
}
