package testharness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

// MySQL is an ephemeral MariaDB 10.11 server configured for binlog CDC:
// log-bin, binlog_format=ROW, binlog_row_image=FULL,
// binlog_row_metadata=FULL, server_id=1, gtid_strict_mode=ON,
// log_slave_updates, utf8mb4. User root has an empty password over TCP.
type MySQL struct {
	Host     string // always 127.0.0.1
	Port     int
	User     string // "root"
	Password string // ""
	Flavor   string // go-mysql flavor: "mariadb"
	ServerID uint32 // 1; replication clients need a different one
	DataDir  string
	LogPath  string // server error log (stderr)

	socket string

	procServer // Start, Stop, Kill, Restart, Running
}

var sharedMariaDB sharedServer[*MySQL]

// MariaDB returns the MariaDB server shared by the whole test binary,
// starting it on first use (and again if a test left it stopped). If it
// cannot be started the test is skipped, or fails when CI=true.
func MariaDB(t testing.TB) *MySQL {
	t.Helper()
	return sharedMariaDB.get(t, "MariaDB", newMariaDB)
}

// NewMariaDB starts a MariaDB server dedicated to t and removes it at
// t.Cleanup. Use it for tests that stop, kill or restart the server.
func NewMariaDB(t testing.TB) *MySQL {
	t.Helper()
	return dedicated(t, "MariaDB", newMariaDB)
}

func (m *MySQL) listenPort() int { return m.Port }

func newMariaDB() (*MySQL, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, CompMariaDB); err != nil {
		return nil, err
	}
	dir, err := mkTemp("mariadb")
	if err != nil {
		return nil, err
	}
	m := &MySQL{
		Host:     "127.0.0.1",
		User:     "root",
		Flavor:   mysql.MariaDBFlavor,
		ServerID: 1,
		DataDir:  filepath.Join(dir, "data"),
		LogPath:  filepath.Join(dir, "mariadb.log"),
		socket:   filepath.Join(dir, "mysqld.sock"),
	}
	m.procServer = procServer{name: "MariaDB", dir: dir, launch: m.launch}
	install := exec.CommandContext(ctx, lookBin("mariadb-install-db"), append([]string{
		"--no-defaults", "--datadir=" + m.DataDir,
		"--auth-root-authentication-method=normal", "--skip-test-db",
	}, mariadbUser()...)...)
	if err := runLogged(install, filepath.Join(dir, "install-db.log")); err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %w", err)
	}
	onExit(func() { m.close() })
	for attempt := 0; ; attempt++ {
		if m.Port, err = FreePort(); err != nil {
			return nil, err
		}
		err = m.Start()
		if err == nil || attempt > 0 || !isPortClash(err.Error()) {
			return m, err
		}
	}
}

// launch starts mariadbd and waits up to 60s until it answers a ping.
func (m *MySQL) launch() (*proc, error) {
	cmd := exec.Command(lookBin("mariadbd"), append([]string{
		"--no-defaults", // must come first
		"--datadir=" + m.DataDir,
		"--port=" + strconv.Itoa(m.Port),
		"--bind-address=127.0.0.1",
		"--socket=" + m.socket,
		"--pid-file=" + filepath.Join(m.dir, "mariadbd.pid"),
		"--tmpdir=" + m.dir,
		"--skip-name-resolve",
		"--log-bin=" + filepath.Join(m.DataDir, "binlog"),
		"--binlog-format=ROW",
		"--binlog-row-image=FULL",
		"--binlog-row-metadata=FULL",
		"--server-id=1",
		"--gtid-strict-mode=ON",
		"--log-slave-updates",
		"--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_unicode_ci",
		"--innodb-buffer-pool-size=128M",
		"--innodb-log-file-size=64M",
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
		"--max-connections=300",
	}, mariadbUser()...)...)
	return startServer("MariaDB", cmd, m.LogPath, 60*time.Second, m.ping)
}

// mariadbUser is the --user flag, which MariaDB requires (and only
// accepts) when running as root.
func mariadbUser() []string {
	if os.Geteuid() == 0 {
		return []string{"--user=root"}
	}
	return nil
}

func (m *MySQL) ping(ctx context.Context) error {
	c, err := m.connect(ctx, "")
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Ping()
}

func (m *MySQL) connect(ctx context.Context, db string) (*client.Conn, error) {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return client.ConnectWithDialer(ctx, "tcp", m.Addr(), m.User, m.Password, db, dialer.DialContext,
		func(c *client.Conn) error { return c.SetCapability(mysql.CLIENT_MULTI_STATEMENTS) })
}

// Addr returns "127.0.0.1:PORT".
func (m *MySQL) Addr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.Port)) }

// DSN returns a go-sql-driver/mysql style DSN for database db as root.
func (m *MySQL) DSN(db string) string {
	return fmt.Sprintf("%s@tcp(%s)/%s?parseTime=false&multiStatements=true", m.User, m.Addr(), db)
}

// NewDatabase creates a database with a fresh unique name and returns the
// name; it is dropped at t.Cleanup (errors ignored).
func (m *MySQL) NewDatabase(t testing.TB) string {
	t.Helper()
	name := UniqueName(t)
	m.Exec(t, "", "CREATE DATABASE `"+name+"`")
	t.Cleanup(func() {
		if !m.Running() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := m.connect(ctx, ""); err == nil {
			_, _ = c.Execute("DROP DATABASE IF EXISTS `" + name + "`")
			c.Close()
		}
	})
	return name
}

// Connect opens a go-mysql client connection to db ("" for none), closed
// at t.Cleanup.
func (m *MySQL) Connect(t testing.TB, db string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := m.connect(ctx, db)
	if err != nil {
		t.Fatalf("testharness: connect to MariaDB db %q: %v", db, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Exec runs sql in db ("" for none) on a fresh connection, failing t on
// error. Without args sql may hold several statements separated by ';'.
func (m *MySQL) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	if _, err := m.exec(db, sql, args...); err != nil {
		t.Fatalf("testharness: MariaDB exec %q: %v", sql, err)
	}
}

// QueryValue runs a query in db and returns the first column of the first
// row as a string ("" for NULL), failing t if there is no row or on error.
func (m *MySQL) QueryValue(t testing.TB, db, sql string, args ...any) string {
	t.Helper()
	r, err := m.exec(db, sql, args...)
	if err != nil {
		t.Fatalf("testharness: MariaDB query %q: %v", sql, err)
	}
	if r.Resultset == nil || r.RowNumber() == 0 {
		t.Fatalf("testharness: MariaDB query %q: no rows", sql)
	}
	s, err := r.GetString(0, 0)
	if err != nil {
		t.Fatalf("testharness: MariaDB query %q: %v", sql, err)
	}
	return s
}

func (m *MySQL) exec(db, sql string, args ...any) (*mysql.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := m.connect(ctx, db)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if len(args) > 0 {
		return c.Execute(sql, args...)
	}
	// ExecuteMultiple handles one or several statements; keep the last
	// result and the first error.
	var last *mysql.Result
	var firstErr error
	_, err = c.ExecuteMultiple(sql, func(r *mysql.Result, err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if r != nil {
			last = r
		}
	})
	if err == nil {
		err = firstErr
	}
	if err != nil {
		return nil, err
	}
	return last, nil
}
