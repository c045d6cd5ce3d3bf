package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/plumecdc/plume/pkg/event"
)

// Type fidelity. pgoutput sends every value in its type's text output form,
// and snapshots read the same text (all result columns in text format), so
// one decoder per type OID serves both paths. The text forms are pinned by
// the session parameters every connection sets (conn.go): DateStyle ISO,
// IntervalStyle iso_8601, TimeZone UTC, extra_float_digits 1, bytea_output
// hex, lc_monetary C. docs/types-postgres.md lists every mapping.

// Built-in type OIDs (fixed in pg_type.dat).
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidXID         = 28
	oidCID         = 29
	oidJSON        = 114
	oidXML         = 142
	oidCIDR        = 650
	oidFloat4      = 700
	oidFloat8      = 701
	oidMacaddr8    = 774
	oidMoney       = 790
	oidMacaddr     = 829
	oidInet        = 869
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidTimetz      = 1266
	oidBit         = 1560
	oidVarbit      = 1562
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

// decoder converts one value's text form to an event.Value.
type decoder func(text []byte) (event.Value, error)

// pgType is what Plume knows about a type OID.
type pgType struct {
	oid  uint32
	base uint32 // the built-in type it decodes as (domains resolved)
	dec  decoder
}

// builtinDecoders maps scalar built-in OIDs to their decoders. Types not
// listed here are resolved through pg_type (typeRegistry.lookup).
var builtinDecoders = map[uint32]decoder{
	oidBool:        decodeBool,
	oidBytea:       decodeBytea,
	oidChar:        decodeString,
	oidName:        decodeString,
	oidInt8:        decodeInt,
	oidInt2:        decodeInt,
	oidInt4:        decodeInt,
	oidOID:         decodeInt,
	oidXID:         decodeInt,
	oidCID:         decodeInt,
	oidText:        decodeString,
	oidJSON:        decodeString,
	oidJSONB:       decodeString,
	oidXML:         decodeString,
	oidCIDR:        decodeString,
	oidInet:        decodeString,
	oidMacaddr:     decodeString,
	oidMacaddr8:    decodeString,
	oidFloat4:      decodeFloat,
	oidFloat8:      decodeFloat,
	oidMoney:       decodeMoney,
	oidBpchar:      decodeString,
	oidVarchar:     decodeString,
	oidDate:        decodeDate,
	oidTime:        decodeTime,
	oidTimetz:      decodeTimetz,
	oidTimestamp:   decodeTimestamp,
	oidTimestamptz: decodeTimestamptz,
	oidInterval:    decodeString, // iso_8601 style: P1Y2M3DT4H5M6.5S
	oidBit:         decodeString,
	oidVarbit:      decodeString,
	oidNumeric:     decodeNumeric,
	oidUUID:        decodeString,
}

// typeRegistry resolves type OIDs, caching catalog lookups. It is safe for
// concurrent use; lookups run on the connection given to resolve.
type typeRegistry struct {
	mu    sync.Mutex
	types map[uint32]*pgType
}

func newTypeRegistry() *typeRegistry {
	return &typeRegistry{types: map[uint32]*pgType{}}
}

// querier is the part of *pgx.Conn the catalog code needs.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// resolve returns the type for oid, reading pg_type through q if needed.
func (r *typeRegistry) resolve(ctx context.Context, q querier, oid uint32) (*pgType, error) {
	r.mu.Lock()
	t := r.types[oid]
	r.mu.Unlock()
	if t != nil {
		return t, nil
	}
	t, err := r.lookup(ctx, q, oid, 0)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.types[oid] = t
	r.mu.Unlock()
	return t, nil
}

func (r *typeRegistry) lookup(ctx context.Context, q querier, oid uint32, depth int) (*pgType, error) {
	if d, ok := builtinDecoders[oid]; ok {
		return &pgType{oid: oid, base: oid, dec: d}, nil
	}
	if depth > 10 {
		return nil, fmt.Errorf("postgres: type %d: domain/array nesting too deep", oid)
	}
	var (
		typtype, typcategory string
		typname              string
		basetype, elem       uint32
		typlen               int16
		delim                string
	)
	err := q.QueryRow(ctx, `SELECT typtype::text, typcategory::text, typname::text, typbasetype, typelem, typlen, typdelim::text
		FROM pg_catalog.pg_type WHERE oid = $1`, oid).
		Scan(&typtype, &typcategory, &typname, &basetype, &elem, &typlen, &delim)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			// A type dropped since: keep the text.
			return &pgType{oid: oid, base: oidText, dec: decodeString}, nil
		}
		return nil, fmt.Errorf("postgres: looking up type %d: %w", oid, err)
	}
	switch {
	case typtype == "d": // domain: decode as its base type
		bt, err := r.lookup(ctx, q, basetype, depth+1)
		if err != nil {
			return nil, err
		}
		return &pgType{oid: oid, base: bt.base, dec: bt.dec}, nil
	case typtype == "e": // enum: the label
		return &pgType{oid: oid, base: oidText, dec: decodeString}, nil
	case typcategory == "A" && elem != 0 && typlen == -1: // array
		et, err := r.lookup(ctx, q, elem, depth+1)
		if err != nil {
			return nil, err
		}
		d := byte(',')
		if len(delim) == 1 {
			d = delim[0]
		}
		edec := et.dec
		return &pgType{oid: oid, base: oid, dec: func(b []byte) (event.Value, error) {
			return parseArray(string(b), d, edec)
		}}, nil
	case typname == "hstore":
		return &pgType{oid: oid, base: oid, dec: decodeHstore}, nil
	}
	// Ranges, multiranges, composites, geometric and other types: the text
	// form as a string.
	return &pgType{oid: oid, base: oid, dec: decodeString}, nil
}

func decodeString(b []byte) (event.Value, error) { return string(b), nil }

func decodeBool(b []byte) (event.Value, error) {
	switch string(b) {
	case "t", "true":
		return true, nil
	case "f", "false":
		return false, nil
	}
	return nil, fmt.Errorf("invalid boolean %q", b)
}

func decodeInt(b []byte) (event.Value, error) {
	i, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("invalid integer %q", b)
	}
	return i, nil
}

func decodeFloat(b []byte) (event.Value, error) {
	switch string(b) {
	case "NaN":
		return math.NaN(), nil
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return nil, fmt.Errorf("invalid float %q", b)
	}
	return f, nil
}

// decodeNumeric keeps numeric's exact text: digits, "NaN", "Infinity",
// "-Infinity".
func decodeNumeric(b []byte) (event.Value, error) { return event.Decimal(b), nil }

// decodeMoney parses money output with lc_monetary=C: "$1,234.56",
// "-$1,234.56". Currency symbol and group separators are dropped.
func decodeMoney(b []byte) (event.Value, error) {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9', c == '.', c == '-':
			out = append(out, c)
		case c == '$', c == ',', c == ' ':
		case c == '(' || c == ')':
			// some locales render negatives in parentheses
			if c == '(' {
				out = append(out, '-')
			}
		default:
			return nil, fmt.Errorf("invalid money %q (is lc_monetary C?)", b)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("invalid money %q", b)
	}
	return event.Decimal(out), nil
}

func decodeBytea(b []byte) (event.Value, error) {
	if len(b) < 2 || b[0] != '\\' || b[1] != 'x' {
		return nil, fmt.Errorf("bytea not in hex format (bytea_output must be hex)")
	}
	out := make([]byte, hex.DecodedLen(len(b)-2))
	if _, err := hex.Decode(out, b[2:]); err != nil {
		return nil, fmt.Errorf("invalid bytea hex: %w", err)
	}
	return out, nil
}

// parseArray parses an array's text form ({1,2,NULL}, {"a b","c\"d"},
// {{1,2},{3,4}}, [0:1]={1,2}) into nested []event.Value, decoding each
// element with elem.
func parseArray(s string, delim byte, elem decoder) (event.Value, error) {
	if strings.HasPrefix(s, "[") { // explicit bounds: [l:u]...=
		i := strings.IndexByte(s, '=')
		if i < 0 {
			return nil, fmt.Errorf("invalid array %q", s)
		}
		s = s[i+1:]
	}
	p := arrayParser{s: s, delim: delim, elem: elem}
	v, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("invalid array %.100q: %w", s, err)
	}
	if p.i != len(p.s) {
		return nil, fmt.Errorf("invalid array %.100q: trailing text", s)
	}
	return v, nil
}

type arrayParser struct {
	s     string
	i     int
	delim byte
	elem  decoder
	buf   []byte
}

func (p *arrayParser) parse() ([]event.Value, error) {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return nil, errors.New("expected {")
	}
	p.i++
	out := []event.Value{}
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return out, nil
	}
	for {
		p.skipSpace()
		if p.i >= len(p.s) {
			return nil, errors.New("unterminated")
		}
		switch c := p.s[p.i]; {
		case c == '{':
			sub, err := p.parse()
			if err != nil {
				return nil, err
			}
			out = append(out, sub)
		case c == '"':
			p.i++
			p.buf = p.buf[:0]
			for {
				if p.i >= len(p.s) {
					return nil, errors.New("unterminated quoted element")
				}
				c := p.s[p.i]
				p.i++
				if c == '\\' && p.i < len(p.s) {
					p.buf = append(p.buf, p.s[p.i])
					p.i++
					continue
				}
				if c == '"' {
					break
				}
				p.buf = append(p.buf, c)
			}
			v, err := p.elem(append([]byte(nil), p.buf...))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		default:
			start := p.i
			for p.i < len(p.s) && p.s[p.i] != p.delim && p.s[p.i] != '}' {
				p.i++
			}
			tok := strings.TrimSpace(p.s[start:p.i])
			if strings.EqualFold(tok, "NULL") {
				out = append(out, nil)
				break
			}
			v, err := p.elem([]byte(tok))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		p.skipSpace()
		if p.i >= len(p.s) {
			return nil, errors.New("unterminated")
		}
		switch p.s[p.i] {
		case p.delim:
			p.i++
		case '}':
			p.i++
			return out, nil
		default:
			return nil, fmt.Errorf("unexpected %q", p.s[p.i])
		}
	}
}

func (p *arrayParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == '\n' || p.s[p.i] == '\r') {
		p.i++
	}
}

// decodeHstore parses hstore output: "k"=>"v", "k2"=>NULL.
func decodeHstore(b []byte) (event.Value, error) {
	s := string(b)
	out := map[string]event.Value{}
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == ',') {
			i++
		}
	}
	quoted := func() (string, error) {
		if i >= len(s) || s[i] != '"' {
			return "", fmt.Errorf("invalid hstore %.100q: expected quote at %d", s, i)
		}
		i++
		var sb strings.Builder
		for {
			if i >= len(s) {
				return "", fmt.Errorf("invalid hstore %.100q: unterminated string", s)
			}
			c := s[i]
			i++
			if c == '\\' && i < len(s) {
				sb.WriteByte(s[i])
				i++
				continue
			}
			if c == '"' {
				return sb.String(), nil
			}
			sb.WriteByte(c)
		}
	}
	for skip(); i < len(s); skip() {
		k, err := quoted()
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(s[i:], "=>") {
			return nil, fmt.Errorf("invalid hstore %.100q: expected => at %d", s, i)
		}
		i += 2
		if strings.HasPrefix(s[i:], "NULL") {
			out[k] = nil
			i += 4
			continue
		}
		v, err := quoted()
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}
