package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestLeastPrivilegeRole runs snapshot, stream and heartbeats as a role
// with only LOGIN REPLICATION and SELECT, on a publication created by the
// tables' owner (docs/postgres.md).
func TestLeastPrivilegeRole(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	role := "plume_lp_" + strings.TrimPrefix(db, "t_")
	if len(role) > 60 {
		role = role[:60]
	}
	pg.Exec(t, db, fmt.Sprintf(`CREATE ROLE %s LOGIN REPLICATION;
		CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT g, 'v' FROM generate_series(1, 50) g;
		CREATE TABLE other (id int);
		GRANT SELECT ON t TO %s;
		CREATE PUBLICATION plume_lp FOR TABLE t`, role, role))
	t.Cleanup(func() {
		pg.Exec(t, db, `DROP OWNED BY `+role)
		pg.Exec(t, "postgres", `DROP ROLE IF EXISTS `+role)
	})
	pg.Exec(t, db, `REVOKE ALL ON DATABASE `+db+` FROM PUBLIC; GRANT CONNECT ON DATABASE `+db+` TO `+role)
	cfg := testConfig(pg, db, "lp", "public.t")
	cfg.DSN = fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", role, pg.Host, pg.Port, db)
	cfg.Publication = "plume_lp"
	cfg.Snapshot = true
	cfg.HeartbeatInterval = 200 * time.Millisecond
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitFor(t, 30*time.Second, "snapshot", func() bool {
		if err := r.failed(); err != nil {
			t.Fatal(err)
		}
		return len(rec.changes()) >= 50
	})
	waitStreaming(t, pg, db, r)
	pg.Exec(t, db, `INSERT INTO t VALUES (100, 'x'); INSERT INTO other VALUES (1)`)
	waitFor(t, 30*time.Second, "streamed insert", func() bool { return len(rec.changes()) >= 51 })
	walPos, _ := pglogrepl.ParseLSN(pg.QueryValue(t, db, `SELECT pg_current_wal_lsn()::text`))
	waitFor(t, 30*time.Second, "heartbeat ack", func() bool { return slotLSN(t, pg, db, src.slot) >= walPos })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestFirstRunDiedBeforeCommit: the slot was created but nothing was ever
// committed (no checkpoint). The next run streams from the slot's
// confirmed_flush_lsn and snapshots in a fresh snapshot; nothing is lost.
func TestFirstRunDiedBeforeCommit(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT g, 'v' FROM generate_series(1, 300) g`)
	cfg := testConfig(pg, db, "died-early", "public.t")
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 100
	src := newSource(t, cfg)
	rec := newRecorder(src, false)
	boom := errors.New("kafka down")
	rec.failCommit = boom
	err := src.Run(context.Background(), nil, rec)
	if !errors.Is(err, boom) {
		t.Fatalf("Run: %v", err)
	}
	src.Close()
	// Written after the slot's consistent point, before the next run.
	pg.Exec(t, db, `INSERT INTO t VALUES (1000, 'late'); UPDATE t SET v = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2`)

	src2 := newSource(t, cfg)
	rec2 := newRecorder(src2, true)
	r := startRun(t, src2, nil, rec2)
	waitStreaming(t, pg, db, r)
	pg.Exec(t, db, `INSERT INTO t VALUES (2000, 'marker')`)
	waitFor(t, 30*time.Second, "marker", func() bool {
		for _, c := range rec2.changes() {
			if len(c.After) > 0 && c.After[0] == int64(2000) {
				return true
			}
		}
		return false
	})
	st := replayState{}
	var evs []replayEvent
	for _, c := range rec2.changes() {
		e := toReplay(c)
		evs = append(evs, e)
		st.apply(t, e)
	}
	checkUniqueIDs(t, evs)
	compareState(t, st, dbState(t, pg, db, map[string][]string{"public.t": {"id"}}))
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestPartitionedTable: a partitioned table is captured under its root
// name (publish_via_partition_root), in the snapshot and the stream, and
// its partitions are not captured twice.
func TestPartitionedTable(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
		CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
		INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 40) g`)
	cfg := testConfig(pg, db, "parts", "public.*")
	cfg.Snapshot = true
	cfg.SnapshotChunkSize = 15
	src := newSource(t, cfg)
	rec := newRecorder(src, true)
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	pg.Exec(t, db, `INSERT INTO m VALUES (100, 'eu', 1); UPDATE m SET region = 'us' WHERE id = 100`)
	waitFor(t, 30*time.Second, "changes", func() bool { return len(rec.changes()) >= 42 })
	time.Sleep(200 * time.Millisecond)
	st := replayState{}
	for _, c := range rec.changes() {
		if c.Table.QualifiedName() != "public.m" {
			t.Fatalf("change for %s", c.Table.QualifiedName())
		}
		st.apply(t, toReplay(c))
	}
	if n := len(rec.changes()); n != 43 {
		t.Errorf("%d changes, want 40 snapshot rows + insert + cross-partition update (delete+insert)", n)
	}
	compareState(t, st, dbState(t, pg, db, map[string][]string{"public.m": {"id", "region"}}))
	pubTables := pg.QueryValue(t, db, `SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'plume_parts'`)
	if pubTables != "m" {
		t.Errorf("publication tables %q", pubTables)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSlotInUseWaits: a run that starts while the previous run's walsender
// still holds the slot waits for it instead of failing.
func TestSlotInUseWaits(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := testConfig(pg, db, "busy", "public.t")
	a := newSource(t, cfg)
	ra := startRun(t, a, nil, newRecorder(a, true))
	waitStreaming(t, pg, db, ra)
	pg.Exec(t, db, `INSERT INTO t VALUES (1)`)
	time.Sleep(500 * time.Millisecond)

	b := newSource(t, cfg)
	recB := newRecorder(b, true)
	rb := startRun(t, b, nil, recB)
	time.Sleep(time.Second)
	if err := rb.failed(); err != nil {
		t.Fatalf("second run failed while the slot was busy: %v", err)
	}
	if err := ra.stop(); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, db, `INSERT INTO t VALUES (2)`)
	waitFor(t, 30*time.Second, "second run streaming", func() bool {
		if err := rb.failed(); err != nil {
			t.Fatal(err)
		}
		for _, c := range recB.changes() {
			if c.After[0] == int64(2) {
				return true
			}
		}
		return false
	})
	if err := rb.stop(); err != nil {
		t.Fatal(err)
	}
}
