package postgres

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/event"
)

// relation is a captured table as resolved from the catalog.
type relation struct {
	oid     uint32
	schema  string
	name    string
	relkind string // "r" table, "p" partitioned table
}

func (r *relation) qualified() string { return r.schema + "." + r.name }

// sqlName is the relation's quoted name for SQL text.
func (r *relation) sqlName() string { return pgx.Identifier{r.schema, r.name}.Sanitize() }

// fromClause selects the rows the stream reports for this relation: a
// partitioned table with all its partitions (publish_via_partition_root), a
// plain table without inheritance children (pgoutput reports those under
// their own names).
func (r *relation) fromClause() string {
	if r.relkind == "p" {
		return r.sqlName()
	}
	return "ONLY " + r.sqlName()
}

// splitPattern splits "schema.table" (a missing schema means public).
func splitPattern(p string) (schema, table string) {
	if s, t, ok := strings.Cut(p, "."); ok {
		return s, t
	}
	return "public", p
}

func hasGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// resolveTables matches the configured patterns against the catalog's
// tables and partitioned tables (glob per part: * ? [..]). A partition whose
// partition root is also matched is dropped: its changes and rows are
// reported under the root. A literal name that matches nothing is an error;
// a glob that matches nothing only a warning (returned in warns).
func resolveTables(ctx context.Context, q querier, patterns []string) (rels []*relation, warns []string, err error) {
	if len(patterns) == 0 {
		return nil, nil, errors.New("postgres: no tables configured")
	}
	rows, err := q.Query(ctx, `SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
			CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::oid ELSE 0::oid END
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
		ORDER BY 2, 3`)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: listing tables: %w", err)
	}
	type cand struct {
		relation
		root uint32
	}
	var all []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.oid, &c.schema, &c.name, &c.relkind, &c.root); err != nil {
			rows.Close()
			return nil, nil, err
		}
		all = append(all, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("postgres: listing tables: %w", err)
	}
	picked := map[uint32]*cand{}
	for _, p := range patterns {
		ps, pt := splitPattern(p)
		n := 0
		for i := range all {
			c := &all[i]
			ms, err1 := path.Match(ps, c.schema)
			mt, err2 := path.Match(pt, c.name)
			if err1 != nil || err2 != nil {
				return nil, nil, fmt.Errorf("postgres: invalid table pattern %q", p)
			}
			if ms && mt {
				picked[c.oid] = c
				n++
			}
		}
		if n == 0 {
			if !hasGlob(p) {
				return nil, nil, fmt.Errorf("postgres: configured table %s does not exist", p)
			}
			warns = append(warns, fmt.Sprintf("table pattern %q matches no table", p))
		}
	}
	for _, c := range picked {
		if c.root != 0 && picked[c.root] != nil {
			continue
		}
		r := c.relation
		rels = append(rels, &r)
	}
	if len(rels) == 0 {
		return nil, warns, fmt.Errorf("postgres: table patterns %q match no table", patterns)
	}
	sort.Slice(rels, func(i, j int) bool { return rels[i].qualified() < rels[j].qualified() })
	return rels, warns, nil
}

// column is a catalog column of a captured table.
type column struct {
	name    string
	typOID  uint32
	typName string // format_type(atttypid, atttypmod)
	notNull bool
}

// tableColumns lists the columns pgoutput sends for a table: user columns in
// attnum order, without dropped and generated columns.
func tableColumns(ctx context.Context, q querier, oid uint32) ([]column, error) {
	rows, err := q.Query(ctx, `SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull
		FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
		ORDER BY attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("postgres: reading columns of table %d: %w", oid, err)
	}
	defer rows.Close()
	var cols []column
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.name, &c.typOID, &c.typName, &c.notNull); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	return cols, rows.Err()
}

// primaryKey returns the primary key column names of a table in key order.
func primaryKey(ctx context.Context, q querier, oid uint32) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT a.attname::text
		FROM pg_catalog.pg_index i
		CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary
		ORDER BY k.ord`, oid)
	if err != nil {
		return nil, fmt.Errorf("postgres: reading primary key of table %d: %w", oid, err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

// keyIndices picks the event key: the configured override, else the primary
// key, else every column (a table without a primary key is keyed by its
// whole row).
func keyIndices(table string, names []string, override, pk []string) ([]int, error) {
	idx := func(n string) int {
		for i, c := range names {
			if c == n {
				return i
			}
		}
		return -1
	}
	want := pk
	if len(override) > 0 {
		want = override
	}
	if len(want) == 0 {
		all := make([]int, len(names))
		for i := range all {
			all[i] = i
		}
		return all, nil
	}
	key := make([]int, 0, len(want))
	for _, n := range want {
		i := idx(n)
		if i < 0 {
			if len(override) > 0 {
				return nil, fmt.Errorf("postgres: key override for %s names column %q, which does not exist", table, n)
			}
			return nil, fmt.Errorf("postgres: primary key column %q of %s not among its columns", n, table)
		}
		key = append(key, i)
	}
	return key, nil
}

// tableMeta is a table's shape for snapshot reads: the event table, the
// decoders and the chunk key.
type tableMeta struct {
	rel   *relation
	table *event.Table
	cols  []column
	decs  []decoder
	// chunkKey are the key column indices when the key can be chunked
	// (every column of a kind Go orders like PostgreSQL, keys.go, and NOT
	// NULL); nil otherwise. kinds holds their comparison kinds.
	chunkKey []int
	kinds    []string
}

func loadTableMeta(ctx context.Context, q querier, reg *typeRegistry, db string, rel *relation, override []string) (*tableMeta, error) {
	cols, err := tableColumns(ctx, q, rel.oid)
	if err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("postgres: table %s has no columns", rel.qualified())
	}
	pk, err := primaryKey(ctx, q, rel.oid)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(cols))
	t := &event.Table{Connector: "postgresql", Database: db, Schema: rel.schema, Name: rel.name}
	m := &tableMeta{rel: rel, table: t, cols: cols}
	for i, c := range cols {
		names[i] = c.name
		t.Columns = append(t.Columns, event.Column{Name: c.name, Type: c.typName})
		pt, err := reg.resolve(ctx, q, c.typOID)
		if err != nil {
			return nil, err
		}
		m.decs = append(m.decs, pt.dec)
	}
	if t.Key, err = keyIndices(rel.qualified(), names, override, pk); err != nil {
		return nil, err
	}
	// Chunk only by an explicit key (primary key or override), never by the
	// whole row.
	if len(pk) > 0 || len(override) > 0 {
		kinds := make([]string, len(t.Key))
		ok := true
		for i, k := range t.Key {
			if kinds[i], err = keyKind(ctx, q, reg, cols[k].typOID); err != nil {
				return nil, err
			}
			if kinds[i] == "" || !cols[k].notNull {
				ok = false
			}
		}
		if ok {
			m.chunkKey, m.kinds = t.Key, kinds
		}
	}
	return m, nil
}

// keyKind returns the comparison kind (keys.go) of a key column of type
// oid, or "" when keys of that type are not chunked.
func keyKind(ctx context.Context, q querier, reg *typeRegistry, oid uint32) (string, error) {
	pt, err := reg.resolve(ctx, q, oid)
	if err != nil {
		return "", err
	}
	base := pt.base
	if base == oidText && pt.oid != oidText && pt.oid != oidVarchar {
		// Enums (and domains over them) decode as text but sort in label
		// order and take no COLLATE: only a true text domain is a text key.
		if base, err = catalogBaseType(ctx, q, pt.oid); err != nil {
			return "", err
		}
	}
	return keyKindOf(base), nil
}

// catalogBaseType follows a type's domains down to the type they are
// domains over (the type itself when it is no domain).
func catalogBaseType(ctx context.Context, q querier, oid uint32) (uint32, error) {
	var base uint32
	err := q.QueryRow(ctx, `WITH RECURSIVE d(oid, typtype, typbasetype, depth) AS (
			SELECT oid, typtype, typbasetype, 0 FROM pg_catalog.pg_type WHERE oid = $1
			UNION ALL
			SELECT t.oid, t.typtype, t.typbasetype, d.depth + 1 FROM pg_catalog.pg_type t JOIN d ON t.oid = d.typbasetype
			WHERE d.typtype = 'd' AND d.depth < 20)
		SELECT oid FROM d WHERE typtype <> 'd'`, oid).Scan(&base)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil // dropped meanwhile: not chunkable
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: looking up the base type of type %d: %w", oid, err)
	}
	return base, nil
}

// ensurePublication creates the publication for exactly rels if it does not
// exist, and otherwise checks that it covers every one of them.
func ensurePublication(ctx context.Context, q querier, exec func(context.Context, string) error, pub, slot string, rels []*relation, at string) (created bool, err error) {
	var allTables, viaRoot bool
	err = q.QueryRow(ctx, `SELECT puballtables, pubviaroot FROM pg_catalog.pg_publication WHERE pubname = $1`, pub).Scan(&allTables, &viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		names := make([]string, len(rels))
		for i, r := range rels {
			names[i] = r.sqlName()
		}
		sql := "CREATE PUBLICATION " + pgx.Identifier{pub}.Sanitize() + " FOR TABLE " + strings.Join(names, ", ") +
			" WITH (publish_via_partition_root = true)"
		if err := exec(ctx, sql); err != nil {
			return false, fmt.Errorf("postgres: creating publication %q: %w", pub, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("postgres: reading publication %q: %w", pub, err)
	}
	if allTables {
		return false, nil
	}
	rows, err := q.Query(ctx, `SELECT schemaname::text || '.' || tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1`, pub)
	if err != nil {
		return false, fmt.Errorf("postgres: reading publication %q: %w", pub, err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return false, err
		}
		have[n] = true
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	var missing []string
	for _, r := range rels {
		if !have[r.qualified()] {
			missing = append(missing, r.qualified())
		}
	}
	if len(missing) > 0 {
		hint := "ALTER PUBLICATION " + pgx.Identifier{pub}.Sanitize() + " ADD TABLE " + strings.Join(missing, ", ")
		if !viaRoot {
			hint += " (and SET (publish_via_partition_root = true) for partitioned tables)"
		}
		return false, fmt.Errorf("postgres: publication %q used by slot %q (stream position %s) does not include configured table(s) %s; run %s",
			pub, slot, at, strings.Join(missing, ", "), hint)
	}
	return false, nil
}

// slotState is a replication slot as pg_replication_slots shows it.
type slotState struct {
	exists         bool
	logical        bool
	plugin         string
	database       string
	confirmedFlush pglogrepl.LSN
	restart        pglogrepl.LSN
	activePID      int32
	walStatus      string
}

func readSlot(ctx context.Context, q querier, slot string) (slotState, error) {
	var (
		st                 slotState
		typ                string
		plugin, db, cf, rs *string
		pid                *int32
		walStatus          *string
	)
	err := q.QueryRow(ctx, `SELECT slot_type::text, plugin::text, database::text, confirmed_flush_lsn::text,
			restart_lsn::text, active_pid, wal_status
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&typ, &plugin, &db, &cf, &rs, &pid, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("postgres: reading replication slot %q: %w", slot, err)
	}
	st.exists = true
	st.logical = typ == "logical"
	if plugin != nil {
		st.plugin = *plugin
	}
	if db != nil {
		st.database = *db
	}
	if cf != nil {
		st.confirmedFlush, _ = pglogrepl.ParseLSN(*cf)
	}
	if rs != nil {
		st.restart, _ = pglogrepl.ParseLSN(*rs)
	}
	if pid != nil {
		st.activePID = *pid
	}
	if walStatus != nil {
		st.walStatus = *walStatus
	}
	return st, nil
}

// checkWALLevel fails unless wal_level is logical.
func checkWALLevel(ctx context.Context, q querier, slot string) error {
	var level string
	if err := q.QueryRow(ctx, `SELECT current_setting('wal_level')`).Scan(&level); err != nil {
		return fmt.Errorf("postgres: reading wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("postgres: wal_level is %q, logical replication (slot %q) needs wal_level = logical: set it in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL", level, slot)
	}
	return nil
}
