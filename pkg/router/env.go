package router

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"

	"github.com/expr-lang/expr"

	"github.com/plumecdc/plume/pkg/event"
)

// Env is the environment `when` and `map` expressions are type-checked
// against and evaluated in. Field names in expressions are the expr tags;
// docs/routing.md describes each one.
//
// Env has no methods on purpose: every exported method of the env type would
// become an expression function.
type Env struct {
	// Op is "insert", "update", "delete", "read" (snapshot) or "truncate".
	Op string `expr:"op"`
	// Database, Schema and Table name the source table; Schema is empty for
	// MySQL.
	Database string `expr:"database"`
	Schema   string `expr:"schema"`
	Table    string `expr:"table"`
	// Before and After are the row images, nil when the event has none.
	Before map[string]any `expr:"before"`
	After  map[string]any `expr:"after"`
	// Row is After, or Before for a delete.
	Row map[string]any `expr:"row"`
	// Key maps the key columns to their values (nil for a truncate).
	Key map[string]any `expr:"key"`
	// TS is the source commit time (the CloudEvents time attribute).
	TS time.Time `expr:"ts"`
	// CloudEvents attributes and extensions.
	ID       string `expr:"id"`
	Source   string `expr:"source"`
	Type     string `expr:"type"`
	Subject  string `expr:"subject"`
	Position string `expr:"position"`
	TxID     string `expr:"txid"`
	// Changed reports whether a column changed: see docs/routing.md.
	Changed func(col string) bool `expr:"changed"`
}

// needs says which parts of the event data (the envelope) an expression
// reads. Eval decodes only those, and nothing for an expression that reads
// attributes alone.
type needs uint8

const (
	needBefore needs = 1 << iota
	needAfter
	needUnchanged
	needRow // after, or before for a delete
	needKey // key (built from the subject and the row image)

	needImages = needBefore | needAfter | needUnchanged
	needAll    = needImages | needRow | needKey
)

// dataNames maps the env names whose values come from the envelope to what
// they need.
var dataNames = map[string]needs{
	"before":  needBefore,
	"after":   needAfter,
	"row":     needRow,
	"key":     needKey | needRow,
	"changed": needBefore | needAfter | needUnchanged,
	"$env":    needAll,
}

// Redacted is what mask "redact" and redact() put in place of a value.
const Redacted = "[redacted]"

// functions are the expression functions beyond expr's builtins, with their
// declared types so that calls are type-checked at compile time.
func functions() []expr.Option {
	return []expr.Option{
		expr.Function("hash", func(p ...any) (any, error) {
			return Hash(p[0]), nil
		}, new(func(any) string)),
		expr.Function("redact", func(p ...any) (any, error) {
			return Redacted, nil
		}, new(func(any) string)),
		expr.Function("number", func(p ...any) (any, error) {
			return Number(p[0])
		}, new(func(any) float64)),
	}
}

// Hash returns the hex SHA-256 of v's text (see Text). It is the hash()
// expression function and the "hash" mask.
func Hash(v any) string {
	var buf [128]byte
	sum := sha256.Sum256(appendText(buf[:0], v))
	return hex.EncodeToString(sum[:])
}

// Text returns the text a value is hashed as: a string as is (no quotes),
// a json.Number as its digits, a time as RFC 3339, anything else as its JSON
// form (null, true, 42, 1.5, {"a":1}, [1,2]).
func Text(v any) string { return string(appendText(nil, v)) }

func appendText(dst []byte, v any) []byte {
	switch x := v.(type) {
	case string:
		return append(dst, x...)
	case json.Number:
		return append(dst, x...)
	case time.Time:
		return x.UTC().AppendFormat(dst, time.RFC3339Nano)
	case int:
		return strconv.AppendInt(dst, int64(x), 10)
	case int64:
		return strconv.AppendInt(dst, x, 10)
	case float64:
		return event.AppendJSON(dst, x)
	}
	return appendJSON(dst, v)
}

// appendJSON appends the JSON form of a decoded value: like event.AppendJSON
// plus json.Number, int and other types expressions can produce.
func appendJSON(dst []byte, v any) []byte {
	switch x := v.(type) {
	case json.Number:
		return append(dst, x...)
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSON(dst, e)
		}
		return append(dst, ']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sortStrings(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = event.AppendJSONString(dst, k)
			dst = append(dst, ':')
			dst = appendJSON(dst, x[k])
		}
		return append(dst, '}')
	case time.Time:
		dst = append(dst, '"')
		dst = x.UTC().AppendFormat(dst, time.RFC3339Nano)
		return append(dst, '"')
	}
	return event.AppendJSON(dst, v)
}

func sortStrings(s []string) {
	// Insertion sort: row maps are small and this avoids sort's interface.
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Number converts a value to float64: numbers as they are, strings and
// json.Numbers by parsing them (decimal columns arrive as strings such as
// "12.50"), booleans as 0 or 1. It is the number() expression function; nil
// and other values are an error.
func Number(v any) (float64, error) {
	switch x := v.(type) {
	case int64:
		return float64(x), nil
	case float64:
		return x, nil
	case int:
		return float64(x), nil
	case json.Number:
		return parseNumber(string(x))
	case string:
		return parseNumber(x)
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case nil:
		return 0, fmt.Errorf("number(nil): the value is null")
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int()), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return float64(rv.Uint()), nil
	case reflect.Float32, reflect.Float64:
		return rv.Float(), nil
	}
	return 0, fmt.Errorf("number(%T): not a number", v)
}

func parseNumber(s string) (float64, error) {
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("number(%q): not a number", s)
	}
	return f, nil
}

// convertNumbers replaces, in place and recursively, every json.Number of a
// decoded value by int64 or float64 where that is exact (see convertNumber).
func convertNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		return convertNumber(x)
	case map[string]any:
		for k, e := range x {
			switch e.(type) {
			case json.Number, map[string]any, []any:
				x[k] = convertNumbers(e)
			}
		}
	case []any:
		for i, e := range x {
			switch e.(type) {
			case json.Number, map[string]any, []any:
				x[i] = convertNumbers(e)
			}
		}
	}
	return v
}

// convertNumber is the number rule of docs/routing.md:
//   - an integer (no fraction, no exponent) that fits int64 becomes int64;
//   - any other number becomes float64 when float64 holds it exactly enough
//     to give its text back: it has at most 15 significant digits, or
//     float64's shortest form is the same text (how Plume writes floats);
//   - anything else (integers beyond int64, such as a bigint unsigned near
//     2^64, or 17-digit decimals that float64 would round) stays json.Number,
//     its original text.
func convertNumber(n json.Number) any {
	s := string(n)
	integer := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '.' || c == 'e' || c == 'E' {
			integer = false
			break
		}
	}
	if integer {
		if i, ok := parseInt64(s); ok {
			return i
		}
	}
	digits := significantDigits(s)
	if digits > 17 {
		return n // float64's shortest form never has more than 17 digits
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return n
	}
	if digits <= 15 {
		return f
	}
	var buf [32]byte
	if string(event.AppendJSON(buf[:0], f)) == s {
		return f
	}
	return n
}

// parseInt64 parses a JSON integer (optional '-', digits), reporting
// whether it fits int64. Unlike strconv.ParseInt it does not allocate an
// error for the integers that do not fit.
func parseInt64(s string) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	var u uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0') // 19 digits fit uint64
	}
	switch {
	case !neg && u <= math.MaxInt64:
		return int64(u), true
	case neg && u <= 1<<63:
		return int64(-u), true
	}
	return 0, false
}

// significantDigits counts the mantissa digits of a JSON number without
// leading and trailing zeros: "0.00120" and "1.2e5" have 2.
func significantDigits(s string) int {
	first, last, n := -1, -1, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 'e' || c == 'E' {
			break
		}
		if c < '0' || c > '9' {
			continue
		}
		if c != '0' {
			if first < 0 {
				first = n
			}
			last = n
		}
		n++
	}
	if first < 0 {
		return 0
	}
	return last - first + 1
}
