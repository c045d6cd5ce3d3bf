package mysql

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unsafe"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/plumecdc/plume/pkg/event"
)

// kind is how a column's values are rendered (docs/types-mysql.md).
type kind uint8

const (
	kSigned    kind = iota // tinyint..bigint -> int64
	kUnsigned              // ... unsigned -> uint64
	kFloat                 // float -> float64 (shortest decimal of the float32)
	kDouble                // double -> float64
	kDecimal               // decimal -> event.Decimal (exact text)
	kBit                   // bit(n) -> uint64
	kYear                  // year -> int64
	kDate                  // date -> "2024-01-31"
	kDatetime              // datetime(fsp) -> "2024-01-31T12:00:00.000000"
	kTimestamp             // timestamp(fsp) -> "2024-01-31T12:00:00.000000Z" (UTC)
	kTime                  // time(fsp) -> "-838:59:59.000000"
	kText                  // character data -> string (UTF-8)
	kBinary                // binary data -> []byte
	kEnum                  // enum -> string
	kSet                   // set -> comma-joined string
	kJSON                  // MySQL binary JSON -> string with the JSON text
	kGeometry              // geometry -> WKT string
)

// colType is one column's rendering rule, built from a TABLE_MAP event
// (streaming) or information_schema (snapshot). Both builders produce the
// same colType for the same column, so snapshot and stream render a row
// identically.
type colType struct {
	kind    kind
	name    string // type name for event.Column.Type, e.g. "bigint unsigned"
	charset string // kText, kEnum, kSet: source character set
	fsp     int    // fractional second digits of temporal types
	padLen  int    // BINARY(n): byte length to pad with 0x00 (binlog strips it)
	enum    []string
	set     []string
	decode  textDecoder // kText in the binlog; nil means UTF-8
	// rawText marks character data in a charset Plume cannot decode: it is
	// rendered as its raw bytes, and a snapshot selects it with
	// CAST(col AS BINARY) so both paths see the same bytes.
	rawText bool
	// bin is the column's binlog encoding (binlog-built rules only), for
	// the direct row decoder (rows.go).
	bin binCol
}

var intNames = map[byte]string{
	gomysql.MYSQL_TYPE_TINY: "tinyint", gomysql.MYSQL_TYPE_SHORT: "smallint",
	gomysql.MYSQL_TYPE_INT24: "mediumint", gomysql.MYSQL_TYPE_LONG: "int",
	gomysql.MYSQL_TYPE_LONGLONG: "bigint",
}

var blobPrefix = [5]string{"", "tiny", "", "medium", "long"}

var geometryNames = map[uint64]string{0: "geometry", 1: "point", 2: "linestring", 3: "polygon",
	4: "multipoint", 5: "multilinestring", 6: "multipolygon", 7: "geometrycollection"}

func withFSP(name string, fsp int) string {
	if fsp == 0 {
		return name
	}
	return name + "(" + strconv.Itoa(fsp) + ")"
}

// stringRealType resolves MYSQL_TYPE_STRING's real type and byte length
// from its metadata (CHAR, BINARY, ENUM and SET all travel as STRING).
func stringRealType(meta uint16) (byte, int) {
	if meta < 256 {
		return gomysql.MYSQL_TYPE_STRING, int(meta)
	}
	b0, b1 := byte(meta>>8), byte(meta&0xFF)
	if b0&0x30 != 0x30 {
		return b0 | 0x30, int(uint16(b1) | uint16((b0&0x30)^0x30)<<4)
	}
	return b0, int(b1)
}

// binlogColType builds the rendering rule of a column from TABLE_MAP data:
// type code, metadata, signedness, character set (by collation id) and the
// enum/set value lists.
func binlogColType(typ byte, meta uint16, unsigned bool, charset string, enumSet []string, geomType uint64) (colType, error) {
	ct := colType{}
	if typ == gomysql.MYSQL_TYPE_STRING {
		var n int
		typ, n = stringRealType(meta)
		if typ == gomysql.MYSQL_TYPE_STRING {
			if charset == "binary" {
				return colType{kind: kBinary, name: "binary", padLen: n}, nil
			}
			return textType("char", charset), nil
		}
	}
	switch typ {
	case gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_SHORT, gomysql.MYSQL_TYPE_INT24,
		gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_LONGLONG:
		if unsigned {
			return colType{kind: kUnsigned, name: intNames[typ] + " unsigned"}, nil
		}
		return colType{kind: kSigned, name: intNames[typ]}, nil
	case gomysql.MYSQL_TYPE_FLOAT:
		return colType{kind: kFloat, name: "float"}, nil
	case gomysql.MYSQL_TYPE_DOUBLE:
		return colType{kind: kDouble, name: "double"}, nil
	case gomysql.MYSQL_TYPE_NEWDECIMAL:
		return colType{kind: kDecimal, name: fmt.Sprintf("decimal(%d,%d)", meta>>8, meta&0xFF)}, nil
	case gomysql.MYSQL_TYPE_BIT:
		return colType{kind: kBit, name: fmt.Sprintf("bit(%d)", (meta>>8)*8+(meta&0xFF))}, nil
	case gomysql.MYSQL_TYPE_YEAR:
		return colType{kind: kYear, name: "year"}, nil
	case gomysql.MYSQL_TYPE_DATE, gomysql.MYSQL_TYPE_NEWDATE:
		return colType{kind: kDate, name: "date"}, nil
	case gomysql.MYSQL_TYPE_DATETIME:
		return colType{kind: kDatetime, name: "datetime"}, nil
	case gomysql.MYSQL_TYPE_DATETIME2:
		return colType{kind: kDatetime, name: withFSP("datetime", int(meta)), fsp: int(meta)}, nil
	case gomysql.MYSQL_TYPE_TIMESTAMP:
		return colType{kind: kTimestamp, name: "timestamp"}, nil
	case gomysql.MYSQL_TYPE_TIMESTAMP2:
		return colType{kind: kTimestamp, name: withFSP("timestamp", int(meta)), fsp: int(meta)}, nil
	case gomysql.MYSQL_TYPE_TIME:
		return colType{kind: kTime, name: "time"}, nil
	case gomysql.MYSQL_TYPE_TIME2:
		return colType{kind: kTime, name: withFSP("time", int(meta)), fsp: int(meta)}, nil
	case gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING:
		if charset == "binary" {
			return colType{kind: kBinary, name: "varbinary"}, nil
		}
		return textType("varchar", charset), nil
	case gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_TINY_BLOB, gomysql.MYSQL_TYPE_MEDIUM_BLOB, gomysql.MYSQL_TYPE_LONG_BLOB:
		p := ""
		if meta <= 4 {
			p = blobPrefix[meta]
		}
		if charset == "binary" || charset == "" {
			return colType{kind: kBinary, name: p + "blob"}, nil
		}
		return textType(p+"text", charset), nil
	case gomysql.MYSQL_TYPE_ENUM:
		return colType{kind: kEnum, name: "enum", charset: charset, enum: enumSet}, nil
	case gomysql.MYSQL_TYPE_SET:
		return colType{kind: kSet, name: "set", charset: charset, set: enumSet}, nil
	case gomysql.MYSQL_TYPE_JSON:
		return colType{kind: kJSON, name: "json"}, nil
	case gomysql.MYSQL_TYPE_GEOMETRY:
		n, ok := geometryNames[geomType]
		if !ok {
			n = "geometry"
		}
		return colType{kind: kGeometry, name: n}, nil
	case gomysql.MYSQL_TYPE_VECTOR:
		return colType{kind: kBinary, name: "vector"}, nil
	}
	return ct, fmt.Errorf("unsupported column type %d", typ)
}

func textType(name, charset string) colType {
	ct := colType{kind: kText, name: name, charset: charset}
	if d, ok := charsetDecoders[charset]; ok {
		ct.decode = d
	} else {
		// Unknown charset: rendered as raw bytes (base64), documented.
		ct.kind, ct.rawText = kBinary, true
	}
	return ct
}

// infoSchemaColType builds the rule from information_schema.COLUMNS:
// DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME and precisions.
func infoSchemaColType(dataType, columnType, charset string, numPrec, numScale, dtPrec int64) colType {
	dt := strings.ToLower(dataType)
	unsigned := strings.Contains(strings.ToLower(columnType), "unsigned")
	switch dt {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		if dt == "integer" {
			dt = "int"
		}
		if unsigned {
			return colType{kind: kUnsigned, name: dt + " unsigned"}
		}
		return colType{kind: kSigned, name: dt}
	case "float":
		return colType{kind: kFloat, name: "float"}
	case "double", "real", "double precision":
		return colType{kind: kDouble, name: "double"}
	case "decimal", "numeric":
		return colType{kind: kDecimal, name: fmt.Sprintf("decimal(%d,%d)", numPrec, numScale)}
	case "bit":
		return colType{kind: kBit, name: fmt.Sprintf("bit(%d)", numPrec)}
	case "year":
		return colType{kind: kYear, name: "year"}
	case "date":
		return colType{kind: kDate, name: "date"}
	case "datetime":
		return colType{kind: kDatetime, name: withFSP("datetime", int(dtPrec)), fsp: int(dtPrec)}
	case "timestamp":
		return colType{kind: kTimestamp, name: withFSP("timestamp", int(dtPrec)), fsp: int(dtPrec)}
	case "time":
		return colType{kind: kTime, name: withFSP("time", int(dtPrec)), fsp: int(dtPrec)}
	case "char", "varchar", "tinytext", "text", "mediumtext", "longtext":
		if charset == "binary" { // MariaDB reports CHAR(n) BINARY etc. this way
			return colType{kind: kBinary, name: strings.Replace(strings.Replace(dt, "char", "binary", 1), "text", "blob", 1)}
		}
		ct := textType(dt, charset)
		ct.decode = nil // the snapshot connection converts to utf8mb4
		return ct
	case "binary":
		return colType{kind: kBinary, name: "binary"}
	case "varbinary":
		return colType{kind: kBinary, name: "varbinary"}
	case "tinyblob", "blob", "mediumblob", "longblob":
		return colType{kind: kBinary, name: dt}
	case "enum":
		return colType{kind: kEnum, name: "enum", charset: charset}
	case "set":
		return colType{kind: kSet, name: "set", charset: charset}
	case "json":
		return colType{kind: kJSON, name: "json"}
	case "geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
		"multipolygon", "geometrycollection", "geomcollection":
		if dt == "geomcollection" {
			dt = "geometrycollection"
		}
		return colType{kind: kGeometry, name: dt}
	case "vector":
		return colType{kind: kBinary, name: "vector"}
	}
	// Types added by plugins (MariaDB inet6, uuid, ...) travel as their
	// text form in a snapshot; render them as text.
	return colType{kind: kText, name: dt}
}

// ---- conversions ----

// float32Value widens a FLOAT to float64 through its shortest decimal form,
// so 1.1 stays 1.1 (not 1.100000023841858).
func float32Value(f float32) float64 {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return float64(f)
	}
	v, err := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
	if err != nil {
		return float64(f)
	}
	return v
}

// normDatetime renders "YYYY-MM-DD hh:mm:ss[.ffffff]" as ISO 8601 with
// exactly fsp fraction digits: "YYYY-MM-DDThh:mm:ss.fff", plus "Z" for
// timestamps (which are UTC). Zero dates keep their zeros.
func normDatetime(s string, fsp int, utc bool) string {
	base, frac, _ := strings.Cut(s, ".")
	var sb strings.Builder
	sb.Grow(len(base) + fsp + 2)
	if len(base) == 10 { // a date only
		sb.WriteString(base)
		sb.WriteString("T00:00:00")
	} else {
		sb.WriteString(base[:min(10, len(base))])
		if len(base) > 10 {
			sb.WriteByte('T')
			sb.WriteString(base[11:])
		}
	}
	writeFrac(&sb, frac, fsp)
	if utc {
		sb.WriteByte('Z')
	}
	return sb.String()
}

func writeFrac(sb *strings.Builder, frac string, fsp int) {
	if fsp <= 0 {
		return
	}
	sb.WriteByte('.')
	for i := 0; i < fsp; i++ {
		if i < len(frac) {
			sb.WriteByte(frac[i])
		} else {
			sb.WriteByte('0')
		}
	}
}

// normTime renders "[-]hhh:mm:ss[.ffffff]" with exactly fsp fraction digits.
func normTime(s string, fsp int) string {
	base, frac, _ := strings.Cut(s, ".")
	var sb strings.Builder
	sb.WriteString(base)
	writeFrac(&sb, frac, fsp)
	return sb.String()
}

func bytesOf(raw any) ([]byte, bool) {
	switch x := raw.(type) {
	case []byte:
		return x, true
	case string:
		return []byte(x), true
	}
	return nil, false
}

func toInt64(raw any) (int64, bool) {
	switch x := raw.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), true
	}
	return 0, false
}

func toUint64(raw any) (uint64, bool) {
	switch x := raw.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int64:
		return uint64(x), true
	case int32:
		return uint64(uint32(x)), true
	case int:
		return uint64(x), true
	}
	return 0, false
}

// fromBinlog converts a value decoded by go-mysql's rows event parser (with
// ParseTime off, UseDecimal off and timestamps rendered in UTC).
func (ct *colType) fromBinlog(raw any) (event.Value, error) {
	if raw == nil {
		return nil, nil
	}
	// Where raw already holds the event.Value type the column converts to,
	// raw itself is returned: boxing the same value again would allocate
	// (an int64 beyond 255, a string header) once per column per row.
	switch ct.kind {
	case kSigned, kYear:
		if _, ok := raw.(int64); ok {
			return raw, nil
		}
		if v, ok := toInt64(raw); ok {
			return v, nil
		}
	case kUnsigned:
		// The binlog is decoded without signedness (rowsDecoder), so an
		// unsigned column arrives as the signed integer of its width.
		switch x := raw.(type) {
		case int8:
			return uint64(uint8(x)), nil
		case int16:
			return uint64(uint16(x)), nil
		case int32:
			if ct.name == "mediumint unsigned" {
				// go-mysql sign-extends a 3-byte int24 into an int32.
				return uint64(uint32(x) & 0xFFFFFF), nil
			}
			return uint64(uint32(x)), nil
		}
		if v, ok := toUint64(raw); ok {
			return v, nil
		}
	case kFloat:
		switch x := raw.(type) {
		case float32:
			return float32Value(x), nil
		case float64:
			return float32Value(float32(x)), nil
		}
	case kDouble:
		if _, ok := raw.(float64); ok {
			return raw, nil
		}
	case kDecimal:
		if x, ok := raw.(string); ok {
			return event.Decimal(x), nil
		}
	case kBit:
		if x, ok := raw.(int64); ok {
			return uint64(x), nil
		}
	case kDate:
		if x, ok := raw.(string); ok {
			return strings.Clone(x), nil
		}
	case kDatetime, kTimestamp:
		if x, ok := raw.(string); ok {
			return normDatetime(x, ct.fsp, ct.kind == kTimestamp), nil
		}
	case kTime:
		if x, ok := raw.(string); ok {
			return normTime(x, ct.fsp), nil
		}
	case kText:
		if ct.decode == nil {
			// UTF-8 text is used without a copy: it aliases the binlog
			// packet, as go-mysql's own VARCHAR strings do. The packet
			// is reused only after the streamer has handled its event
			// (dumpConn), and the Emitter keeps no value past Emit
			// (capture.Emitter), so the bytes do not change while
			// anything reads them.
			switch x := raw.(type) {
			case string:
				return raw, nil
			case []byte:
				return unsafe.String(unsafe.SliceData(x), len(x)), nil
			}
		}
		if b, ok := bytesOf(raw); ok {
			return ct.decode(b), nil
		}
	case kBinary:
		if b, ok := bytesOf(raw); ok {
			return padBinary(b, ct.padLen), nil
		}
	case kEnum:
		if i, ok := toInt64(raw); ok {
			if i == 0 {
				return "", nil // the invalid-value marker of non-strict mode
			}
			if int(i) > len(ct.enum) {
				return nil, fmt.Errorf("enum index %d out of %d values", i, len(ct.enum))
			}
			return ct.enum[i-1], nil
		}
	case kSet:
		if bits, ok := toInt64(raw); ok {
			return setString(uint64(bits), ct.set), nil
		}
	case kJSON:
		switch x := raw.(type) {
		case string:
			return strings.Clone(x), nil
		case []byte:
			if len(x) == 0 { // an empty JSON document is JSON null
				return "null", nil
			}
			return string(x), nil
		}
	case kGeometry:
		if b, ok := bytesOf(raw); ok {
			return geometryWKT(b)
		}
	}
	return nil, fmt.Errorf("unexpected binlog value %T for %s", raw, ct.name)
}

func padBinary(b []byte, n int) []byte {
	out := make([]byte, max(len(b), n))
	copy(out, b)
	return out
}

func setString(bits uint64, values []string) string {
	var sb strings.Builder
	for i, v := range values {
		if i < 64 && bits&(1<<uint(i)) != 0 {
			if sb.Len() > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(v)
		}
	}
	return sb.String()
}

// fromField converts a value read by a snapshot query (binary protocol,
// utf8mb4 connection, session time zone UTC).
func (ct *colType) fromField(fv *gomysql.FieldValue) (event.Value, error) {
	switch fv.Type {
	case gomysql.FieldValueTypeNull:
		return nil, nil
	case gomysql.FieldValueTypeSigned:
		switch ct.kind {
		case kUnsigned, kBit:
			return fv.AsUint64(), nil
		}
		return fv.AsInt64(), nil
	case gomysql.FieldValueTypeUnsigned:
		switch ct.kind {
		case kSigned, kYear:
			return int64(fv.AsUint64()), nil
		}
		return fv.AsUint64(), nil
	case gomysql.FieldValueTypeFloat:
		if ct.kind == kFloat {
			return float32Value(float32(fv.AsFloat64())), nil
		}
		return fv.AsFloat64(), nil
	}
	b := fv.AsString()
	switch ct.kind {
	case kDecimal:
		return event.Decimal(b), nil
	case kBit:
		var v uint64
		if len(b) > 8 {
			return nil, fmt.Errorf("bit value of %d bytes", len(b))
		}
		var buf [8]byte
		copy(buf[8-len(b):], b)
		v = binary.BigEndian.Uint64(buf[:])
		return v, nil
	case kDate:
		return string(b), nil
	case kDatetime, kTimestamp:
		return normDatetime(string(b), ct.fsp, ct.kind == kTimestamp), nil
	case kTime:
		return normTime(string(b), ct.fsp), nil
	case kBinary:
		return append([]byte(nil), b...), nil
	case kGeometry:
		return geometryWKT(b)
	case kSigned, kYear:
		return strconv.ParseInt(string(b), 10, 64)
	case kUnsigned:
		return strconv.ParseUint(string(b), 10, 64)
	case kFloat:
		f, err := strconv.ParseFloat(string(b), 32)
		return float32Value(float32(f)), err
	case kDouble:
		return strconv.ParseFloat(string(b), 64)
	}
	return string(b), nil // text, enum, set, json
}
