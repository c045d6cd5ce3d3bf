// Package testharness starts the real infrastructure Plume's tests run
// against: PostgreSQL 15, MariaDB 10.11, Apache Kafka 4.1.1 (KRaft), the
// in-process kfake Kafka and OpenSearch 2.19, plus helpers to build and run
// the plume binary.
//
// # Usage
//
// Every test package that uses a shared server wires Main into TestMain so the
// servers it started are stopped (and their temp dirs removed) at exit:
//
//	func TestMain(m *testing.M) { testharness.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		pg := testharness.Postgres(t)  // started once per test binary
//		db := pg.NewDatabase(t)        // fresh database, dropped at t.Cleanup
//		pg.Exec(t, db, `CREATE TABLE t (id int primary key)`)
//		conn, _ := pgx.Connect(ctx, pg.DSN(db))
//		...
//	}
//
// Postgres, MariaDB and Kafka return a process-wide server shared by all tests
// of the binary; isolate tests with NewDatabase and UniqueName (for topics,
// groups, transactional ids), since -count=N reuses the same servers. Tests
// that Stop, Kill or Restart a server should use a dedicated one instead
// (NewPostgres, NewMariaDB, NewKafka), which belongs to that test alone and is
// torn down at t.Cleanup. If a test leaves the shared server stopped, the next
// call to Postgres/MariaDB/Kafka starts it again.
//
// If a server cannot be installed or started, the test is skipped with the
// reason, or fails when the environment variable CI is "true".
//
// # Installation
//
// Install (also run by scripts/install-test-deps.sh through
// ./pkg/testharness/cmd/install) installs missing Debian packages with apt-get
// (root only) and downloads the Kafka jars from Maven Central into the cache
// directory, $PLUME_CACHE or ~/.cache/plume. The server constructors call
// Install for their component, so a machine with the packages already present
// needs nothing else.
//
// # Environment
//
//   - CI=true: fail instead of skip when a server is unavailable.
//   - PLUME_CACHE: download cache (default ~/.cache/plume).
//   - PLUME_PG_BINDIR: PostgreSQL binaries (default /usr/lib/postgresql/15/bin).
//   - PLUME_KEEP_TEMP=1: keep the servers' temp dirs (data and logs) at exit.
//
// # Processes
//
// Servers run as child processes in their own process group with
// Pdeathsig=SIGKILL, so they die with the test binary even when it is killed
// or times out; temp dirs left behind that way are removed by the next Main.
// PostgreSQL refuses to run as root, so when the tests run as root it runs as
// the OS user "postgres" (created if missing); OpenSearch likewise runs as
// "plume-opensearch", from a per-server copy (hard links) of the
// distribution unpacked in the cache dir, with a 512 MiB heap.
package testharness
