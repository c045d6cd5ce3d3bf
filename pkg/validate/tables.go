package validate

import (
	"context"
	dbsql "database/sql"
	"fmt"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/client"
	"github.com/jackc/pgx/v5"
)

// The table readers run a query and return its rows keyed by the first
// column's text, each row holding every column (the key column included) by
// name. Values are the server's text rendering (string) or nil for NULL, so
// two databases' tables compare with DiffRows when the queries render the
// values alike (e.g. price::text on PostgreSQL and a DECIMAL column on
// MySQL both give "12.50"). A key that occurs twice is an error: a diff
// would hide a row. Use ORDER BY-free queries; the key is the identity.

// PostgresTable reads a PostgreSQL query (simple protocol: the server's
// text format for every type).
func PostgresTable(ctx context.Context, conn *pgx.Conn, query string) (Rows, error) {
	rows, err := conn.Query(ctx, query, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	names := make([]string, len(fds))
	for i, fd := range fds {
		names[i] = fd.Name
	}
	t := tableBuilder{query: query, names: names, rows: Rows{}}
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]any, len(raw))
		for i, r := range raw {
			if r != nil {
				vals[i] = string(r)
			}
		}
		if err := t.add(vals); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	return t.result()
}

// MySQLTable reads a MySQL/MariaDB query through a go-mysql client
// connection (as testharness.MySQL.Connect returns).
func MySQLTable(ctx context.Context, conn *gomysql.Conn, query string) (Rows, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
		defer func() { _ = conn.SetDeadline(time.Time{}) }()
	}
	r, err := conn.Execute(query)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	defer r.Close()
	if r.Resultset == nil {
		return nil, fmt.Errorf("query %q returned no result set", query)
	}
	names := make([]string, len(r.Fields))
	for i, f := range r.Fields {
		names[i] = string(f.Name)
	}
	t := tableBuilder{query: query, names: names, rows: Rows{}}
	for _, row := range r.Values {
		vals := make([]any, len(row))
		for i := range row {
			v := row[i].Value()
			if b, ok := v.([]byte); ok {
				v = string(b) // the slice belongs to the result
			}
			if v != nil {
				v, _ = Text(v)
			}
			vals[i] = v
		}
		if err := t.add(vals); err != nil {
			return nil, err
		}
	}
	return t.result()
}

// SQLTable reads a query through database/sql (any driver, e.g.
// go-sql-driver/mysql). Without arguments the MySQL driver uses the text
// protocol, so values are the server's rendering.
func SQLTable(ctx context.Context, db *dbsql.DB, query string) (Rows, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	t := tableBuilder{query: query, names: names, rows: Rows{}}
	raw := make([]dbsql.RawBytes, len(names))
	ptrs := make([]any, len(names))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("query %q: %w", query, err)
		}
		vals := make([]any, len(raw))
		for i, r := range raw {
			if r != nil {
				vals[i] = string(r)
			}
		}
		if err := t.add(vals); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	return t.result()
}

type tableBuilder struct {
	query string
	names []string
	rows  Rows
}

func (t *tableBuilder) add(vals []any) error {
	if len(vals) == 0 {
		return fmt.Errorf("query %q returns no columns", t.query)
	}
	key, ok := Text(vals[0])
	if !ok {
		return fmt.Errorf("query %q: a row has a NULL key (first column %q)", t.query, t.names[0])
	}
	if _, dup := t.rows[key]; dup {
		return fmt.Errorf("query %q: key %q (first column %q) occurs twice", t.query, key, t.names[0])
	}
	row := make(map[string]any, len(vals))
	for i, v := range vals {
		row[t.names[i]] = v
	}
	t.rows[key] = row
	return nil
}

func (t *tableBuilder) result() (Rows, error) { return t.rows, nil }
