package postgres

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"

	"github.com/plumecdc/plume/pkg/event"
)

// Key ordering. Snapshot chunks are key ranges whose bounds PostgreSQL
// computes and whose membership Go decides again for stream changes (the
// catch-up rule in checkpoint.go). Both sides must order keys identically,
// so only key columns whose btree order Go reproduces exactly, edge values
// included, are chunked. Per kind: the types (each also through domains),
// the Go comparison, the bound's text form in the checkpoint (rendered by
// the SQL expression in boundExpr, chosen so that no session setting —
// DateStyle, TimeZone, extra_float_digits, bytea_output — changes it) and
// the parameter cast of the chunk query (paramExpr):
//
//	int         smallint, integer, bigint: int64 order. Bound k::text,
//	            parameter ::int8.
//	oid         oid: unsigned 32-bit, held in an int64. Bound k::text,
//	            parameter ::oid.
//	bool        boolean: false < true. Bound k::text ("true"/"false"),
//	            parameter ::bool.
//	text        text, varchar: SQL compares them COLLATE "C", which is UTF-8
//	            byte order = Go string order. Bound k::text, parameter
//	            COLLATE "C".
//	uuid        uuid: PostgreSQL compares the 16 bytes (memcmp); the
//	            canonical lower-case hex text sorts the same way.
//	bytea       bytea: memcmp, then length (bytes.Compare). Bound
//	            encode(k, 'hex'), parameter decode($n, 'hex').
//	numeric     numeric: exact value (math/big.Rat, no float rounding),
//	            -Infinity < every number < Infinity < NaN, NaN = NaN,
//	            1.0 = 1.00. Bound k::text (numeric_out depends on no
//	            setting), parameter ::numeric.
//	date        date: PostgreSQL's own int32 day number (days since
//	            2000-01-01, proleptic Gregorian, so BC dates are negative);
//	            -infinity/infinity are below/above every day. Bound: that
//	            day number, or "infinity"/"-infinity".
//	timestamp   timestamp, timestamptz: PostgreSQL's own int64 microseconds
//	timestamptz since 2000-01-01 00:00 (UTC for timestamptz); ±infinity as
//	            for date. Bound: that number (computed from k::date and
//	            k::time, of k AT TIME ZONE 'UTC' for timestamptz: exact,
//	            unlike extract(epoch), which rounds near the end of the
//	            range), or "infinity"/"-infinity".
//
// The chunk query's parameters for date and timestamps are rendered by Go
// as ISO 8601 text with an explicit +00 offset and a BC suffix
// ("0044-03-15 12:00:00.000000+00 BC"), which PostgreSQL reads the same way
// under every DateStyle and TimeZone.
//
// Composite keys of any mix of these compare lexicographically, like SQL row
// comparison. A key with any other column type (enums, which decode as text
// but sort by label order, floats, char(n), time, interval, arrays, ...) or
// a nullable override column makes the table a single chunk, which needs no
// comparison at all. TestKeyKindOrder checks every kind against
// PostgreSQL's ORDER BY on edge values.
const (
	kindInt         = "int"
	kindOID         = "oid"
	kindBool        = "bool"
	kindText        = "text"
	kindUUID        = "uuid"
	kindBytea       = "bytea"
	kindNumeric     = "numeric"
	kindDate        = "date"
	kindTimestamp   = "timestamp"
	kindTimestamptz = "timestamptz"
)

// keyKindOf returns the comparison kind of a base type OID, or "".
func keyKindOf(baseOID uint32) string {
	switch baseOID {
	case oidInt2, oidInt4, oidInt8:
		return kindInt
	case oidOID:
		return kindOID
	case oidBool:
		return kindBool
	case oidText, oidVarchar:
		return kindText
	case oidUUID:
		return kindUUID
	case oidBytea:
		return kindBytea
	case oidNumeric:
		return kindNumeric
	case oidDate:
		return kindDate
	case oidTimestamp:
		return kindTimestamp
	case oidTimestamptz:
		return kindTimestamptz
	}
	return ""
}

// boundExpr renders key column expression col of a kind as a bound's text.
func boundExpr(kind, col string) string {
	switch kind {
	case kindBytea:
		return "encode(" + col + ", 'hex')"
	case kindDate:
		return "CASE WHEN isfinite(" + col + ") THEN (" + col + " - make_date(2000, 1, 1))::text ELSE " + col + "::text END"
	case kindTimestamp, kindTimestamptz:
		ts := col
		if kind == kindTimestamptz {
			ts = "(" + col + " AT TIME ZONE 'UTC')"
		}
		return "CASE WHEN isfinite(" + col + ") THEN ((" + ts + "::date - make_date(2000, 1, 1))::int8 * 86400000000 + (extract(epoch FROM " +
			ts + "::time) * 1000000)::int8)::text ELSE " + col + "::text END"
	}
	return col + "::text"
}

// paramExpr is the chunk query's expression for text parameter p (e.g.
// "$1") holding a bound rendered by paramText.
func paramExpr(kind, p string) string {
	switch kind {
	case kindInt:
		return p + "::text::int8"
	case kindText:
		return p + `::text COLLATE "C"`
	case kindBytea:
		return "decode(" + p + "::text, 'hex')"
	}
	return p + "::text::" + kind // oid, bool, uuid, numeric, date, timestamp, timestamptz
}

// paramText is the chunk query's parameter text for a bound: the bound's
// text itself, or for dates and timestamps an ISO 8601 rendering.
func paramText(kind, bound string, v keyVal) string {
	switch kind {
	case kindDate, kindTimestamp, kindTimestamptz:
		switch v.i {
		case math.MinInt64:
			return "-infinity"
		case math.MaxInt64:
			return "infinity"
		}
		if kind == kindDate {
			return isoDate(v.i)
		}
		return isoTimestamp(v.i, kind == kindTimestamptz)
	}
	return bound
}

// keyVal is one key column value in comparable form: i for int, oid, bool
// (0/1), date (days), timestamps (microseconds) and numeric (its class);
// s for text, uuid and bytea (the raw bytes); r for finite numerics.
type keyVal struct {
	i int64
	s string
	r *big.Rat
}

// Numeric classes, in PostgreSQL's order.
const (
	numNegInf int64 = iota - 1
	numFinite
	numPosInf
	numNaN
)

func parseKeyText(kind, s string) (keyVal, error) {
	switch kind {
	case kindInt, kindOID:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return keyVal{}, fmt.Errorf("%s key %q: %w", kind, s, err)
		}
		return keyVal{i: i}, nil
	case kindBool:
		switch s {
		case "true", "t":
			return keyVal{i: 1}, nil
		case "false", "f":
			return keyVal{i: 0}, nil
		}
		return keyVal{}, fmt.Errorf("bool key %q", s)
	case kindText:
		return keyVal{s: s}, nil
	case kindUUID:
		return keyVal{s: strings.ToLower(s)}, nil
	case kindBytea:
		b, err := hex.DecodeString(s)
		if err != nil {
			return keyVal{}, fmt.Errorf("bytea key %q: %w", s, err)
		}
		return keyVal{s: string(b)}, nil
	case kindNumeric:
		if v, ok := numericKey(s); ok {
			return v, nil
		}
		return keyVal{}, fmt.Errorf("numeric key %q", s)
	case kindDate, kindTimestamp, kindTimestamptz:
		switch s {
		case "-infinity":
			return keyVal{i: math.MinInt64}, nil
		case "infinity":
			return keyVal{i: math.MaxInt64}, nil
		}
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil || i == math.MinInt64 || i == math.MaxInt64 {
			return keyVal{}, fmt.Errorf("%s key %q", kind, s)
		}
		return keyVal{i: i}, nil
	}
	return keyVal{}, fmt.Errorf("unknown key kind %q", kind)
}

// keyValOf converts a decoded event value (types.go, timefmt.go); ok is
// false when the value is missing (NULL, unchanged TOAST) or of an
// unexpected form.
func keyValOf(kind string, v event.Value) (keyVal, bool) {
	switch kind {
	case kindInt, kindOID:
		if i, ok := v.(int64); ok {
			return keyVal{i: i}, true
		}
	case kindBool:
		if b, ok := v.(bool); ok {
			if b {
				return keyVal{i: 1}, true
			}
			return keyVal{i: 0}, true
		}
	case kindText, kindUUID:
		if s, ok := v.(string); ok {
			if kind == kindUUID {
				s = strings.ToLower(s)
			}
			return keyVal{s: s}, true
		}
	case kindBytea:
		if b, ok := v.([]byte); ok {
			return keyVal{s: string(b)}, true
		}
	case kindNumeric:
		if d, ok := v.(event.Decimal); ok {
			return numericKey(string(d))
		}
	case kindDate, kindTimestamp, kindTimestamptz:
		s, ok := v.(string)
		if !ok {
			break
		}
		switch s {
		case "-infinity":
			return keyVal{i: math.MinInt64}, true
		case "infinity":
			return keyVal{i: math.MaxInt64}, true
		}
		if kind == kindDate {
			d, ok := parseISODate(s)
			return keyVal{i: d}, ok
		}
		us, ok := parseISOTimestamp(s, kind == kindTimestamptz)
		return keyVal{i: us}, ok
	}
	return keyVal{}, false
}

// numericKey parses numeric_out text: [-]digits[.digits], NaN, Infinity,
// -Infinity.
func numericKey(s string) (keyVal, bool) {
	switch s {
	case "NaN":
		return keyVal{i: numNaN}, true
	case "Infinity":
		return keyVal{i: numPosInf}, true
	case "-Infinity":
		return keyVal{i: numNegInf}, true
	}
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || digits[0] == '.' || digits[len(digits)-1] == '.' {
		return keyVal{}, false
	}
	dot := false
	for i := 0; i < len(digits); i++ {
		switch c := digits[i]; {
		case c >= '0' && c <= '9':
		case c == '.' && !dot:
			dot = true
		default:
			return keyVal{}, false
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return keyVal{}, false
	}
	return keyVal{i: numFinite, r: r}, true
}

func compareKey(kinds []string, a, b []keyVal) int {
	for i, k := range kinds {
		var c int
		switch k {
		case kindText, kindUUID, kindBytea:
			c = strings.Compare(a[i].s, b[i].s)
		case kindNumeric:
			c = cmpInt(a[i].i, b[i].i)
			if c == 0 && a[i].i == numFinite {
				c = a[i].r.Cmp(b[i].r)
			}
		default:
			c = cmpInt(a[i].i, b[i].i)
		}
		if c != 0 {
			return c
		}
	}
	return 0
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// chunkOf returns the chunk holding key: the first chunk whose upper bound
// is >= key, or the last (unbounded) chunk.
func (t *snapTable) chunkOf(key []keyVal) int {
	return sort.Search(len(t.bounds), func(i int) bool {
		return compareKey(t.Kinds, t.bounds[i], key) >= 0
	})
}

// Calendar arithmetic in PostgreSQL's terms: day 0 is 2000-01-01 of the
// proleptic Gregorian calendar, year 0 is 1 BC (astronomical numbering).

const (
	usPerDay     = 86400 * 1000000
	unixToPGDays = 10957 // days from 1970-01-01 to 2000-01-01
)

// daysFromCivil returns the day number of y-m-d (H. Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468 - unixToPGDays
}

// civilFromDays is the inverse of daysFromCivil.
func civilFromDays(z int64) (y, m, d int64) {
	z += 719468 + unixToPGDays
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	m = mp + 3
	if m > 12 {
		m -= 12
	}
	if m <= 2 {
		y++
	}
	return y, m, d
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// parseISODate parses decodeDate's output: [-]YYYY-MM-DD (astronomical
// year, four or more digits).
func parseISODate(s string) (int64, bool) {
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	i := strings.IndexByte(s, '-')
	if i < 4 || len(s) != i+6 || s[i+3] != '-' {
		return 0, false
	}
	y, err1 := strconv.ParseInt(s[:i], 10, 64)
	m, err2 := strconv.ParseInt(s[i+1:i+3], 10, 64)
	d, err3 := strconv.ParseInt(s[i+4:], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || m < 1 || m > 12 || d < 1 || d > 31 || y > 1e7 {
		return 0, false
	}
	if neg {
		y = -y
	}
	return daysFromCivil(y, m, d), true
}

// parseISOTimestamp parses decodeTimestamp(tz)'s output:
// [-]YYYY-MM-DDTHH:MM:SS.ffffff, with a trailing Z for timestamptz.
func parseISOTimestamp(s string, tz bool) (int64, bool) {
	if tz {
		var ok bool
		if s, ok = strings.CutSuffix(s, "Z"); !ok {
			return 0, false
		}
	}
	date, clock, ok := strings.Cut(s, "T")
	if !ok {
		return 0, false
	}
	days, ok := parseISODate(date)
	if !ok {
		return 0, false
	}
	h, mi, sec, us, rest, err := parseClock(clock)
	if err != nil || rest != "" {
		return 0, false
	}
	return days*usPerDay + ((int64(h)*60+int64(mi))*60+int64(sec))*1000000 + int64(us), true
}

// isoDate renders day number days as PostgreSQL date input: YYYY-MM-DD,
// with " BC" for years before 1 AD.
func isoDate(days int64) string {
	y, m, d := civilFromDays(days)
	var b []byte
	bc := y <= 0
	if bc {
		y = 1 - y
	}
	b = appendPad(b, int(y), 4)
	b = append(b, '-')
	b = appendPad(b, int(m), 2)
	b = append(b, '-')
	b = appendPad(b, int(d), 2)
	if bc {
		b = append(b, " BC"...)
	}
	return string(b)
}

// isoTimestamp renders microseconds since 2000-01-01 as PostgreSQL
// timestamp input: "YYYY-MM-DD HH:MM:SS.ffffff[+00][ BC]".
func isoTimestamp(us int64, tz bool) string {
	days := floorDiv(us, usPerDay)
	t := us - days*usPerDay
	date := isoDate(days)
	date, bc := strings.CutSuffix(date, " BC")
	b := append([]byte(date), ' ')
	b = appendClock(b, int(t/3600000000), int(t/60000000%60), int(t/1000000%60), int(t%1000000))
	if tz {
		b = append(b, "+00"...)
	}
	if bc {
		b = append(b, " BC"...)
	}
	return string(b)
}
