package testharness_test

import (
	"context"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

func timed(t *testing.T, what string, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	t.Logf("%s took %v", what, time.Since(start).Round(time.Millisecond))
}

func TestInstallIsIdempotent(t *testing.T) {
	timed(t, "Install(all)", func() {
		if err := testharness.Install(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	if err := testharness.Install(context.Background(), "nope"); err == nil {
		t.Fatal("unknown component accepted")
	}
}

func TestPostgres(t *testing.T) {
	pg := testharness.Postgres(t)
	if got := pg.DSN("x"); got != "postgres://postgres@127.0.0.1:"+strconv.Itoa(pg.Port)+"/x?sslmode=disable" {
		t.Fatalf("DSN = %q", got)
	}
	var db string
	t.Run("database", func(t *testing.T) {
		// Registered before NewDatabase, so the replication connection is
		// still streaming when the database cleanup runs.
		var repl *pgconn.PgConn
		t.Cleanup(func() {
			if repl != nil {
				repl.Close(context.Background())
			}
		})
		db = pg.NewDatabase(t)
		for setting, want := range map[string]string{
			"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
			"server_encoding": "UTF8", "lc_collate": "C", "fsync": "off",
		} {
			if got := pg.QueryValue(t, db, "SHOW "+setting); got != want {
				t.Errorf("%s = %q, want %q", setting, got, want)
			}
		}
		pg.Exec(t, db, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR ALL TABLES`)
		pg.Exec(t, db, `INSERT INTO t VALUES ($1, $2)`, 1, "one")
		if got := pg.QueryValue(t, db, `SELECT v FROM t WHERE id = $1`, 1); got != "one" {
			t.Fatalf("v = %q", got)
		}
		// A logical slot, held by an open replication connection, must not
		// stop the cleanup from dropping the database.
		pg.Exec(t, db, `SELECT pg_create_logical_replication_slot('s1', 'pgoutput')`)
		repl = startReplication(t, pg.ReplicationDSN(db), `START_REPLICATION SLOT s1 LOGICAL 0/0 (proto_version '1', publication_names 'p')`)
		waitFor(t, 10*time.Second, func() bool {
			return pg.QueryValue(t, "postgres", `SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name = 's1'`) == "1"
		})
	})
	if got := pg.QueryValue(t, "postgres", `SELECT count(*) FROM pg_database WHERE datname = $1`, db); got != "0" {
		t.Errorf("database %s not dropped at cleanup", db)
	}
	if got := pg.QueryValue(t, "postgres", `SELECT count(*) FROM pg_replication_slots`); got != "0" {
		t.Errorf("%s replication slots left after cleanup", got)
	}
}

func TestPostgresRestart(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE t (id int); INSERT INTO t VALUES (1)`)
	port := pg.Port
	timed(t, "PostgreSQL restart", func() { pg.Restart(t) })
	if pg.Port != port {
		t.Fatalf("port changed %d -> %d", port, pg.Port)
	}
	pg.Exec(t, db, `INSERT INTO t VALUES (2)`)

	// A crash, then the next user of the shared server gets it started again.
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if pg.Running() {
		t.Fatal("running after Kill")
	}
	timed(t, "PostgreSQL start after kill", func() { pg = testharness.Postgres(t) })
	if got := pg.QueryValue(t, db, `SELECT count(*) FROM t`); got != "2" {
		t.Fatalf("count = %s after crash recovery", got)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
}

func TestDedicatedPostgres(t *testing.T) {
	var pg *testharness.PG
	timed(t, "NewPostgres", func() { pg = testharness.NewPostgres(t) })
	if shared := testharness.Postgres(t); shared.Port == pg.Port {
		t.Fatal("dedicated server shares the port of the shared one")
	}
	var level string
	if err := pg.Connect(t, "postgres").QueryRow(context.Background(), "SHOW wal_level").Scan(&level); err != nil || level != "logical" {
		t.Fatalf("wal_level = %q, %v", level, err)
	}
}

func TestMariaDB(t *testing.T) {
	m := testharness.MariaDB(t)
	for v, want := range map[string]string{
		"@@binlog_format": "ROW", "@@binlog_row_image": "FULL", "@@binlog_row_metadata": "FULL",
		"@@gtid_strict_mode": "1", "@@log_bin": "1", "@@log_slave_updates": "1", "@@server_id": "1",
		"@@character_set_server": "utf8mb4", "@@bind_address": "127.0.0.1",
	} {
		if got := m.QueryValue(t, "", "SELECT "+v); got != want {
			t.Errorf("%s = %q, want %q", v, got, want)
		}
	}
	if v := m.QueryValue(t, "", "SELECT VERSION()"); !strings.Contains(v, "10.11") || !strings.Contains(v, "MariaDB") {
		t.Errorf("version %q", v)
	}
	db := m.NewDatabase(t)
	posFile := m.QueryValue(t, "", "SHOW MASTER STATUS")
	m.Exec(t, db, "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20)); INSERT INTO t VALUES (1, 'a')")
	m.Exec(t, db, "INSERT INTO t VALUES (?, ?)", 2, "b")
	if got := m.QueryValue(t, db, "SELECT COUNT(*) FROM t"); got != "2" {
		t.Fatalf("count = %s", got)
	}
	gtid := m.QueryValue(t, "", "SELECT @@gtid_binlog_pos")
	if !strings.HasPrefix(gtid, "0-1-") {
		t.Fatalf("gtid_binlog_pos = %q", gtid)
	}

	// The binlog carries column names (binlog_row_metadata=FULL).
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 100, Flavor: m.Flavor, Host: m.Host, Port: uint16(m.Port), User: m.User, Password: m.Password,
	})
	defer syncer.Close()
	streamer, err := syncer.StartSync(mysql.Position{Name: posFile, Pos: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for rows := 0; rows < 2; {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			t.Fatalf("reading binlog: %v", err)
		}
		if re, ok := ev.Event.(*replication.RowsEvent); ok && string(re.Table.Schema) == db {
			if names := re.Table.ColumnNameString(); !slices.Equal(names, []string{"id", "name"}) {
				t.Fatalf("column names in TABLE_MAP = %v", names)
			}
			rows += len(re.Rows)
		}
	}
}

func TestMariaDBRestart(t *testing.T) {
	m := testharness.MariaDB(t)
	db := m.NewDatabase(t)
	m.Exec(t, db, "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)")
	gtid := m.QueryValue(t, "", "SELECT @@gtid_binlog_pos")
	timed(t, "MariaDB restart", func() { m.Restart(t) })
	if got := m.QueryValue(t, "", "SELECT @@gtid_binlog_pos"); got != gtid {
		t.Fatalf("gtid_binlog_pos %q -> %q across restart", gtid, got)
	}
	m.Exec(t, db, "INSERT INTO t VALUES (2)")
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	timed(t, "MariaDB start after kill", func() { m = testharness.MariaDB(t) })
	if got := m.QueryValue(t, db, "SELECT COUNT(*) FROM t"); got != "2" {
		t.Fatalf("count = %s after crash recovery", got)
	}
}

func TestKafka(t *testing.T) {
	k := testharness.Kafka(t)
	brokers := k.Brokers()
	plain, txn := testharness.UniqueName(t), testharness.UniqueName(t)
	testharness.CreateTopic(t, brokers, plain, 3)
	produceConsume(t, brokers, plain, false)
	produceConsume(t, brokers, txn, true)

	if _, err := exec.LookPath("kcat"); err == nil {
		out, err := exec.Command("kcat", "-C", "-b", brokers[0], "-t", txn, "-e", "-q",
			"-X", "isolation.level=read_committed", "-f", "%s\n").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "value-txn") {
			t.Fatalf("kcat: %v: %s", err, out)
		}
	}
}

func TestKafkaRestart(t *testing.T) {
	k := testharness.Kafka(t)
	brokers := k.Brokers()
	topic, topic2 := testharness.UniqueName(t), testharness.UniqueName(t)
	produceConsume(t, brokers, topic, false)
	timed(t, "Kafka restart", func() { k.Restart(t) })
	if k.Brokers()[0] != brokers[0] {
		t.Fatalf("brokers changed %v -> %v", brokers, k.Brokers())
	}
	// The record produced before the restart is still there.
	cl := testharness.KafkaClient(t, brokers, kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	if fs.NumRecords() == 0 {
		t.Fatal("no records after restart")
	}
	produceConsume(t, brokers, topic2, true)

	// A crash, then the next user of the shared broker gets it started again.
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	timed(t, "Kafka start after kill", func() { k = testharness.Kafka(t) })
	produceConsume(t, k.Brokers(), topic2, true)
}

func TestKfake(t *testing.T) {
	c := testharness.Kfake(t, kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	brokers := testharness.KfakeBrokers(c)
	produceConsume(t, brokers, "fake", false)
	produceConsume(t, brokers, "fake-txn", true)
}

// produceConsume produces one record (in a transaction if txn) and reads it
// back with read_committed.
func produceConsume(t *testing.T, brokers []string, topic string, txn bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	value := "value-plain"
	opts := []kgo.Opt{kgo.DefaultProduceTopic(topic), kgo.AllowAutoTopicCreation()}
	if txn {
		value = "value-txn"
		opts = append(opts, kgo.TransactionalID("harness-"+topic))
	}
	p := testharness.KafkaClient(t, brokers, opts...)
	if txn {
		if err := p.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte(value)}).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}
	if txn {
		if err := p.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
	c := testharness.KafkaClient(t, brokers, kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	for {
		fs := c.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("consume %s: %v", topic, err)
		}
		for _, r := range fs.Records() {
			if string(r.Value) == value {
				return
			}
		}
	}
}

func TestProcess(t *testing.T) {
	p := testharness.StartProcess(t, "sh", "-c", `trap 'echo bye; exit 0' TERM; echo hello; while :; do sleep 0.05; done`)
	if !p.WaitOutput("hello", 10*time.Second) {
		t.Fatalf("no hello; output %q", p.Output())
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v (output %q)", err, p.Output())
	}
	if !strings.Contains(p.Output(), "bye") || p.ExitCode() != 0 {
		t.Fatalf("exit %d, output %q", p.ExitCode(), p.Output())
	}

	p = testharness.StartProcess(t, "sleep", "100")
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() || p.Wait() == nil {
		t.Fatal("sleep not killed")
	}
}

// startReplication opens a replication connection and starts streaming.
func startReplication(t *testing.T, dsn, cmd string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn.Frontend().Send(&pgproto3.Query{String: cmd})
	if err := conn.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return conn
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s", cmd, msg.Message)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
