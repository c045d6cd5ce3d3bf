package mysql

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/plumecdc/plume/pkg/event"
)

const connectorName = "mysql"

// tableInfo is one version of a captured table's shape with the rendering
// rules of its columns.
type tableInfo struct {
	table *event.Table
	cols  []colType
	// keyCols are the columns the snapshot orders and chunks by (Table.Key,
	// minus columns that cannot be compared, for keyless tables).
	keyCols []int
	// hasKey is false when Table.Key is "every column" because the table has
	// neither a primary key nor a configured override.
	hasKey bool
	// primary is true when Table.Key is the table's primary key (no
	// override): no two rows share a key value.
	primary bool
	// direct is true when every column's binlog type is decoded by the
	// direct row decoder (rows.go); the reader then leaves the table's row
	// data to the streamer (rowsDecoder).
	direct bool
}

// schemaCache turns TABLE_MAP events into *event.Table versions. With
// binlog_row_metadata=FULL every TABLE_MAP carries column names, types,
// signedness, charsets, enum/set values and the primary key, so the binlog
// alone describes each row exactly as it was written: no DDL parsing and no
// information_schema lookups that could describe a later schema. A new
// *event.Table is created whenever a table's TABLE_MAP changes (ADD/DROP/
// MODIFY COLUMN, a new primary key, RENAME); unchanged maps reuse the last
// version's pointer.
type schemaCache struct {
	filter     tableFilter
	keys       map[string][]string
	collations map[uint64]string
	log        *slog.Logger

	byID   map[uint64]*tableMapEntry // by table id, as the rows events refer to it
	byName map[string]*tableMapEntry // latest version per qualified name
	warned map[string]bool
}

type tableMapEntry struct {
	fingerprint string
	info        *tableInfo // nil for tables that are not captured
}

func newSchemaCache(filter tableFilter, keys map[string][]string, collations map[uint64]string, log *slog.Logger) *schemaCache {
	return &schemaCache{filter: filter, keys: keys, collations: collations, log: log,
		byID: map[uint64]*tableMapEntry{}, byName: map[string]*tableMapEntry{}, warned: map[string]bool{}}
}

// onTableMap registers a TABLE_MAP event and returns the captured table's
// info, or nil if the table is not captured.
func (c *schemaCache) onTableMap(tm *replication.TableMapEvent) (*tableInfo, error) {
	db, name := string(tm.Schema), string(tm.Table)
	if !c.filter.Match(db, name) {
		c.byID[tm.TableID] = &tableMapEntry{}
		return nil, nil
	}
	fp := fingerprint(tm)
	qn := db + "." + name
	if e, ok := c.byID[tm.TableID]; ok && e.info != nil && e.fingerprint == fp && e.info.table.Database == db && e.info.table.Name == name {
		return e.info, nil
	}
	if e, ok := c.byName[qn]; ok && e.fingerprint == fp {
		c.byID[tm.TableID] = e
		return e.info, nil
	}
	info, err := c.build(tm)
	if err != nil {
		return nil, fmt.Errorf("mysql: table %s: %w", qn, err)
	}
	e := &tableMapEntry{fingerprint: fp, info: info}
	if old, ok := c.byName[qn]; ok {
		c.log.Info("mysql: table shape changed", "table", qn, "columns", len(info.table.Columns), "previous_columns", len(old.info.table.Columns))
	}
	c.byID[tm.TableID] = e
	c.byName[qn] = e
	return info, nil
}

// lookup returns the captured info for a rows event's table id.
func (c *schemaCache) lookup(tableID uint64) (*tableInfo, bool) {
	e, ok := c.byID[tableID]
	if !ok {
		return nil, false
	}
	return e.info, true
}

func fingerprint(tm *replication.TableMapEvent) string {
	var sb strings.Builder
	sb.Write(tm.ColumnType)
	for _, m := range tm.ColumnMeta {
		sb.WriteString(strconv.FormatUint(uint64(m), 16))
		sb.WriteByte(',')
	}
	for _, n := range tm.ColumnName {
		sb.Write(n)
		sb.WriteByte(0)
	}
	sb.Write(tm.SignednessBitmap)
	for _, v := range tm.DefaultCharset {
		sb.WriteString(strconv.FormatUint(v, 16))
		sb.WriteByte(',')
	}
	sb.WriteByte('|')
	for _, v := range tm.ColumnCharset {
		sb.WriteString(strconv.FormatUint(v, 16))
		sb.WriteByte(',')
	}
	sb.WriteByte('|')
	for _, vs := range [][][][]byte{tm.EnumStrValue, tm.SetStrValue} {
		for _, col := range vs {
			for _, v := range col {
				sb.Write(v)
				sb.WriteByte(0)
			}
			sb.WriteByte(1)
		}
	}
	for _, v := range tm.PrimaryKey {
		sb.WriteString(strconv.FormatUint(v, 10))
		sb.WriteByte(',')
	}
	for _, v := range tm.GeometryType {
		sb.WriteString(strconv.FormatUint(v, 10))
		sb.WriteByte(',')
	}
	return sb.String()
}

func (c *schemaCache) charsetOf(id uint64, ok bool) string {
	if !ok {
		return ""
	}
	if cs, found := c.collations[id]; found {
		return cs
	}
	return "unknown-collation-" + strconv.FormatUint(id, 10)
}

func (c *schemaCache) build(tm *replication.TableMapEvent) (*tableInfo, error) {
	n := int(tm.ColumnCount)
	if len(tm.ColumnName) != n {
		return nil, fmt.Errorf("TABLE_MAP event carries no column names: the event was written without binlog_row_metadata=FULL " +
			"(set it with SET GLOBAL binlog_row_metadata = 'FULL'; events written before that cannot be read by Plume, " +
			"re-snapshot the table from a position after the change, see docs/mysql.md)")
	}
	unsigned := tm.UnsignedMap()
	colls := tm.CollationMap()
	esColls := tm.EnumSetCollationMap()
	enums := tm.EnumStrValueMap()
	sets := tm.SetStrValueMap()
	geoms := tm.GeometryTypeMap()

	db, name := string(tm.Schema), string(tm.Table)
	t := &event.Table{Connector: connectorName, Database: db, Name: name, Columns: make([]event.Column, n)}
	cols := make([]colType, n)
	direct := true
	for i := 0; i < n; i++ {
		coll, hasColl := colls[i]
		cs := c.charsetOf(coll, hasColl)
		var values []string
		switch {
		case enums[i] != nil:
			values = enums[i]
		case sets[i] != nil:
			values = sets[i]
		}
		if escoll, ok := esColls[i]; ok {
			cs = c.charsetOf(escoll, true)
			if d := charsetDecoders[cs]; d != nil && values != nil {
				dec := make([]string, len(values))
				for j, v := range values {
					dec[j] = d([]byte(v))
				}
				values = dec
			}
		}
		ct, err := binlogColType(tm.ColumnType[i], tm.ColumnMeta[i], unsigned[i], cs, values, geoms[i])
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", tm.ColumnName[i], err)
		}
		if ct.rawText && !c.warned[db+"."+name+"."+string(tm.ColumnName[i])] {
			c.warned[db+"."+name+"."+string(tm.ColumnName[i])] = true
			c.log.Warn("mysql: character set not supported, column rendered as bytes", "table", db+"."+name, "column", string(tm.ColumnName[i]), "charset", cs)
		}
		ct.bin = directType(tm.ColumnType[i], tm.ColumnMeta[i])
		direct = direct && ct.bin.direct
		cols[i] = ct
		t.Columns[i] = event.Column{Name: string(tm.ColumnName[i]), Type: ct.name}
	}
	pk := make([]int, 0, len(tm.PrimaryKey))
	for _, k := range tm.PrimaryKey {
		pk = append(pk, int(k))
	}
	info := &tableInfo{table: t, cols: cols, direct: direct}
	c.setKey(info, pk)
	return info, nil
}

// setKey chooses Table.Key: the configured override, else the primary key,
// else every column (documented: such tables' events are keyed by the whole
// row).
func (c *schemaCache) setKey(info *tableInfo, pk []int) {
	t := info.table
	qn := t.Database + "." + t.Name
	overridden := false
	if names, ok := c.keys[qn]; ok {
		var key []int
		for _, n := range names {
			i := t.ColumnIndex(n)
			if i < 0 {
				key = nil
				if !c.warned["key:"+qn] {
					c.warned["key:"+qn] = true
					c.log.Warn("mysql: key override names a missing column; using the primary key", "table", qn, "column", n)
				}
				break
			}
			key = append(key, i)
		}
		if key != nil {
			pk = key
			overridden = true
		}
	}
	info.hasKey = len(pk) > 0
	info.primary = info.hasKey && !overridden
	if !info.hasKey {
		pk = make([]int, len(t.Columns))
		for i := range pk {
			pk[i] = i
		}
	}
	t.Key = pk
	info.keyCols = nil
	for _, k := range pk {
		if info.hasKey || orderable(info.cols[k].kind) {
			info.keyCols = append(info.keyCols, k)
		}
	}
}

// orderable reports whether a keyless table's column is used to order and
// chunk its snapshot (large and spatial values are not).
func orderable(k kind) bool {
	switch k {
	case kGeometry, kJSON:
		return false
	}
	return true
}

// loadTable reads a table's current shape from information_schema, for the
// snapshot. The key and type names follow the same rules as the binlog path.
func (c *schemaCache) loadTable(ctx context.Context, conn *conn, qn string) (*tableInfo, error) {
	db, name, _ := strings.Cut(qn, ".")
	r, err := conn.query(ctx, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IFNULL(CHARACTER_SET_NAME,''),
		IFNULL(NUMERIC_PRECISION,0), IFNULL(NUMERIC_SCALE,0), IFNULL(DATETIME_PRECISION,0)
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, db, name)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading columns of %s: %w", qn, err)
	}
	rows := rowsOf(r)
	if len(rows) == 0 {
		return nil, errTableGone
	}
	t := &event.Table{Connector: connectorName, Database: db, Name: name, Columns: make([]event.Column, len(rows))}
	cols := make([]colType, len(rows))
	for i, row := range rows {
		np, _ := strconv.ParseInt(row[4], 10, 64)
		ns, _ := strconv.ParseInt(row[5], 10, 64)
		dp, _ := strconv.ParseInt(row[6], 10, 64)
		cols[i] = infoSchemaColType(row[1], row[2], strings.ToLower(row[3]), np, ns, dp)
		t.Columns[i] = event.Column{Name: row[0], Type: cols[i].name}
	}
	r, err = conn.query(ctx, `SELECT COLUMN_NAME FROM information_schema.STATISTICS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX`, db, name)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading primary key of %s: %w", qn, err)
	}
	var pk []int
	for _, row := range rowsOf(r) {
		if i := t.ColumnIndex(row[0]); i >= 0 {
			pk = append(pk, i)
		}
	}
	info := &tableInfo{table: t, cols: cols}
	c.setKey(info, pk)
	return info, nil
}

var errTableGone = fmt.Errorf("table does not exist")

// listTables returns the captured base tables that exist now, sorted.
func listTables(ctx context.Context, conn *conn, filter tableFilter) ([]string, error) {
	q := `SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE'
		AND TABLE_SCHEMA NOT IN ('mysql','information_schema','performance_schema','sys')`
	var args []any
	if dbs := filter.literalDBs(); len(dbs) > 0 {
		q += " AND TABLE_SCHEMA IN (" + strings.TrimSuffix(strings.Repeat("?,", len(dbs)), ",") + ")"
		for _, d := range dbs {
			args = append(args, d)
		}
	}
	q += " ORDER BY TABLE_SCHEMA, TABLE_NAME"
	r, err := conn.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("mysql: listing tables: %w", err)
	}
	var out []string
	for _, row := range rowsOf(r) {
		if filter.Match(row[0], row[1]) {
			out = append(out, row[0]+"."+row[1])
		}
	}
	return out, nil
}
