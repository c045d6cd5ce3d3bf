package event

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Value is one column value. Connectors convert source values to exactly one
// of these Go types, each with a fixed JSON form (see docs/types.md):
//
//	nil            -> null
//	bool           -> true / false
//	int64, uint64  -> number (uint64 keeps 18446744073709551615 exact)
//	float64        -> number; NaN, +Inf, -Inf -> "NaN", "Infinity", "-Infinity"
//	string         -> string
//	[]byte         -> base64 string (standard alphabet, padded)
//	Decimal        -> string holding the exact decimal text ("12.50", "NaN")
//	RawJSON        -> the JSON text itself, embedded (arrays, hstore, ranges)
//	[]Value        -> array
//	map[string]Value -> object with sorted keys
//	Unchanged      -> not emitted in the image; listed in the envelope's
//	                  "unchanged" array (PostgreSQL unchanged TOAST values)
type Value = any

// Decimal is an exact decimal number kept as its text form.
type Decimal string

// RawJSON is a value that is already valid JSON text.
type RawJSON []byte

// Unchanged marks a column whose value the source did not send because it
// did not change (PostgreSQL TOAST). It is never rendered as a value.
type Unchanged struct{}

// AppendJSON appends v's JSON form to dst.
func AppendJSON(dst []byte, v Value) []byte {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		if x {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case int64:
		return strconv.AppendInt(dst, x, 10)
	case int:
		return strconv.AppendInt(dst, int64(x), 10)
	case int32:
		return strconv.AppendInt(dst, int64(x), 10)
	case uint64:
		return strconv.AppendUint(dst, x, 10)
	case float64:
		return appendFloat(dst, x, 64)
	case float32:
		return appendFloat(dst, float64(x), 32)
	case string:
		return AppendJSONString(dst, x)
	case []byte:
		dst = append(dst, '"')
		n := base64.StdEncoding.EncodedLen(len(x))
		start := len(dst)
		dst = append(dst, make([]byte, n)...)
		base64.StdEncoding.Encode(dst[start:], x)
		return append(dst, '"')
	case Decimal:
		return AppendJSONString(dst, string(x))
	case RawJSON:
		if len(x) == 0 {
			return append(dst, "null"...)
		}
		return append(dst, x...)
	case []Value:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendJSON(dst, e)
		}
		return append(dst, ']')
	case map[string]Value:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendJSONString(dst, k)
			dst = append(dst, ':')
			dst = AppendJSON(dst, x[k])
		}
		return append(dst, '}')
	case Unchanged:
		return append(dst, "null"...)
	default:
		// Unknown kinds are a connector bug; encoding/json keeps the output valid.
		b, err := json.Marshal(x)
		if err != nil {
			return AppendJSONString(dst, "!unencodable: "+err.Error())
		}
		return append(dst, b...)
	}
}

func appendFloat(dst []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(dst, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(dst, `"-Infinity"`...)
	}
	// Shortest representation that round-trips, like encoding/json.
	abs := math.Abs(f)
	fmtc := byte('f')
	if abs != 0 && (bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21)) {
		fmtc = 'e'
	}
	return strconv.AppendFloat(dst, f, fmtc, -1, bits)
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string. Invalid UTF-8 is replaced by
// U+FFFD, as encoding/json does.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain ASCII bytes at a time (most text needs no escaping).
		for i+8 <= len(s) && plain8(s, i) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// plain8 reports whether s[i:i+8] is ASCII without control characters,
// quotes or backslashes: bytes AppendJSONString copies as they are. (SWAR:
// a byte below 0x20 borrows into its high bit; a byte equal to '"' or '\\'
// becomes zero after the XOR and borrows likewise; bytes >= 0x80 have the
// high bit set. A borrow can only flag a byte above a flagged one, so there
// are no false negatives.)
func plain8(s string, i int) bool {
	const lsb, msb = 0x0101010101010101, 0x8080808080808080
	x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
	q := x ^ (lsb * '"')
	b := x ^ (lsb * '\\')
	return (x|(x-lsb*0x20)|(q-lsb)|(b-lsb))&msb == 0
}

// KeyText renders a key value for subjects and document ids: the JSON form,
// without the quotes for strings.
func KeyText(v Value) string {
	switch x := v.(type) {
	case string:
		return x
	case Decimal:
		return string(x)
	case nil:
		return "null"
	}
	b := AppendJSON(nil, v)
	if len(b) >= 2 && b[0] == '"' {
		var s string
		if json.Unmarshal(b, &s) == nil {
			return s
		}
	}
	return string(b)
}

// CloneImage returns a copy of img that shares no memory with it: strings,
// byte slices, decimals, raw JSON, arrays and objects are copied. An Emitter
// that keeps a change past Emit keeps CloneImage of its images
// (capture.Emitter).
func CloneImage(img []Value) []Value {
	if img == nil {
		return nil
	}
	out := make([]Value, len(img))
	for i, v := range img {
		out[i] = cloneValue(v)
	}
	return out
}

func cloneValue(v Value) Value {
	switch x := v.(type) {
	case string:
		return strings.Clone(x)
	case []byte:
		return bytes.Clone(x)
	case Decimal:
		return Decimal(strings.Clone(string(x)))
	case RawJSON:
		return RawJSON(bytes.Clone(x))
	case []Value:
		return CloneImage(x)
	case map[string]Value:
		m := make(map[string]Value, len(x))
		for k, e := range x {
			m[strings.Clone(k)] = cloneValue(e)
		}
		return m
	}
	return v
}
