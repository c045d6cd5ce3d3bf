package sql

// MySQL and MariaDB go through database/sql with github.com/go-sql-driver/mysql
// rather than go-mysql's client package (which the MySQL source uses for the
// binlog): the driver honours context cancellation and deadlines on every
// call, discards broken connections and redials by itself, returns typed
// errors (*mysql.MySQLError with the error number and SQLSTATE) to classify,
// parses the go-sql-driver DSN form users already know, and interpolates
// placeholders client-side safely (one round trip per multi-row statement).

import (
	"context"
	dbsql "database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

type myBackend struct {
	cfg     *mysql.Config
	db      *dbsql.DB
	checked bool
}

func (m *myBackend) connect(ctx context.Context) error {
	if m.db == nil {
		conn, err := mysql.NewConnector(m.cfg)
		if err != nil {
			return err
		}
		m.db = dbsql.OpenDB(conn)
		m.db.SetMaxOpenConns(2)
		m.db.SetMaxIdleConns(2)
		m.db.SetConnMaxLifetime(30 * time.Minute)
		m.checked = false
	}
	if !m.checked {
		if err := m.db.PingContext(ctx); err != nil {
			return err
		}
		m.checked = true
	}
	return nil
}

// reset: database/sql already discards broken connections; just check the
// next connection before use.
func (m *myBackend) reset() { m.checked = false }

func (m *myBackend) close() error {
	if m.db == nil {
		return nil
	}
	err := m.db.Close()
	m.db = nil
	return err
}

func (m *myBackend) begin(ctx context.Context) (txn, error) {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return myTxn{tx}, nil
}

type myTxn struct{ tx *dbsql.Tx }

func (t myTxn) exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, sql, args...)
	return err
}

func (t myTxn) query(ctx context.Context, sql string, args []any, row func(func(...any) error) error) error {
	rows, err := t.tx.QueryContext(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (t myTxn) commit(context.Context) error   { return t.tx.Commit() }
func (t myTxn) rollback(context.Context) error { return t.tx.Rollback() }

// transactionalEngines can roll back; any other engine would apply rows
// without the offsets (or the reverse) after a crash.
var transactionalEngines = []string{"innodb", "rocksdb", "tokudb", "ndbcluster"}

func (m *myBackend) loadTable(ctx context.Context, t tableName, key []string) (*tableInfo, error) {
	schema := t.schema
	if schema == "" {
		var db dbsql.NullString
		if err := m.db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&db); err != nil {
			return nil, err
		}
		if !db.Valid {
			return nil, errors.New("the DSN names no database: qualify the table as database.table")
		}
		schema = db.String
	}
	var (
		name   string
		engine dbsql.NullString
	)
	err := m.db.QueryRowContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND TABLE_TYPE = 'BASE TABLE'`, schema, t.name).Scan(&schema, &name, &engine)
	if errors.Is(err, dbsql.ErrNoRows) {
		return nil, errNoTable
	}
	if err != nil {
		return nil, err
	}
	if !slices.Contains(transactionalEngines, strings.ToLower(engine.String)) {
		return nil, fmt.Errorf("engine %s is not transactional: rows and offsets could not be committed together (use InnoDB)", engine.String)
	}
	info := &tableInfo{
		name:    tableName{schema: schema, name: name},
		columns: map[string]*column{},
	}
	info.quoted = quoteTable(m, info.name)

	// MariaDB's JSON is LONGTEXT with CHECK (json_valid(col)). MySQL 8 has
	// no TABLE_NAME in CHECK_CONSTRAINTS and a real JSON type: errors here
	// are ignored.
	jsonCols := map[string]bool{}
	if rows, err := m.db.QueryContext(ctx, `SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
		WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?`, schema, name); err == nil {
		for rows.Next() {
			var clause string
			if rows.Scan(&clause) == nil {
				if mm := jsonValidRE.FindStringSubmatch(clause); mm != nil {
					jsonCols[strings.ReplaceAll(mm[1], "``", "`")] = true
				}
			}
		}
		rows.Close()
	}

	rows, err := m.db.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, schema, name)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var c column
		var dataType, extra string
		if err := rows.Scan(&c.name, &dataType, &c.sqlType, &extra); err != nil {
			rows.Close()
			return nil, err
		}
		c.kind = myKind(dataType, jsonCols[c.name])
		c.generated = strings.Contains(strings.ToUpper(extra), "GENERATED")
		info.columns[c.name] = &c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	rows, err = m.db.QueryContext(ctx, `SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0
		ORDER BY INDEX_NAME, SEQ_IN_INDEX`, schema, name)
	if err != nil {
		return nil, err
	}
	byIndex := map[string][]string{}
	var order []string
	for rows.Next() {
		var idx string
		var col dbsql.NullString // NULL for functional key parts
		if err := rows.Scan(&idx, &col); err != nil {
			rows.Close()
			return nil, err
		}
		if _, ok := byIndex[idx]; !ok {
			order = append(order, idx)
		}
		byIndex[idx] = append(byIndex[idx], col.String)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var uniques [][]string
	for _, idx := range order {
		uniques = append(uniques, byIndex[idx])
	}
	if err := info.setKey(key, uniques); err != nil {
		return nil, err
	}
	return info, nil
}

func (m *myBackend) tableExists(ctx context.Context, t tableName) (bool, error) {
	var n int
	err := m.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.TABLES
		WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?`, nullIfEmpty(t.schema), t.name).Scan(&n)
	return n > 0, err
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

var jsonValidRE = regexp.MustCompile("(?i)^\\s*json_valid\\(\\s*`((?:[^`]|``)+)`\\s*\\)\\s*$")

func myKind(dataType string, jsonChecked bool) kind {
	switch strings.ToLower(dataType) {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint",
		"decimal", "numeric", "float", "double", "real", "bit", "year":
		return kNumber
	case "datetime", "timestamp":
		return kTimestamp
	case "json":
		return kJSON
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob":
		return kBytes
	}
	if jsonChecked {
		return kJSON
	}
	return kText
}

func (m *myBackend) offsetsDDL(t tableName) string {
	return "CREATE TABLE IF NOT EXISTS " + quoteTable(m, t) + ` (
	pipeline        VARCHAR(191) NOT NULL,
	target          VARCHAR(191) NOT NULL,
	topic           VARCHAR(249) NOT NULL,
	kafka_partition INT          NOT NULL,
	next_offset     BIGINT       NOT NULL,
	updated_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
	PRIMARY KEY (pipeline, target, topic, kafka_partition)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`
}

func (m *myBackend) offsetsUpsert(t tableName, n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO " + quoteTable(m, t) + " (pipeline, target, topic, kafka_partition, next_offset) VALUES ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	b.WriteString(" ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset))")
	return b.String()
}

func (m *myBackend) quote(ident string) string { return quoteWith('`', ident) }

func (m *myBackend) param(int, *column) string { return "?" }

func (m *myBackend) insertInto(t *tableInfo, cols []*column) string {
	return "INSERT INTO " + t.quoted + " " + columnList(m, cols)
}

// upsertTail uses VALUES(col), which both MariaDB and MySQL accept
// (MySQL 8.0.20+ deprecates it in favour of a row alias MariaDB lacks).
func (m *myBackend) upsertTail(t *tableInfo, cols []*column) string {
	var sets []string
	for _, c := range cols {
		if !slices.Contains(t.key, c) {
			q := m.quote(c.name)
			sets = append(sets, q+" = VALUES("+q+")")
		}
	}
	if len(sets) == 0 {
		q := m.quote(t.key[0].name)
		return " ON DUPLICATE KEY UPDATE " + q + " = " + q
	}
	return " ON DUPLICATE KEY UPDATE " + strings.Join(sets, ", ")
}

func (m *myBackend) bind(c *column, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch c.kind {
	case kJSON:
		return jsonColumnText(v)
	case kBytes:
		return decodeBytes(v)
	case kTimestamp:
		if s, ok := v.(string); ok {
			return wallClockUTC(s), nil
		}
	case kNumber:
		// Integers bind as integers: MySQL compares an integer column with
		// a string as doubles, which is inexact above 2^53 (WHERE id IN).
		// Other numbers bind as text, which MySQL converts exactly.
		if b, ok := v.(bool); ok {
			if b {
				return int64(1), nil
			}
			return int64(0), nil
		}
		if s, ok := scalarText(v); ok {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i, nil
			}
			if u, err := strconv.ParseUint(s, 10, 64); err == nil {
				return u, nil
			}
		}
	}
	return textValue(c, v)
}

// MySQL's limit on placeholders in a prepared statement; the driver
// interpolates, but the bound keeps statements a sane size.
func (m *myBackend) maxParams() int { return 65535 }

var (
	myPermanent = []uint16{
		1044, // ER_DBACCESS_DENIED_ERROR
		1045, // ER_ACCESS_DENIED_ERROR (bad password)
		1049, // ER_BAD_DB_ERROR (unknown database)
		1130, // ER_HOST_NOT_PRIVILEGED
		1142, // ER_TABLEACCESS_DENIED_ERROR
		1143, // ER_COLUMNACCESS_DENIED_ERROR
		1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
		1370, // ER_PROCACCESS_DENIED_ERROR
		1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
	}
	mySchema = []uint16{
		1146, // ER_NO_SUCH_TABLE
		1054, // ER_BAD_FIELD_ERROR
	}
	myRow = []uint16{
		1048, // ER_BAD_NULL_ERROR
		1062, // ER_DUP_ENTRY (another unique key)
		1263, // ER_WARN_NULL_TO_NOTNULL
		1264, // ER_WARN_DATA_OUT_OF_RANGE
		1265, // WARN_DATA_TRUNCATED
		1292, // ER_TRUNCATED_WRONG_VALUE
		1364, // ER_NO_DEFAULT_FOR_FIELD
		1366, // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
		1367, // ER_ILLEGAL_VALUE_FOR_TYPE
		1406, // ER_DATA_TOO_LONG
		1411, // ER_WRONG_VALUE_FOR_TYPE
		1416, // ER_CANT_CREATE_GEOMETRY_OBJECT
		1451, // ER_ROW_IS_REFERENCED_2
		1452, // ER_NO_REFERENCED_ROW_2
		1690, // ER_DATA_OUT_OF_RANGE
		3140, // ER_INVALID_JSON_TEXT (MySQL)
		3819, // ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
		4025, // ER_CONSTRAINT_FAILED (MariaDB CHECK)
	}
)

func (m *myBackend) classify(err error) errClass {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		// driver.ErrBadConn, mysql.ErrInvalidConn, network errors, ...
		if errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) {
			m.reset()
		}
		return classRetry
	}
	switch {
	case slices.Contains(myPermanent, me.Number):
		return classPermanent
	case slices.Contains(mySchema, me.Number):
		return classSchema
	case me.Number == 1213 || me.Number == 1205: // deadlock, lock wait timeout
		return classRetry
	case slices.Contains(myRow, me.Number):
		return classRow
	}
	if c := string(me.SQLState[:2]); c == "22" || c == "23" {
		return classRow
	}
	return classRetry
}
