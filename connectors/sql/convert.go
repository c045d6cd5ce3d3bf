package sql

// Value conversion. Rows hold JSON-decoded values (nil, bool, json.Number
// or float64, string, []any, map[string]any). They are bound as text (or
// bytes) and the database converts them to the column's type itself, so
// numbers keep every digit: a json.Number is passed as its text, never
// through float64.
//
// Rules, by target column type:
//   - numeric/decimal/integer/float: the number's text; true/false -> 1/0.
//   - boolean (PostgreSQL): true/false, or the text ('t', '1', ...).
//   - timestamp with time zone (PostgreSQL): the text as is; PostgreSQL
//     parses ISO 8601 with offsets, and zone-less values are UTC (the
//     session time zone is UTC).
//   - zone-less timestamps (PostgreSQL timestamp, MySQL DATETIME and
//     TIMESTAMP with the session time zone +00:00): an ISO 8601 value with
//     an offset is converted to UTC first ('2024-05-01T12:00:00+02:00' is
//     stored as 2024-05-01 10:00:00); a zone-less value is stored as is.
//   - json/jsonb: objects, arrays, numbers and booleans as JSON text; a
//     string that holds a JSON object or array is stored as that JSON,
//     any other string as a JSON string.
//   - bytea/binary/blob: a string is base64-decoded (the event encoding
//     of binary values).
//   - arrays (PostgreSQL): a JSON array becomes an array literal.
//   - anything else (text, varchar, enum, uuid, date, time, ...): the
//     text; objects and arrays as JSON text.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// scalarText renders a scalar value as text; ok is false for objects,
// arrays and unknown types.
func scalarText(v any) (s string, ok bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return string(x), true
	case bool:
		if x {
			return "true", true
		}
		return "false", true
	case float64:
		return formatFloat(x, 64), true
	case float32:
		return formatFloat(float64(x), 32), true
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	}
	return "", false
}

func formatFloat(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		return strconv.FormatFloat(f, 'e', -1, bits)
	}
	return strconv.FormatFloat(f, 'f', -1, bits)
}

// jsonText renders any value as compact JSON, numbers exact, without
// HTML escaping.
func jsonText(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// jsonColumnText is the JSON text stored in a json column for v.
func jsonColumnText(v any) (string, error) {
	if s, ok := v.(string); ok {
		t := strings.TrimSpace(s)
		if (strings.HasPrefix(t, "{") || strings.HasPrefix(t, "[")) && json.Valid([]byte(t)) {
			return s, nil
		}
	}
	return jsonText(v)
}

// decodeBytes decodes the base64 text of a binary value.
func decodeBytes(v any) ([]byte, error) {
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("want a base64 string for a binary column, got %s", describe(v))
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return nil, errors.New("binary column: value is not base64")
}

var (
	zonedLayouts = []string{
		"2006-01-02T15:04:05Z07:00",
		"2006-01-02 15:04:05Z07:00",
		"2006-01-02T15:04:05Z0700",
		"2006-01-02 15:04:05Z0700",
		"2006-01-02T15:04:05Z07",
		"2006-01-02 15:04:05Z07",
	}
	localLayouts = []string{
		"2006-01-02T15:04:05",
		"2006-01-02 15:04:05",
	}
)

// wallClockUTC renders a timestamp for a zone-less column: a value with an
// offset is converted to UTC; a zone-less one is normalized ('T' -> ' ').
// Text that is not an ISO 8601 timestamp is returned unchanged for the
// database to judge.
func wallClockUTC(s string) string {
	const out = "2006-01-02 15:04:05.999999"
	for _, l := range zonedLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC().Format(out)
		}
	}
	for _, l := range localLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.Format(out)
		}
	}
	return s
}

// pgArrayLiteral renders a JSON array as a PostgreSQL array literal:
// ["a", null, 1] -> {"a",NULL,"1"}. Objects become quoted JSON text.
func pgArrayLiteral(a []any) (string, error) {
	var b strings.Builder
	if err := writePGArray(&b, a, 0); err != nil {
		return "", err
	}
	return b.String(), nil
}

func writePGArray(b *strings.Builder, a []any, depth int) error {
	if depth > 6 {
		return errors.New("array nested too deeply")
	}
	b.WriteByte('{')
	for i, e := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		var s string
		switch x := e.(type) {
		case nil:
			b.WriteString("NULL")
			continue
		case []any:
			if err := writePGArray(b, x, depth+1); err != nil {
				return err
			}
			continue
		case map[string]any:
			var err error
			if s, err = jsonText(x); err != nil {
				return err
			}
		default:
			var ok bool
			if s, ok = scalarText(x); !ok {
				return fmt.Errorf("unsupported array element %s", describe(x))
			}
		}
		b.WriteByte('"')
		for j := 0; j < len(s); j++ {
			if s[j] == '"' || s[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return nil
}

// describe names a value's JSON kind for messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64, float32, int, int64, int32, uint64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// textValue is the generic conversion to text shared by the dialects:
// scalars as text, objects and arrays as JSON text for text-like columns.
func textValue(c *column, v any) (string, error) {
	if s, ok := scalarText(v); ok {
		return s, nil
	}
	switch v.(type) {
	case []any, map[string]any:
		if c.kind == kText {
			return jsonText(v)
		}
	}
	return "", fmt.Errorf("cannot store %s in a %s column", describe(v), c.sqlType)
}
