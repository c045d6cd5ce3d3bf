package testharness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgBinDir is where the PostgreSQL 15 server binaries are:
// $PLUME_PG_BINDIR or Debian's /usr/lib/postgresql/15/bin.
func pgBinDir() string {
	if d := os.Getenv("PLUME_PG_BINDIR"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// PG is an ephemeral PostgreSQL 15 server: trust authentication, superuser
// "postgres", UTF8 with C locale, wal_level=logical, max_replication_slots=20,
// max_wal_senders=20, fsync off (commits survive a server crash, not an OS
// crash). It listens on Host:Port and on a unix socket in SocketDir.
type PG struct {
	Host      string // always 127.0.0.1
	Port      int
	User      string // superuser, "postgres"
	SocketDir string
	DataDir   string
	LogPath   string // server log (stderr)

	mu     sync.Mutex
	dir    string
	cred   *syscall.Credential // nil when not running as root
	proc   *proc
	closed bool
	// options are extra server settings (SetServerOption).
	options map[string]string
}

var sharedPG sharedServer[*PG]

// Postgres returns the PostgreSQL server shared by the whole test binary,
// starting it on first use (and again if a test left it stopped). If it
// cannot be started the test is skipped, or fails when CI=true.
func Postgres(t testing.TB) *PG {
	t.Helper()
	return sharedPG.get(t, "PostgreSQL", newPG)
}

// SetServerOption overrides a server setting (as `-c name=value` on the
// command line, after the harness's own) from the next Start or Restart
// on. Use it on a dedicated server (NewPostgres), e.g. to start one with
// wal_level=replica.
func (p *PG) SetServerOption(name, value string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.options == nil {
		p.options = map[string]string{}
	}
	p.options[name] = value
}

// NewPostgres starts a PostgreSQL server dedicated to t and removes it at
// t.Cleanup. Use it for tests that stop, kill or restart the server.
func NewPostgres(t testing.TB) *PG {
	t.Helper()
	return dedicated(t, "PostgreSQL", newPG)
}

func (p *PG) listenPort() int { return p.Port }

func newPG() (*PG, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, CompPostgres); err != nil {
		return nil, err
	}
	cred, err := postgresUser()
	if err != nil {
		return nil, err
	}
	dir, err := mkTemp("pg")
	if err != nil {
		return nil, err
	}
	pg := &PG{
		Host:      "127.0.0.1",
		User:      "postgres",
		SocketDir: filepath.Join(dir, "sock"),
		DataDir:   filepath.Join(dir, "data"),
		LogPath:   filepath.Join(dir, "postgres.log"),
		dir:       dir,
		cred:      cred,
	}
	if err := os.Mkdir(pg.SocketDir, 0o755); err != nil {
		return nil, err
	}
	if cred != nil {
		// The server runs as postgres: it needs the dir, the root-created
		// log file is handed over as an open descriptor.
		for _, p := range []string{dir, pg.SocketDir} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(pgBinDir(), "initdb"),
		"-D", pg.DataDir, "-E", "UTF8", "--locale=C", "-A", "trust", "-U", "postgres", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Env = pgEnv()
	if err := runLogged(initdb, filepath.Join(dir, "initdb.log")); err != nil {
		return nil, fmt.Errorf("initdb: %w", err)
	}
	onExit(func() { pg.close() })
	for attempt := 0; ; attempt++ {
		if pg.Port, err = FreePort(); err != nil {
			return nil, err
		}
		err = pg.Start()
		if err == nil || attempt > 0 || !isPortClash(err.Error()) {
			return pg, err
		}
	}
}

// pgEnv is the environment for PostgreSQL binaries: no PG* variables of the
// caller, a C locale.
func pgEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if len(kv) >= 2 && kv[:2] == "PG" || len(kv) >= 3 && kv[:3] == "LC_" || len(kv) >= 5 && kv[:5] == "LANG=" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C")
}

// postgresUser returns the credential to run PostgreSQL with: nil when not
// root, otherwise the OS user postgres, created if missing.
func postgresUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		out, err2 := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/var/lib/postgresql", "--shell", "/bin/bash", "postgres").CombinedOutput()
		if err2 != nil {
			return nil, fmt.Errorf("creating OS user postgres: %v: %s", err2, out)
		}
		if u, err = user.Lookup("postgres"); err != nil {
			return nil, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Start starts the server (same port and data dir as before). It is a no-op
// if the server is running.
func (p *PG) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *PG) startLocked() error {
	if p.closed {
		return errors.New("testharness: PostgreSQL server was closed")
	}
	if p.proc != nil && !p.proc.exited() {
		return nil
	}
	cmd := exec.Command(filepath.Join(pgBinDir(), "postgres"),
		"-D", p.DataDir,
		"-p", strconv.Itoa(p.Port),
		"-k", p.SocketDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "wal_level=logical",
		"-c", "max_replication_slots=20",
		"-c", "max_wal_senders=20",
		"-c", "max_connections=200",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "log_line_prefix=%m [%p] %d ",
	)
	for _, name := range sortedKeys(p.options) {
		cmd.Args = append(cmd.Args, "-c", name+"="+p.options[name])
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = pgEnv()
	proc, err := startServer("PostgreSQL", cmd, p.LogPath, 60*time.Second, p.ping)
	if err != nil {
		return err
	}
	p.proc = proc
	return nil
}

func (p *PG) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// Stop shuts the server down ("fast" mode: clients are disconnected, a
// checkpoint is written). It is a no-op if the server is not running.
func (p *PG) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *PG) stopLocked() error {
	if p.proc == nil || p.proc.exited() {
		return nil
	}
	err := p.proc.stop(syscall.SIGINT, 60*time.Second)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // the server reports its shutdown in the log
	}
	return err
}

// Kill crashes the server: SIGKILL to the postmaster and all its backends.
// The next Start performs crash recovery.
func (p *PG) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		p.proc.kill()
	}
	return nil
}

// Restart stops and starts the server with the same port and data dir,
// failing t on error.
func (p *PG) Restart(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.stopLocked(); err != nil {
		t.Fatalf("testharness: stop PostgreSQL: %v", err)
	}
	if err := p.startLocked(); err != nil {
		t.Fatalf("testharness: restart PostgreSQL: %v", err)
	}
}

// Running reports whether the server process is running.
func (p *PG) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc != nil && !p.proc.exited()
}

// close stops the server for good and removes its files.
func (p *PG) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	_ = p.stopLocked()
	p.closed = true
	removeTemp(p.dir)
}

// DSN returns a pgx/libpq URL for database db as the superuser.
func (p *PG) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", p.User, p.Host, p.Port, db)
}

// ReplicationDSN returns DSN(db) for a logical replication connection
// (replication=database), as used with pglogrepl.
func (p *PG) ReplicationDSN(db string) string {
	return p.DSN(db) + "&replication=database"
}

// NewDatabase creates a database with a fresh unique name and returns the
// name. At t.Cleanup its backends are terminated, its replication slots
// dropped and the database dropped (errors are ignored).
func (p *PG) NewDatabase(t testing.TB) string {
	t.Helper()
	name := UniqueName(t)
	p.Exec(t, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() { p.dropDatabase(name) })
	return name
}

func (p *PG) dropDatabase(name string) {
	if !p.Running() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	// Walsenders hold their slots; a slot becomes droppable shortly after its
	// backend is terminated.
	for i := 0; i < 100; i++ {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); err != nil || left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// Connect opens a pgx connection to db, closed at t.Cleanup.
func (p *PG) Connect(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(db))
	if err != nil {
		t.Fatalf("testharness: connect to PostgreSQL db %s: %v", db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs sql in db on a fresh connection, failing t on error. Without
// args it uses the simple protocol, so sql may hold several statements.
func (p *PG) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(db))
	if err != nil {
		t.Fatalf("testharness: connect to PostgreSQL db %s: %v", db, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("testharness: PostgreSQL exec %q: %v", sql, err)
	}
}

// QueryValue runs a query in db and returns the first column of the first
// row formatted with fmt.Sprint ("<nil>" for NULL), failing t if there is no
// row or on error.
func (p *PG) QueryValue(t testing.TB, db, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(db))
	if err != nil {
		t.Fatalf("testharness: connect to PostgreSQL db %s: %v", db, err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("testharness: PostgreSQL query %q: %v", sql, err)
	}
	defer rows.Close()
	if !rows.Next() {
		rows.Close()
		t.Fatalf("testharness: PostgreSQL query %q: no rows (err %v)", sql, rows.Err())
	}
	vals, err := rows.Values()
	if err != nil || len(vals) == 0 {
		t.Fatalf("testharness: PostgreSQL query %q: %v", sql, err)
	}
	return fmt.Sprint(vals[0])
}
