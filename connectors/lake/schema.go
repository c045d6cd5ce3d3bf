package lake

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/plumecdc/plume/pkg/config"
)

// colType is a column's lake type. Its string form ("int64",
// "decimal(10,2)", "timestamptz") is what commit manifests record, so a
// table's types stay the same across restarts.
type colType struct {
	kind        string // see arrowType
	prec, scale int32  // decimal only
}

func (t colType) String() string {
	if t.kind == "decimal" {
		return fmt.Sprintf("decimal(%d,%d)", t.prec, t.scale)
	}
	return t.kind
}

func parseColType(s string) (colType, error) {
	if strings.HasPrefix(s, "decimal(") && strings.HasSuffix(s, ")") {
		p, sc, ok := strings.Cut(s[len("decimal("):len(s)-1], ",")
		pi, err1 := strconv.Atoi(p)
		si, err2 := strconv.Atoi(sc)
		if !ok || err1 != nil || err2 != nil || pi < 1 || pi > 38 || si < 0 || si > pi {
			return colType{}, fmt.Errorf("bad decimal type %q", s)
		}
		return colType{kind: "decimal", prec: int32(pi), scale: int32(si)}, nil
	}
	switch s {
	case "int32", "int64", "float32", "float64", "bool", "string", "json", "binary", "date", "timestamp", "timestamptz":
		return colType{kind: s}, nil
	}
	return colType{}, fmt.Errorf("unknown column type %q", s)
}

// arrowType is the Arrow (and so Parquet) type of t:
//
//	int32, int64          INT32, INT64
//	float32, float64      FLOAT, DOUBLE
//	bool                  BOOLEAN
//	decimal(p,s)          DECIMAL(p,s) (p <= 38)
//	string, json          STRING (UTF-8); json holds the JSON text
//	binary                BYTE_ARRAY
//	date                  DATE (days since 1970-01-01)
//	timestamp             TIMESTAMP(MICROS, isAdjustedToUTC=false): a wall-clock time
//	timestamptz           TIMESTAMP(MICROS, isAdjustedToUTC=true): an instant, UTC
func (t colType) arrowType() arrow.DataType {
	switch t.kind {
	case "int32":
		return arrow.PrimitiveTypes.Int32
	case "int64":
		return arrow.PrimitiveTypes.Int64
	case "float32":
		return arrow.PrimitiveTypes.Float32
	case "float64":
		return arrow.PrimitiveTypes.Float64
	case "bool":
		return arrow.FixedWidthTypes.Boolean
	case "decimal":
		return &arrow.Decimal128Type{Precision: t.prec, Scale: t.scale}
	case "binary":
		return arrow.BinaryTypes.Binary
	case "date":
		return arrow.FixedWidthTypes.Date32
	case "timestamp":
		return &arrow.TimestampType{Unit: arrow.Microsecond}
	case "timestamptz":
		return &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	}
	return arrow.BinaryTypes.String // string, json
}

// Source type names to lake types. Anything not listed is a string: the
// event already carries its text form (docs/types-postgres.md,
// docs/types-mysql.md).

// pgColType maps PostgreSQL's format_type() output.
func pgColType(t string) colType {
	t = strings.ToLower(t)
	switch {
	case strings.HasSuffix(t, "[]"), t == "hstore":
		return colType{kind: "json"}
	case t == "smallint", t == "integer":
		return colType{kind: "int32"}
	case t == "bigint", t == "oid", t == "xid", t == "cid":
		return colType{kind: "int64"}
	case t == "real":
		return colType{kind: "float32"}
	case t == "double precision":
		return colType{kind: "float64"}
	case t == "boolean":
		return colType{kind: "bool"}
	case t == "bytea":
		return colType{kind: "binary"}
	case t == "json", t == "jsonb":
		return colType{kind: "json"}
	case t == "date":
		return colType{kind: "date"}
	case strings.HasPrefix(t, "timestamp") && strings.HasSuffix(t, "with time zone") && !strings.HasSuffix(t, "without time zone"):
		return colType{kind: "timestamptz"}
	case strings.HasPrefix(t, "timestamp"):
		return colType{kind: "timestamp"}
	case t == "money":
		return colType{kind: "decimal", prec: 19, scale: 2}
	case strings.HasPrefix(t, "numeric(") || strings.HasPrefix(t, "decimal("):
		if ct, ok := decimalType(t); ok {
			return ct
		}
	}
	return colType{kind: "string"}
}

// mysqlColType maps information_schema.COLUMNS.COLUMN_TYPE.
func mysqlColType(t string) colType {
	t = strings.ToLower(strings.TrimSpace(t))
	unsigned := strings.Contains(t, "unsigned")
	base := t
	if i := strings.IndexAny(base, "( "); i >= 0 {
		base = base[:i]
	}
	switch base {
	case "tinyint", "smallint", "mediumint", "year":
		return colType{kind: "int32"}
	case "int", "integer":
		if unsigned {
			return colType{kind: "int64"}
		}
		return colType{kind: "int32"}
	case "bigint":
		if unsigned {
			return colType{kind: "decimal", prec: 20, scale: 0}
		}
		return colType{kind: "int64"}
	case "bit":
		if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(t, "bit("), ")")); err == nil && n < 64 {
			return colType{kind: "int64"}
		}
		return colType{kind: "decimal", prec: 20, scale: 0}
	case "decimal", "numeric", "dec", "fixed":
		if ct, ok := decimalType(t); ok {
			return ct
		}
		if !strings.Contains(t, "(") {
			return colType{kind: "decimal", prec: 10, scale: 0} // MySQL's default
		}
	case "float":
		return colType{kind: "float32"}
	case "double", "real":
		return colType{kind: "float64"}
	case "date":
		return colType{kind: "date"}
	case "datetime":
		return colType{kind: "timestamp"}
	case "timestamp":
		return colType{kind: "timestamptz"}
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "vector":
		return colType{kind: "binary"}
	case "json":
		return colType{kind: "json"}
	}
	return colType{kind: "string"}
}

// decimalType parses "numeric(p,s)"/"decimal(p,s)" (possibly followed by
// " unsigned"); precisions above 38 (Parquet's DECIMAL in 16 bytes) and
// negative scales stay strings.
func decimalType(t string) (colType, bool) {
	open, end := strings.IndexByte(t, '('), strings.IndexByte(t, ')')
	if open < 0 || end < open {
		return colType{}, false
	}
	ps, ss, _ := strings.Cut(t[open+1:end], ",")
	p, err := strconv.Atoi(strings.TrimSpace(ps))
	if err != nil {
		return colType{}, false
	}
	s := 0
	if ss != "" {
		if s, err = strconv.Atoi(strings.TrimSpace(ss)); err != nil {
			return colType{}, false
		}
	}
	if p < 1 || p > 38 || s < 0 || s > p {
		return colType{}, false
	}
	return colType{kind: "decimal", prec: int32(p), scale: int32(s)}, true
}

// inferType guesses a type from a JSON-decoded value, for fields that are
// not source columns (computed by a route's map) or with types: infer.
// nil gives ok=false: decide later.
func inferType(v any) (colType, bool) {
	switch x := v.(type) {
	case nil:
		return colType{}, false
	case bool:
		return colType{kind: "bool"}, true
	case int, int32, int64:
		return colType{kind: "int64"}, true
	case float32, float64:
		return colType{kind: "float64"}, true
	case json.Number:
		if _, err := x.Int64(); err == nil {
			return colType{kind: "int64"}, true
		}
		return colType{kind: "string"}, true
	case map[string]any, []any:
		return colType{kind: "json"}, true
	case time.Time:
		return colType{kind: "timestamptz"}, true
	}
	return colType{kind: "string"}, true
}

// sourceCatalog reads column types from the source database.
type sourceCatalog struct {
	typ string // config.SourcePostgres or config.SourceMySQL
	dsn string
}

// columns returns the table's columns and their lake types, in table
// order. schema is the PostgreSQL schema or the MySQL database.
func (c *sourceCatalog) columns(ctx context.Context, schema, table string) ([]string, map[string]colType, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var names []string
	types := map[string]colType{}
	switch c.typ {
	case config.SourcePostgres:
		conn, err := pgx.Connect(ctx, c.dsn)
		if err != nil {
			return nil, nil, fmt.Errorf("read column types from the source: %w", redactErr(err))
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(ctx, `SELECT a.attname,
       format_type(COALESCE(NULLIF(t.typbasetype, 0), a.atttypid),
                   CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END)
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_type t ON t.oid = a.atttypid
 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`, schema, table)
		if err != nil {
			return nil, nil, fmt.Errorf("read column types of %s.%s: %w", schema, table, err)
		}
		for rows.Next() {
			var n, t string
			if err := rows.Scan(&n, &t); err != nil {
				return nil, nil, err
			}
			names = append(names, n)
			types[n] = pgColType(t)
		}
		if err := rows.Err(); err != nil {
			return nil, nil, fmt.Errorf("read column types of %s.%s: %w", schema, table, err)
		}
	case config.SourceMySQL:
		cfg, err := mysql.ParseDSN(c.dsn)
		if err != nil {
			return nil, nil, fmt.Errorf("read column types from the source: bad DSN")
		}
		cfg.DBName = ""
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, nil, err
		}
		db := sql.OpenDB(conn)
		defer db.Close()
		rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, schema, table)
		if err != nil {
			return nil, nil, fmt.Errorf("read column types of %s.%s: %w", schema, table, err)
		}
		defer rows.Close()
		for rows.Next() {
			var n, t string
			if err := rows.Scan(&n, &t); err != nil {
				return nil, nil, err
			}
			names = append(names, n)
			types[n] = mysqlColType(t)
		}
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("source type %q: cannot read column types (set types: infer)", c.typ)
	}
	return names, types, nil
}

// redactErr keeps a connection error's message free of the DSN: pgx names
// host and user, never the password; keep only that text.
func redactErr(err error) error { return errors.New(err.Error()) }

// appendValue appends v, a JSON-decoded row value, to b as type t.
func appendValue(b array.Builder, t colType, v any) error {
	if v == nil {
		b.AppendNull()
		return nil
	}
	switch t.kind {
	case "int32":
		n, err := toInt64(v)
		if err != nil {
			return err
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return fmt.Errorf("%d out of range for int32", n)
		}
		b.(*array.Int32Builder).Append(int32(n))
	case "int64":
		n, err := toInt64(v)
		if err != nil {
			return err
		}
		b.(*array.Int64Builder).Append(n)
	case "float32", "float64":
		f, err := toFloat(v)
		if err != nil {
			return err
		}
		if t.kind == "float32" {
			b.(*array.Float32Builder).Append(float32(f))
		} else {
			b.(*array.Float64Builder).Append(f)
		}
	case "bool":
		switch x := v.(type) {
		case bool:
			b.(*array.BooleanBuilder).Append(x)
		case int64:
			b.(*array.BooleanBuilder).Append(x != 0)
		default:
			return fmt.Errorf("%T is not a boolean", v)
		}
	case "decimal":
		s, err := decimalText(v)
		if err != nil {
			return err
		}
		n, err := decimal128.FromString(s, t.prec, t.scale)
		if err != nil {
			return fmt.Errorf("%q does not fit decimal(%d,%d): %v", s, t.prec, t.scale, err)
		}
		if !n.FitsInPrecision(t.prec) {
			return fmt.Errorf("%q does not fit decimal(%d,%d)", s, t.prec, t.scale)
		}
		b.(*array.Decimal128Builder).Append(n)
	case "binary":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%T is not base64 text", v)
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("binary value is not base64: %v", err)
		}
		b.(*array.BinaryBuilder).Append(raw)
	case "date":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%T is not a date", v)
		}
		d, err := time.Parse("2006-01-02", s)
		if err != nil {
			return fmt.Errorf("date %q cannot be stored (Parquet DATE needs a calendar date)", s)
		}
		b.(*array.Date32Builder).Append(arrow.Date32(d.Unix() / 86400))
	case "timestamp", "timestamptz":
		ts, err := parseTimestamp(v)
		if err != nil {
			return err
		}
		b.(*array.TimestampBuilder).Append(arrow.Timestamp(ts.UnixMicro()))
	case "json":
		switch x := v.(type) {
		case string:
			b.(*array.StringBuilder).Append(x)
		default:
			j, err := json.Marshal(x)
			if err != nil {
				return err
			}
			b.(*array.StringBuilder).Append(string(j))
		}
	default: // string
		switch x := v.(type) {
		case string:
			b.(*array.StringBuilder).Append(x)
		case json.Number:
			b.(*array.StringBuilder).Append(x.String())
		case time.Time:
			b.(*array.StringBuilder).Append(x.UTC().Format(time.RFC3339Nano))
		default:
			j, err := json.Marshal(x)
			if err != nil {
				return err
			}
			b.(*array.StringBuilder).Append(string(j))
		}
	}
	return nil
}

func toInt64(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case int:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case uint64:
		if x > math.MaxInt64 {
			return 0, fmt.Errorf("%d out of range for int64", x)
		}
		return int64(x), nil
	case float64:
		if x != math.Trunc(x) || x < math.MinInt64 || x >= math.MaxInt64 {
			return 0, fmt.Errorf("%v is not an integer", x)
		}
		return int64(x), nil
	case json.Number:
		return x.Int64()
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	}
	return 0, fmt.Errorf("%T is not an integer", v)
}

func toFloat(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case int64:
		return float64(x), nil
	case int:
		return float64(x), nil
	case json.Number:
		return strconv.ParseFloat(x.String(), 64)
	case string:
		switch x {
		case "NaN":
			return math.NaN(), nil
		case "Infinity":
			return math.Inf(1), nil
		case "-Infinity":
			return math.Inf(-1), nil
		}
		return strconv.ParseFloat(x, 64)
	}
	return 0, fmt.Errorf("%T is not a number", v)
}

func decimalText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case int:
		return strconv.Itoa(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("%T is not a decimal", v)
}

// parseTimestamp reads the ISO 8601 text of docs/types*.md: with a
// trailing Z (timestamptz, MySQL timestamp) or without (a wall-clock
// timestamp/datetime), with any number of fraction digits.
func parseTimestamp(v any) (time.Time, error) {
	switch x := v.(type) {
	case time.Time:
		return x, nil
	case string:
		layout := "2006-01-02T15:04:05.999999999"
		if strings.HasSuffix(x, "Z") || (len(x) > 19 && strings.ContainsAny(x[19:], "+-")) {
			layout += "Z07:00"
		}
		t, err := time.Parse(layout, strings.Replace(x, " ", "T", 1))
		if err != nil {
			return time.Time{}, fmt.Errorf("timestamp %q cannot be stored (Parquet TIMESTAMP needs a date in years 0001-9999)", x)
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%T is not a timestamp", v)
}
