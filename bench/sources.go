package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/plumecdc/plume/pkg/testharness"
)

// source is one kind of source database, started through the shared test
// harness. Every workload gets a fresh database in it.
type source interface {
	Kind() string // "mysql" or "postgres"
	// NewDB creates a database dropped at t's cleanup.
	NewDB(t *tb) string
	// CreateTable creates table (id bigint primary key, payload text); with
	// applied, also an applied_at column defaulting to the insert time (for
	// targets).
	CreateTable(ctx context.Context, db, table string, applied bool) error
	// Load inserts ids [lo, hi] with payloads of size bytes, txnRows rows per
	// source transaction.
	Load(ctx context.Context, db, table string, lo, hi int64, size, txnRows int) error
	// Count returns the number of rows of db.table.
	Count(ctx context.Context, db, table string) (int64, error)
	// Writer opens n connections for the open-loop writer.
	Writer(ctx context.Context, db, table string, size, n int) (writer, error)
	// SourceYAML returns the pipeline's source dsn and table reference.
	SourceYAML(db, table string) (dsn, ref string)
	// TargetDSN returns a sql target DSN for db.
	TargetDSN(db string) string
	// Settle waits (bounded) until the server has written back what earlier
	// workloads left dirty, so a latency run does not measure another
	// workload's I/O; it returns how long it waited.
	Settle(ctx context.Context, db string) (time.Duration, error)
	// TopicSchema is the middle part of the default topic name.
	TopicSchema(db string) string
}

// writer inserts ids [lo, hi] as one transaction on connection i.
type writer interface {
	Insert(ctx context.Context, i int, lo, hi int64) error
	Close()
}

// payloadExpr is a SQL expression of size bytes of hex text derived from the
// integer expression v (zstd compresses it to about half, like real text).
func payloadExpr(kind, v string, size int) string {
	var parts []string
	for k := 0; k*32 < size; k++ {
		if kind == "postgres" {
			parts = append(parts, fmt.Sprintf("md5((%s*37+%d)::text)", v, k))
		} else {
			parts = append(parts, fmt.Sprintf("MD5(%s*37+%d)", v, k))
		}
	}
	if kind == "postgres" {
		return fmt.Sprintf("left(%s, %d)", strings.Join(parts, "||"), size)
	}
	return fmt.Sprintf("LEFT(CONCAT(%s), %d)", strings.Join(parts, ","), size)
}

// constPayload is a payload of size bytes for the open-loop writer.
func constPayload(size int) string {
	const hex = "0123456789abcdef"
	b := make([]byte, size)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = hex[x&15]
	}
	return string(b)
}

// ---- PostgreSQL ----

type pgSource struct{ pg *testharness.PG }

func (s *pgSource) Kind() string                 { return "postgres" }
func (s *pgSource) NewDB(t *tb) string           { return s.pg.NewDatabase(t) }
func (s *pgSource) TopicSchema(db string) string { return "public" }
func (s *pgSource) TargetDSN(db string) string   { return s.pg.DSN(db) }
func (s *pgSource) SourceYAML(db, table string) (string, string) {
	return s.pg.DSN(db), "public." + table
}

func (s *pgSource) conn(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, s.pg.DSN(db))
}

func (s *pgSource) CreateTable(ctx context.Context, db, table string, applied bool) error {
	c, err := s.conn(ctx, db)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	extra := ""
	if applied {
		extra = ", applied_at timestamptz NOT NULL DEFAULT clock_timestamp()"
	}
	_, err = c.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (id bigint PRIMARY KEY, payload text NOT NULL%s)`, table, extra))
	return err
}

func (s *pgSource) Load(ctx context.Context, db, table string, lo, hi int64, size, txnRows int) error {
	c, err := s.conn(ctx, db)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	q := fmt.Sprintf(`INSERT INTO %s SELECT i, %s FROM generate_series($1::bigint, $2::bigint) i`, table, payloadExpr("postgres", "i", size))
	for a := lo; a <= hi; a += int64(txnRows) {
		b := min(a+int64(txnRows)-1, hi)
		if _, err := c.Exec(ctx, q, a, b); err != nil {
			return fmt.Errorf("load %s [%d,%d]: %w", table, a, b, err)
		}
	}
	return nil
}

func (s *pgSource) Count(ctx context.Context, db, table string) (int64, error) {
	c, err := s.conn(ctx, db)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var n int64
	err = c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

type pgWriter struct {
	conns   []*pgx.Conn
	q       string
	payload string
}

func (s *pgSource) Writer(ctx context.Context, db, table string, size, n int) (writer, error) {
	w := &pgWriter{payload: constPayload(size),
		q: fmt.Sprintf(`INSERT INTO %s SELECT i, $3 FROM generate_series($1::bigint, $2::bigint) i`, table)}
	for range n {
		c, err := s.conn(ctx, db)
		if err != nil {
			w.Close()
			return nil, err
		}
		w.conns = append(w.conns, c)
	}
	return w, nil
}

func (w *pgWriter) Insert(ctx context.Context, i int, lo, hi int64) error {
	_, err := w.conns[i].Exec(ctx, w.q, lo, hi, w.payload)
	return err
}

func (w *pgWriter) Close() {
	for _, c := range w.conns {
		c.Close(context.Background())
	}
}

// Settle runs a CHECKPOINT: PostgreSQL writes back every dirty buffer now
// rather than while the latency run's writer commits.
func (s *pgSource) Settle(ctx context.Context, db string) (time.Duration, error) {
	start := time.Now()
	c, err := s.conn(ctx, db)
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "CHECKPOINT")
	syscall.Sync()
	return time.Since(start), err
}

// ---- MariaDB ----

type mysqlSource struct{ m *testharness.MySQL }

func (s *mysqlSource) Kind() string                 { return "mysql" }
func (s *mysqlSource) NewDB(t *tb) string           { return s.m.NewDatabase(t) }
func (s *mysqlSource) TopicSchema(db string) string { return db }
func (s *mysqlSource) TargetDSN(db string) string {
	return fmt.Sprintf("%s@tcp(%s)/%s", s.m.User, s.m.Addr(), db)
}
func (s *mysqlSource) SourceYAML(db, table string) (string, string) {
	return fmt.Sprintf("%s@tcp(%s)/", s.m.User, s.m.Addr()), db + "." + table
}

func (s *mysqlSource) open(db string) (*sql.DB, error) {
	d, err := sql.Open("mysql", s.m.DSN(db))
	if err != nil {
		return nil, err
	}
	d.SetConnMaxLifetime(time.Hour)
	return d, nil
}

func (s *mysqlSource) CreateTable(ctx context.Context, db, table string, applied bool) error {
	d, err := s.open(db)
	if err != nil {
		return err
	}
	defer d.Close()
	extra := ""
	if applied {
		extra = ", applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
	}
	_, err = d.ExecContext(ctx, fmt.Sprintf("CREATE TABLE `%s` (id BIGINT PRIMARY KEY, payload TEXT NOT NULL%s) ENGINE=InnoDB", table, extra))
	return err
}

func (s *mysqlSource) Load(ctx context.Context, db, table string, lo, hi int64, size, txnRows int) error {
	d, err := s.open(db)
	if err != nil {
		return err
	}
	defer d.Close()
	d.SetMaxOpenConns(1)
	expr := payloadExpr("mysql", "seq", size)
	for a := lo; a <= hi; a += int64(txnRows) {
		b := min(a+int64(txnRows)-1, hi)
		q := fmt.Sprintf("INSERT INTO `%s` (id, payload) SELECT seq, %s FROM seq_%d_to_%d", table, expr, a, b)
		if _, err := d.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("load %s [%d,%d]: %w", table, a, b, err)
		}
	}
	return nil
}

func (s *mysqlSource) Count(ctx context.Context, db, table string) (int64, error) {
	d, err := s.open(db)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var n int64
	err = d.QueryRowContext(ctx, "SELECT COUNT(*) FROM `"+table+"`").Scan(&n)
	return n, err
}

// Settle waits, at most 120 s, until InnoDB has flushed its dirty pages
// (at most 1% of the buffer pool left). A backlog load of a million 1 KB
// rows leaves the 128 MiB buffer pool full of dirty pages, which the page
// cleaner then writes for tens of seconds; commits wait on that I/O.
// innodb_max_dirty_pages_pct is 0 meanwhile, so the cleaner flushes at full
// speed instead of idling at its default 90%.
func (s *mysqlSource) Settle(ctx context.Context, db string) (time.Duration, error) {
	start := time.Now()
	d, err := s.open(db)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var pct float64
	if err := d.QueryRowContext(ctx, "SELECT @@GLOBAL.innodb_max_dirty_pages_pct").Scan(&pct); err != nil {
		return 0, err
	}
	if _, err := d.ExecContext(ctx, "SET GLOBAL innodb_max_dirty_pages_pct = 0"); err != nil {
		return 0, err
	}
	defer d.ExecContext(context.Background(), fmt.Sprintf("SET GLOBAL innodb_max_dirty_pages_pct = %g", pct))
	for deadline := start.Add(120 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		var dirty, total int64
		err := d.QueryRowContext(ctx, `SELECT
			(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'),
			(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_TOTAL')`).Scan(&dirty, &total)
		if err != nil {
			return time.Since(start), err
		}
		if dirty*100 <= total {
			break
		}
	}
	syscall.Sync()
	return time.Since(start), nil
}

type mysqlWriter struct {
	db      *sql.DB
	conns   []*sql.Conn
	table   string
	payload string
}

func (s *mysqlSource) Writer(ctx context.Context, db, table string, size, n int) (writer, error) {
	d, err := s.open(db)
	if err != nil {
		return nil, err
	}
	w := &mysqlWriter{db: d, table: table, payload: constPayload(size)}
	for range n {
		c, err := d.Conn(ctx)
		if err != nil {
			w.Close()
			return nil, err
		}
		w.conns = append(w.conns, c)
	}
	return w, nil
}

func (w *mysqlWriter) Insert(ctx context.Context, i int, lo, hi int64) error {
	q := fmt.Sprintf("INSERT INTO `%s` (id, payload) SELECT seq, ? FROM seq_%d_to_%d", w.table, lo, hi)
	_, err := w.conns[i].ExecContext(ctx, q, w.payload)
	return err
}

func (w *mysqlWriter) Close() {
	for _, c := range w.conns {
		c.Close()
	}
	w.db.Close()
}
