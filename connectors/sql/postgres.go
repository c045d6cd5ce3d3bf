package sql

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgBackend is the PostgreSQL dialect, on one pgx connection: the delivery
// layer calls a target from a single goroutine, so a pool would only hold
// idle connections. A broken connection is dropped and reopened by the
// next call.
type pgBackend struct {
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
}

func (p *pgBackend) connect(ctx context.Context) error {
	if p.conn != nil && !p.conn.IsClosed() {
		return nil
	}
	p.conn = nil
	conn, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		return err
	}
	p.conn = conn
	return nil
}

func (p *pgBackend) reset() {
	if p.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = p.conn.Close(ctx)
		p.conn = nil
	}
}

func (p *pgBackend) close() error {
	p.reset()
	return nil
}

// beginQuery starts a transaction whose deferred constraints are checked
// at each statement, not at COMMIT: a rejected row then fails its own
// statement, where the row-by-row retry can find it (a COMMIT that fails
// on a constraint would be retried forever). One round trip: pgx sends a
// query without arguments with the simple protocol.
const beginQuery = "BEGIN; SET CONSTRAINTS ALL IMMEDIATE"

func (p *pgBackend) begin(ctx context.Context) (txn, error) {
	tx, err := p.conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: beginQuery})
	if err != nil {
		return nil, err
	}
	return pgTxn{tx}, nil
}

type pgTxn struct{ tx pgx.Tx }

func (t pgTxn) exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.Exec(ctx, sql, args...)
	return err
}

func (t pgTxn) query(ctx context.Context, sql string, args []any, row func(func(...any) error) error) error {
	rows, err := t.tx.Query(ctx, sql, args...)
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

func (t pgTxn) commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t pgTxn) rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

// loadTable reads the columns from pg_catalog rather than
// information_schema: it gives the type without modifier to cast to, the
// base type of domains, generated and identity columns, and resolves an
// unqualified name through the search_path exactly as the statements will.
func (p *pgBackend) loadTable(ctx context.Context, t tableName, key []string) (*tableInfo, error) {
	ident := pgx.Identifier{t.name}
	if t.schema != "" {
		ident = pgx.Identifier{t.schema, t.name}
	}
	var (
		oid          uint32
		schema, name string
	)
	err := p.conn.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1::text) AND c.relkind IN ('r', 'p')`, ident.Sanitize()).Scan(&oid, &schema, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoTable
	}
	if err != nil {
		return nil, err
	}
	info := &tableInfo{
		name:    tableName{schema: schema, name: name},
		quoted:  pgx.Identifier{schema, name}.Sanitize(),
		columns: map[string]*column{},
	}
	rows, err := p.conn.Query(ctx, `SELECT a.attname,
			format_type(a.atttypid, a.atttypmod),
			format_type(a.atttypid, NULL),
			COALESCE(bt.typname, t.typname),
			COALESCE(bt.typcategory, t.typcategory)::text,
			a.attgenerated <> '',
			a.attidentity = 'a'
		FROM pg_catalog.pg_attribute a
		JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
		WHERE a.attrelid = $1::text::oid AND a.attnum > 0 AND NOT a.attisdropped`, fmt.Sprint(oid))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			c                         column
			cast, typname, category   string
			generated, identityAlways bool
		)
		if err := rows.Scan(&c.name, &c.sqlType, &cast, &typname, &category, &generated, &identityAlways); err != nil {
			rows.Close()
			return nil, err
		}
		c.kind, c.cast = pgKind(typname, category, cast)
		c.generated = generated
		c.identityAlways = identityAlways
		info.identity = info.identity || identityAlways
		info.columns[c.name] = &c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	// ON CONFLICT (key) needs a unique index on exactly the key columns.
	var uniques [][]string
	rows, err = p.conn.Query(ctx, `SELECT array_agg(a.attname::text ORDER BY a.attname)
		FROM pg_catalog.pg_index i
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1::text::oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
		GROUP BY i.indexrelid`, fmt.Sprint(oid))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var cols []string
		if err := rows.Scan(&cols); err != nil {
			rows.Close()
			return nil, err
		}
		uniques = append(uniques, cols)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := info.setKey(key, uniques); err != nil {
		return nil, err
	}
	return info, nil
}

func (p *pgBackend) tableExists(ctx context.Context, t tableName) (bool, error) {
	var ok bool
	err := p.conn.QueryRow(ctx, `SELECT to_regclass($1::text) IS NOT NULL`, quoteTable(p, t)).Scan(&ok)
	return ok, err
}

// pgKind maps a (base) type to its conversion kind and the type to cast a
// text parameter to.
func pgKind(typname, category, cast string) (kind, string) {
	switch typname {
	case "bpchar":
		return kText, "bpchar" // "character" would mean character(1)
	case "bit":
		return kText, "varbit" // "bit" would mean bit(1)
	case "bool":
		return kBool, cast
	case "timestamp":
		return kTimestamp, cast
	case "timestamptz":
		return kTimestampTZ, cast
	case "json", "jsonb":
		return kJSON, cast
	case "bytea":
		return kBytes, cast
	}
	switch category {
	case "N":
		return kNumber, cast
	case "A":
		return kArray, cast
	}
	return kText, cast
}

func (p *pgBackend) offsetsDDL(t tableName) string {
	return `CREATE TABLE IF NOT EXISTS ` + quoteTable(p, t) + ` (
	pipeline        text        NOT NULL,
	target          text        NOT NULL,
	topic           text        NOT NULL,
	kafka_partition integer     NOT NULL,
	next_offset     bigint      NOT NULL,
	updated_at      timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (pipeline, target, topic, kafka_partition)
)`
}

func (p *pgBackend) offsetsUpsert(t tableName, n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO ` + quoteTable(p, t) + ` AS o (pipeline, target, topic, kafka_partition, next_offset) VALUES `)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		k := 5 * i
		fmt.Fprintf(&b, "($%d::text, $%d::text, $%d::text, $%d::integer, $%d::bigint)", k+1, k+2, k+3, k+4, k+5)
	}
	b.WriteString(` ON CONFLICT (pipeline, target, topic, kafka_partition) DO UPDATE
	SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), updated_at = now()`)
	return b.String()
}

func (p *pgBackend) quote(ident string) string { return quoteWith('"', ident) }

func (p *pgBackend) param(n int, c *column) string {
	if c == nil {
		return "$" + itoa(n)
	}
	return "$" + itoa(n) + "::text::" + c.cast
}

func (p *pgBackend) insertInto(t *tableInfo, cols []*column) string {
	s := "INSERT INTO " + t.quoted + " " + columnList(p, cols)
	for _, c := range cols {
		if c.identityAlways {
			return s + " OVERRIDING SYSTEM VALUE"
		}
	}
	return s
}

func (p *pgBackend) upsertTail(t *tableInfo, cols []*column) string {
	var sets []string
	for _, c := range cols {
		if !slices.Contains(t.key, c) {
			q := p.quote(c.name)
			sets = append(sets, q+" = EXCLUDED."+q)
		}
	}
	keys := make([]*column, len(t.key))
	copy(keys, t.key)
	conflict := " ON CONFLICT " + columnList(p, keys)
	if len(sets) == 0 {
		return conflict + " DO NOTHING"
	}
	return conflict + " DO UPDATE SET " + strings.Join(sets, ", ")
}

func (p *pgBackend) bind(c *column, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch c.kind {
	case kJSON:
		return jsonColumnText(v)
	case kBytes:
		b, err := decodeBytes(v)
		if err != nil {
			return nil, err
		}
		return fmt.Sprintf(`\x%x`, b), nil
	case kArray:
		if a, ok := v.([]any); ok {
			return pgArrayLiteral(a)
		}
	case kNumber:
		if b, ok := v.(bool); ok {
			if b {
				return "1", nil
			}
			return "0", nil
		}
	case kTimestamp:
		if s, ok := v.(string); ok {
			return wallClockUTC(s), nil
		}
	}
	return textValue(c, v)
}

// PostgreSQL's limit on bind parameters per statement.
func (p *pgBackend) maxParams() int { return 65535 }

// classify sorts by SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
func (p *pgBackend) classify(err error) errClass {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return classRetry
	}
	switch pe.Code {
	case "42P01", "42703": // undefined_table, undefined_column
		return classSchema
	case "3D000", "3F000", "42501": // invalid_catalog_name, invalid_schema_name, insufficient_privilege
		return classPermanent
	}
	switch pe.Code[:2] {
	case "21", "22", "23": // cardinality violation, data exception, integrity constraint violation
		return classRow
	case "28": // invalid authorization specification (bad password, no such role)
		return classPermanent
	}
	// 40001 serialization_failure, 40P01 deadlock_detected, 55P03
	// lock_not_available, 57014 query_canceled, 08 connection exceptions,
	// 57P01 admin_shutdown, 53 insufficient resources, ...
	return classRetry
}
