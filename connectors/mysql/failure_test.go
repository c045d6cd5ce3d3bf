package mysql

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

func TestUnreachableServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	src := newTestSource(t, Config{Pipeline: "u", DSN: "plume:s3cret-pw@tcp(" + addr + ")/", Tables: []string{"db.*"}})
	start := time.Now()
	err = src.Run(context.Background(), nil, &recEmitter{})
	if err == nil {
		t.Fatal("Run succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, addr) || !strings.Contains(msg, "plume@") || strings.Contains(msg, "s3cret") {
		t.Errorf("error %q should name the address and user but not the password", msg)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v", d)
	}
	t.Logf("after %v: %s", time.Since(start).Round(time.Millisecond), msg)
}

func TestWrongPasswordFailsFast(t *testing.T) {
	m := testharness.MariaDB(t)
	src := newTestSource(t, Config{Pipeline: "p", DSN: "root:wrong-pw@tcp(" + m.Addr() + ")/", Tables: []string{"db.*"}})
	start := time.Now()
	err := src.Run(context.Background(), nil, &recEmitter{})
	if err == nil || strings.Contains(err.Error(), "wrong-pw") || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

func TestTLSRequiredButUnavailable(t *testing.T) {
	m := testharness.MariaDB(t)
	src := newTestSource(t, Config{Pipeline: "tls", DSN: "root@tcp(" + m.Addr() + ")/?tls=true", Tables: []string{"db.*"}})
	err := src.Run(context.Background(), nil, &recEmitter{})
	if err == nil || !strings.Contains(err.Error(), m.Addr()) {
		t.Fatalf("want a TLS error naming the server, got %v", err)
	}
	t.Logf("%v", err)
}

func TestReconnectAfterServerRestart(t *testing.T) {
	m := testharness.NewMariaDB(t) // dedicated: this test restarts it
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE r (id int primary key)")
	src := newTestSource(t, testConfig(t, m, db))
	src.connectAttempts = 10
	em := &recEmitter{}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	m.Exec(t, db, "INSERT INTO r VALUES (1),(2)")
	waitFor(t, r, 20*time.Second, "2 rows", func() bool { return len(em.changes()) == 2 })
	m.Restart(t)
	m.Exec(t, db, "INSERT INTO r VALUES (3)")
	waitFor(t, r, 60*time.Second, "row after restart", func() bool { return len(em.changes()) == 3 })
	m.Exec(t, db, "INSERT INTO r VALUES (4)")
	waitFor(t, r, 20*time.Second, "4 rows", func() bool { return len(em.changes()) == 4 })
	for i, c := range em.changes() {
		if c.After["id"] != fmt.Sprint(i+1) {
			t.Errorf("change %d: %v", i, c.After)
		}
	}
}

// TestReconnectInsideTransaction kills the binlog dump connection while a
// large transaction streams: the source re-reads the transaction from its
// start and skips the rows it had already emitted, so the open Emitter
// transaction continues without loss or duplicates.
func TestReconnectInsideTransaction(t *testing.T) {
	const rows = 30000
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE k (id int primary key, pad varchar(100))")
	src := newTestSource(t, testConfig(t, m, db))
	var emitted atomic.Int64
	var killed atomic.Bool
	em := &recEmitter{}
	em.onEmit = func(c *event.Change) error {
		if n := emitted.Add(1); n == rows/3 && !killed.Load() {
			killed.Store(true)
			id := m.QueryValue(t, "", "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%' ORDER BY ID DESC LIMIT 1")
			m.Exec(t, "", "KILL CONNECTION "+id)
		}
		return nil
	}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	m.Exec(t, db, fmt.Sprintf("INSERT INTO k SELECT seq, REPEAT('p', 100) FROM seq_1_to_%d", rows))
	waitFor(t, r, 60*time.Second, "the whole transaction", func() bool { return len(em.changes()) >= rows })
	got := em.changes()
	if len(got) != rows || !killed.Load() {
		t.Fatalf("%d changes (killed %v)", len(got), killed.Load())
	}
	for i, c := range got {
		if c.Index != int64(i) || c.After["id"] != fmt.Sprint(i+1) {
			t.Fatalf("change %d: index %d id %s", i, c.Index, c.After["id"])
		}
	}
	if n := len(em.committed); n != 2 {
		t.Errorf("%d commits, want 2 (initial + the transaction)", n)
	}
}

func TestRunStopsCleanlyOnCancel(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	src := newTestSource(t, testConfig(t, m, db))
	em := &recEmitter{}
	r := startRun(t, src, nil, em)
	waitFor(t, r, 20*time.Second, "initial commit", func() bool { return em.commits() >= 1 })
	if err := r.stop(t); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v on cancel", err)
	}
}
