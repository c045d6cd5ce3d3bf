package lake

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// sqlCatalog is an Iceberg SQL catalog in the layout of the JDBC catalog
// (the one Spark, Trino, pyiceberg and iceberg-go's catalog/sql use): a
// table's row in iceberg_tables points at its current metadata file, and
// a commit moves that pointer with a compare-and-swap UPDATE.
type sqlCatalog struct {
	db      *sql.DB
	pg      bool // PostgreSQL, else MySQL/MariaDB
	name    string
	hasType bool // iceberg_tables has the iceberg_type column (V1 layout)
}

func catalogDriver(dsn string) (pg bool, err error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return true, nil
	case strings.HasPrefix(dsn, "mysql://"), strings.HasPrefix(dsn, "mariadb://"):
		return false, nil
	}
	return false, errors.New("want postgres://... or mysql://...")
}

func openCatalogDB(dsn string) (*sql.DB, bool, error) {
	pg, err := catalogDriver(dsn)
	if err != nil {
		return nil, false, err
	}
	if pg {
		pc, err := pgxConfig(dsn)
		if err != nil {
			return nil, false, errors.New("bad postgres:// catalog DSN")
		}
		return stdlib.OpenDB(*pc), true, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, false, errors.New("bad mysql:// catalog DSN")
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net, cfg.Addr = "tcp", u.Host
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	cfg.ParseTime = true
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, false, err
	}
	return sql.OpenDB(conn), false, nil
}

// The catalog tables, as iceberg-go v0.7.0's catalog/sql creates them
// (its bun models rendered for each dialect), which is the JDBC
// catalog's V1 layout: the same columns and primary keys.
var catalogDDL = map[bool][]string{
	true: {
		`CREATE TABLE IF NOT EXISTS "iceberg_tables" ("catalog_name" VARCHAR NOT NULL, "table_namespace" VARCHAR NOT NULL, "table_name" VARCHAR NOT NULL, "iceberg_type" VARCHAR, "metadata_location" VARCHAR, "previous_metadata_location" VARCHAR, PRIMARY KEY ("catalog_name", "table_namespace", "table_name"))`,
		`CREATE TABLE IF NOT EXISTS "iceberg_namespace_properties" ("catalog_name" VARCHAR NOT NULL, "namespace" VARCHAR NOT NULL, "property_key" VARCHAR NOT NULL, "property_value" VARCHAR, PRIMARY KEY ("catalog_name", "namespace", "property_key"))`,
	},
	false: {
		"CREATE TABLE IF NOT EXISTS `iceberg_tables` (`catalog_name` VARCHAR(255) NOT NULL, `table_namespace` VARCHAR(255) NOT NULL, `table_name` VARCHAR(255) NOT NULL, `iceberg_type` VARCHAR(255), `metadata_location` VARCHAR(255), `previous_metadata_location` VARCHAR(255), PRIMARY KEY (`catalog_name`, `table_namespace`, `table_name`))",
		"CREATE TABLE IF NOT EXISTS `iceberg_namespace_properties` (`catalog_name` VARCHAR(255) NOT NULL, `namespace` VARCHAR(255) NOT NULL, `property_key` VARCHAR(255) NOT NULL, `property_value` VARCHAR(255), PRIMARY KEY (`catalog_name`, `namespace`, `property_key`))",
	},
}

// newSQLCatalog creates the catalog tables if missing and detects
// whether iceberg_tables has the iceberg_type column (a legacy V0
// catalog created by an old JDBC catalog does not; it is left as is).
func newSQLCatalog(ctx context.Context, db *sql.DB, pg bool, name string) (*sqlCatalog, error) {
	c := &sqlCatalog{db: db, pg: pg, name: name}
	for _, ddl := range catalogDDL[pg] {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			// Two processes creating the tables at once: PostgreSQL can
			// fail the loser of IF NOT EXISTS with a unique violation.
			if !c.isDuplicate(err) {
				return nil, fmt.Errorf("create catalog tables: %w", err)
			}
		}
	}
	schemaFn := "current_schema()"
	if !pg {
		schemaFn = "DATABASE()"
	}
	var one int
	err := db.QueryRowContext(ctx, `SELECT 1 FROM information_schema.columns WHERE table_schema = `+schemaFn+
		` AND table_name = 'iceberg_tables' AND column_name = 'iceberg_type' LIMIT 1`).Scan(&one)
	switch {
	case err == nil:
		c.hasType = true
	case errors.Is(err, sql.ErrNoRows):
	default:
		return nil, fmt.Errorf("inspect catalog tables: %w", err)
	}
	return c, nil
}

// q rewrites ? placeholders to PostgreSQL's $n.
func (c *sqlCatalog) q(s string) string {
	if !c.pg {
		return s
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (c *sqlCatalog) typeFilter() string {
	if c.hasType {
		return " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)"
	}
	return ""
}

func (c *sqlCatalog) isDuplicate(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == 1062 || me.Number == 1050
	}
	return false
}

// ensureNamespace creates the namespace (its "exists" property, as the
// JDBC catalog does) unless a table or a property already names it.
func (c *sqlCatalog) ensureNamespace(ctx context.Context, ns string) error {
	var one int
	err := c.db.QueryRowContext(ctx, c.q(`SELECT 1 FROM iceberg_namespace_properties WHERE catalog_name = ? AND namespace = ?
		UNION ALL SELECT 1 FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? LIMIT 1`),
		c.name, ns, c.name, ns).Scan(&one)
	if err == nil {
		return nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	_, err = c.db.ExecContext(ctx, c.q(`INSERT INTO iceberg_namespace_properties (catalog_name, namespace, property_key, property_value) VALUES (?, ?, 'exists', 'true')`), c.name, ns)
	if err != nil && !c.isDuplicate(err) {
		return err
	}
	return nil
}

// metadataLocation is the table's current metadata file, or "" if the
// catalog has no such table.
func (c *sqlCatalog) metadataLocation(ctx context.Context, ns, tbl string) (string, error) {
	var loc sql.NullString
	err := c.db.QueryRowContext(ctx, c.q(`SELECT metadata_location FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?`+c.typeFilter()),
		c.name, ns, tbl).Scan(&loc)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if !loc.Valid || loc.String == "" {
		return "", fmt.Errorf("catalog row of %s.%s has no metadata_location", ns, tbl)
	}
	return loc.String, nil
}

// errCommitConflict: the table's metadata moved since it was read.
var errCommitConflict = errors.New("concurrent Iceberg commit")

// createTable registers a table at its first metadata file. A table
// created concurrently by someone else returns errCommitConflict.
func (c *sqlCatalog) createTable(ctx context.Context, ns, tbl, loc string) error {
	var err error
	if c.hasType {
		_, err = c.db.ExecContext(ctx, c.q(`INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, iceberg_type, metadata_location) VALUES (?, ?, ?, 'TABLE', ?)`),
			c.name, ns, tbl, loc)
	} else {
		_, err = c.db.ExecContext(ctx, c.q(`INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, metadata_location) VALUES (?, ?, ?, ?)`),
			c.name, ns, tbl, loc)
	}
	if err != nil && c.isDuplicate(err) {
		return errCommitConflict
	}
	return err
}

// swap is the commit point of an Iceberg commit: the table's pointer
// moves from old to loc only if it still is old (compare-and-swap, the
// JDBC catalog's protocol). Zero rows updated means another writer
// committed since old was read: errCommitConflict.
func (c *sqlCatalog) swap(ctx context.Context, ns, tbl, old, loc string) error {
	res, err := c.db.ExecContext(ctx, c.q(`UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ?
		WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?`+c.typeFilter()),
		loc, old, c.name, ns, tbl, old)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return errCommitConflict
	}
	return nil
}
