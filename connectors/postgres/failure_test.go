package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

// runOnce runs a fresh source from cp and returns Run's error (the test
// fails if Run keeps running).
func runOnce(t *testing.T, cfg Config, from []byte) error {
	t.Helper()
	src := newSource(t, cfg)
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := src.Run(ctx, from, newRecorder(src, false))
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run did not fail: %v", err)
	}
	return err
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

// streamSomething runs a source until it committed n transactions and
// returns them.
func streamSomething(t *testing.T, pg *testharness.PG, db string, cfg Config, n int, ack bool) []txn {
	t.Helper()
	src := newSource(t, cfg)
	rec := newRecorder(src, ack)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	for i := 0; i < n; i++ {
		pg.Exec(t, db, fmt.Sprintf(`INSERT INTO t VALUES (%d)`, i))
	}
	waitFor(t, 30*time.Second, "transactions", func() bool { return len(rec.committed()) >= n })
	if ack {
		want, _ := lsnOf(rec.lastCP())
		waitFor(t, 10*time.Second, "confirmed_flush_lsn", func() bool { return slotLSN(t, pg, db, src.slot) >= want })
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	return rec.committed()
}

// TestSlotMissingAfterRestart: a checkpoint exists but the slot was
// dropped: a clear error, no silent re-snapshot or re-creation.
func TestSlotMissingAfterRestart(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := testConfig(pg, db, "slot-missing", "public.t")
	cfg.Snapshot = true
	txns := streamSomething(t, pg, db, cfg, 1, false)
	cp := txns[len(txns)-1].cp
	// The stopped walsender releases the slot shortly after its client left.
	waitFor(t, 10*time.Second, "slot inactive", func() bool {
		return pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'plume_slot_missing' AND NOT active`) == "1"
	})
	pg.Exec(t, db, `SELECT pg_drop_replication_slot('plume_slot_missing')`)
	err := runOnce(t, cfg, cp)
	lsn, _ := lsnOf(cp)
	wantErr(t, err, `slot "plume_slot_missing" does not exist`, lsn.String())
	if n := pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots`); n != "0" {
		t.Errorf("a slot was created: %s", n)
	}
}

// TestCheckpointBeforeConfirmedFlush: the checkpoint is older than what
// the slot already released.
func TestCheckpointBeforeConfirmedFlush(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := testConfig(pg, db, "lsn-behind", "public.t")
	txns := streamSomething(t, pg, db, cfg, 2, true)
	old := txns[0].cp
	err := runOnce(t, cfg, old)
	oldLSN, _ := lsnOf(old)
	newLSN, _ := lsnOf(txns[1].cp)
	wantErr(t, err, `slot "plume_lsn_behind"`, oldLSN.String(), "confirmed_flush_lsn "+newLSN.String())
}

// TestPublicationLacksTable: a pre-created publication without a
// configured table.
func TestPublicationLacksTable(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
		CREATE PUBLICATION mypub FOR TABLE a`)
	cfg := testConfig(pg, db, "pub-lacks", "public.a", "public.b")
	cfg.Publication = "mypub"
	err := runOnce(t, cfg, nil)
	wantErr(t, err, `publication "mypub"`, `slot "plume_pub_lacks"`, "public.b", "ALTER PUBLICATION")
	// The covering case works: add the table and the source runs.
	pg.Exec(t, db, `ALTER PUBLICATION mypub ADD TABLE b`)
	src := newSource(t, cfg)
	r := startRun(t, src, nil, newRecorder(src, false))
	waitStreaming(t, pg, db, r)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestMissingTableAndBadConfig: configuration errors.
func TestMissingTableAndBadConfig(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`)
	err := runOnce(t, testConfig(pg, db, "no-table", "public.nope"), nil)
	wantErr(t, err, "public.nope does not exist")
	if _, err := New(Config{DSN: pg.DSN(db), Tables: []string{"a"}, Slot: "Bad-Name", Publication: "p"}, nil); err == nil {
		t.Error("invalid slot name accepted")
	}
	if got := DefaultName("Orders-EU.v2"); got != "plume_orders_eu_v2" {
		t.Errorf("DefaultName = %q", got)
	}
	long := DefaultName(strings.Repeat("a", 70))
	if len(long) != 63 || !slotNameRE.MatchString(long) || long[:54] != "plume_"+strings.Repeat("a", 48) {
		t.Errorf("long DefaultName = %q", long)
	}
}

// TestWALLevelNotLogical runs against a dedicated server with
// wal_level = replica.
func TestWALLevelNotLogical(t *testing.T) {
	pg := testharness.NewPostgres(t)
	pg.SetServerOption("wal_level", "replica")
	pg.Restart(t)
	if lvl := pg.QueryValue(t, "postgres", `SELECT current_setting('wal_level')`); lvl != "replica" {
		t.Fatalf("wal_level is %q after the restart", lvl)
	}
	pg.Exec(t, "postgres", `CREATE TABLE t (id int PRIMARY KEY)`)
	err := runOnce(t, testConfig(pg, "postgres", "wal-level", "public.t"), nil)
	wantErr(t, err, `wal_level is "replica"`, `slot "plume_wal_level"`, "wal_level = logical")
}

// TestUnreachableDatabase: bounded retries, then an error with the address
// and without the password.
func TestUnreachableDatabase(t *testing.T) {
	port, err := testharness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Pipeline: "unreachable",
		DSN:      fmt.Sprintf("postgres://plume:s3cr3t-pw@127.0.0.1:%d/app?sslmode=disable&connect_timeout=2", port),
		Tables:   []string{"public.t"},
	}
	src, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	src.conn.attempts = 3
	src.conn.backoff = 50 * time.Millisecond
	start := time.Now()
	err = src.Run(context.Background(), nil, newRecorder(src, false))
	if err == nil {
		t.Fatal("Run succeeded against a closed port")
	}
	wantErr(t, err, fmt.Sprintf("127.0.0.1:%d", port), "after 3 attempt(s)", "user plume", "database app")
	if strings.Contains(err.Error(), "s3cr3t-pw") {
		t.Errorf("error leaks the password: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("retries took %v", d)
	}
	// Drop reports the same way.
	err = Drop(context.Background(), cfg)
	if err == nil || strings.Contains(err.Error(), "s3cr3t-pw") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("Drop error: %v", err)
	}
}

// TestDrop removes the slot and the publication, and is idempotent.
func TestDrop(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := testConfig(pg, db, "drop-me", "public.t")
	streamSomething(t, pg, db, cfg, 1, false)
	if n := pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'plume_drop_me'`); n != "1" {
		t.Fatalf("slot count %s", n)
	}
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := Drop(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if n := pg.QueryValue(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'plume_drop_me'`); n != "0" {
		t.Errorf("slot left: %s", n)
	}
	if n := pg.QueryValue(t, db, `SELECT count(*) FROM pg_publication WHERE pubname = 'plume_drop_me'`); n != "0" {
		t.Errorf("publication left: %s", n)
	}
}
