package router

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// envParser decodes the parts of the Debezium envelope the router reads
// ("before", "after", "unchanged"), skipping the rest. It yields exactly
// what encoding/json's Decoder with UseNumber followed by convertNumbers
// yields (objects as map[string]any, arrays as []any, strings with invalid
// UTF-8 and lone surrogates replaced by U+FFFD, numbers per convertNumber);
// TestParserMatchesEncodingJSON and FuzzParser hold it to that. It exists
// because it is several times faster than encoding/json on the hot path,
// chiefly by not scanning the input twice and by interning column names.
//
// An envParser is reused from record to record; it is not safe for
// concurrent use.
type envParser struct {
	data   []byte
	pos    int
	depth  int
	buf    []byte            // unescaping scratch
	intern map[string]string // object keys seen before (column names)
	hint   int               // the size of the last row image, to size the next
}

const (
	maxDepth     = 10000 // as encoding/json
	maxInterned  = 4096  // bounds the key cache
	maxKeyIntern = 64    // longer keys are not interned
)

type syntaxError struct {
	msg string
	off int
}

func (e *syntaxError) Error() string { return fmt.Sprintf("%s at offset %d", e.msg, e.off) }

func (p *envParser) fail(msg string) error { return &syntaxError{msg: msg, off: p.pos} }

// envelope parses data, a JSON object, decoding the parts in want
// (needBefore, needAfter, needUnchanged) and checking the syntax of the rest.
func (p *envParser) envelope(data []byte, want needs) (env envelope, err error) {
	p.data, p.pos, p.depth = data, 0, 1 // the envelope counts, as in encoding/json
	defer func() { p.data = nil }()
	p.ws()
	if !p.consume('{') {
		return env, p.fail("envelope is not a JSON object")
	}
	p.ws()
	if p.consume('}') {
		return env, p.end()
	}
	for {
		p.ws()
		if p.peek() != '"' {
			return env, p.fail("expected object key")
		}
		key, err := p.rawKey()
		if err != nil {
			return env, err
		}
		p.ws()
		if !p.consume(':') {
			return env, p.fail("expected ':'")
		}
		p.ws()
		switch {
		case key == "before" && want&needBefore == 0,
			key == "after" && want&needAfter == 0,
			key == "unchanged" && want&needUnchanged == 0:
			key = ""
		}
		switch key {
		case "before", "after":
			var m map[string]any
			switch p.peek() {
			case 'n':
				if err := p.literal("null"); err != nil {
					return env, err
				}
			case '{':
				p.pos++
				// A repeated key adds to the map, as encoding/json does.
				into := env.Before
				if key == "after" {
					into = env.After
				}
				if into == nil {
					into = make(map[string]any, p.hint)
				}
				if m, err = p.object(into); err != nil {
					return env, err
				}
				p.hint = len(m)
			default:
				return env, p.fail("envelope " + key + " is neither an object nor null")
			}
			if key == "before" {
				env.Before = m
			} else {
				env.After = m
			}
		case "unchanged":
			if env.Unchanged, err = p.stringArray(); err != nil {
				return env, err
			}
		default:
			if err := p.skip(); err != nil {
				return env, err
			}
		}
		p.ws()
		if p.consume(',') {
			continue
		}
		if p.consume('}') {
			return env, p.end()
		}
		return env, p.fail("expected ',' or '}'")
	}
}

func (p *envParser) end() error {
	p.ws()
	if p.pos != len(p.data) {
		return p.fail("data after the envelope")
	}
	return nil
}

func (p *envParser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *envParser) peek() byte {
	if p.pos < len(p.data) {
		return p.data[p.pos]
	}
	return 0
}

func (p *envParser) consume(c byte) bool {
	if p.pos < len(p.data) && p.data[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

func (p *envParser) literal(lit string) error {
	if len(p.data)-p.pos >= len(lit) && string(p.data[p.pos:p.pos+len(lit)]) == lit {
		p.pos += len(lit)
		return nil
	}
	return p.fail("invalid literal")
}

// value parses any JSON value.
func (p *envParser) value() (any, error) {
	switch c := p.peek(); c {
	case '{':
		p.pos++
		return p.object(nil)
	case '[':
		p.pos++
		return p.array()
	case '"':
		return p.str()
	case 't':
		return true, p.literal("true")
	case 'f':
		return false, p.literal("false")
	case 'n':
		return nil, p.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return p.number()
		}
		return nil, p.fail("unexpected character")
	}
}

// object parses an object after its '{', into m if it is not nil.
func (p *envParser) object(m map[string]any) (map[string]any, error) {
	if p.depth++; p.depth > maxDepth {
		return nil, p.fail("exceeded max depth")
	}
	defer func() { p.depth-- }()
	if m == nil {
		m = map[string]any{}
	}
	p.ws()
	if p.consume('}') {
		return m, nil
	}
	for {
		p.ws()
		if p.peek() != '"' {
			return nil, p.fail("expected object key")
		}
		k, err := p.key()
		if err != nil {
			return nil, err
		}
		p.ws()
		if !p.consume(':') {
			return nil, p.fail("expected ':'")
		}
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		m[k] = v
		p.ws()
		if p.consume(',') {
			continue
		}
		if p.consume('}') {
			return m, nil
		}
		return nil, p.fail("expected ',' or '}'")
	}
}

// array parses an array after its '['.
func (p *envParser) array() ([]any, error) {
	if p.depth++; p.depth > maxDepth {
		return nil, p.fail("exceeded max depth")
	}
	defer func() { p.depth-- }()
	a := []any{}
	p.ws()
	if p.consume(']') {
		return a, nil
	}
	for {
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.ws()
		if p.consume(',') {
			continue
		}
		if p.consume(']') {
			return a, nil
		}
		return nil, p.fail("expected ',' or ']'")
	}
}

// stringArray parses null or an array of strings (the envelope's
// "unchanged").
func (p *envParser) stringArray() ([]string, error) {
	if p.peek() == 'n' {
		return nil, p.literal("null")
	}
	if !p.consume('[') {
		return nil, p.fail("envelope unchanged is not an array")
	}
	s := []string{}
	p.ws()
	if p.consume(']') {
		return s, nil
	}
	for {
		p.ws()
		var v string
		switch p.peek() {
		case '"':
			var err error
			if v, err = p.key(); err != nil {
				return nil, err
			}
		case 'n': // null: encoding/json leaves the element ""
			if err := p.literal("null"); err != nil {
				return nil, err
			}
		default:
			return nil, p.fail("envelope unchanged holds a non-string")
		}
		s = append(s, v)
		p.ws()
		if p.consume(',') {
			continue
		}
		if p.consume(']') {
			return s, nil
		}
		return nil, p.fail("expected ',' or ']'")
	}
}

// rawString scans a string at p.pos and returns its contents, unescaped and
// with invalid UTF-8 replaced; the result aliases p.data or p.buf and is
// valid until the next call.
func (p *envParser) rawString() ([]byte, error) {
	p.pos++ // the opening quote
	start := p.pos
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			s := p.data[start:p.pos]
			p.pos++
			return s, nil
		case c == '\\' || c >= utf8.RuneSelf:
			if c >= utf8.RuneSelf {
				if r, size := utf8.DecodeRune(p.data[p.pos:]); r != utf8.RuneError || size != 1 {
					p.pos += size
					continue
				}
			}
			return p.slowString(start)
		case c < 0x20:
			return nil, p.fail("control character in string")
		default:
			p.pos++
		}
	}
	return nil, p.fail("unterminated string")
}

// slowString continues a string that has escapes or invalid UTF-8; the part
// from start to p.pos is plain.
func (p *envParser) slowString(start int) ([]byte, error) {
	b := append(p.buf[:0], p.data[start:p.pos]...)
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			p.buf = b
			return b, nil
		case c == '\\':
			if p.pos+1 >= len(p.data) {
				return nil, p.fail("unterminated string")
			}
			e := p.data[p.pos+1]
			p.pos += 2
			switch e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := p.hex4()
				if !ok {
					return nil, p.fail("invalid \\u escape")
				}
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if save := p.pos; p.pos+1 < len(p.data) && p.data[p.pos] == '\\' && p.data[p.pos+1] == 'u' {
						p.pos += 2
						var ok2 bool
						if r2, ok2 = p.hex4(); !ok2 {
							return nil, p.fail("invalid \\u escape")
						}
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							b = utf8.AppendRune(b, dec)
							continue
						}
						p.pos = save // not a pair: the second escape stands alone
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
			default:
				return nil, p.fail("invalid escape")
			}
		case c < 0x20:
			return nil, p.fail("control character in string")
		case c < utf8.RuneSelf:
			b = append(b, c)
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, p.data[p.pos:p.pos+size]...)
			}
			p.pos += size
		}
	}
	return nil, p.fail("unterminated string")
}

func (p *envParser) hex4() (rune, bool) {
	if len(p.data)-p.pos < 4 {
		return 0, false
	}
	var r rune
	for _, c := range p.data[p.pos : p.pos+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	p.pos += 4
	return r, true
}

func (p *envParser) str() (string, error) {
	b, err := p.rawString()
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// key parses a string that is likely to repeat from record to record (an
// object key), interning it.
func (p *envParser) key() (string, error) {
	b, err := p.rawString()
	if err != nil {
		return "", err
	}
	if len(b) > maxKeyIntern {
		return string(b), nil
	}
	if s, ok := p.intern[string(b)]; ok {
		return s, nil
	}
	s := string(b)
	if p.intern == nil {
		p.intern = make(map[string]string, 64)
	}
	if len(p.intern) < maxInterned {
		p.intern[s] = s
	}
	return s, nil
}

// rawKey parses a top-level envelope key and returns "before", "after",
// "unchanged" or "" for other keys, without allocating. Like encoding/json
// it prefers an exact match and falls back to a case-insensitive one.
func (p *envParser) rawKey() (string, error) {
	b, err := p.rawString()
	if err != nil {
		return "", err
	}
	for _, k := range envelopeKeys {
		if string(b) == k {
			return k, nil
		}
	}
	for _, k := range envelopeKeys {
		if bytes.EqualFold(b, []byte(k)) {
			return k, nil
		}
	}
	return "", nil
}

var envelopeKeys = [...]string{"before", "after", "unchanged"}

// number parses a JSON number and converts it with convertNumber.
func (p *envParser) number() (any, error) {
	b, integer, err := p.scanNumber()
	if err != nil {
		return nil, err
	}
	if integer && len(b) <= 18 { // fits int64 whatever the digits
		var n int64
		neg := b[0] == '-'
		if neg {
			b = b[1:]
		}
		for _, c := range b {
			n = n*10 + int64(c-'0')
		}
		if neg {
			n = -n
		}
		return n, nil
	}
	return convertNumber(json.Number(b)), nil
}

// scanNumber scans a JSON number and reports whether it is an integer (no
// fraction, no exponent).
func (p *envParser) scanNumber() (b []byte, integer bool, err error) {
	start := p.pos
	integer = true
	p.consume('-')
	switch c := p.peek(); {
	case c == '0':
		p.pos++
	case c >= '1' && c <= '9':
		p.digits()
	default:
		return nil, false, p.fail("invalid number")
	}
	if p.consume('.') {
		integer = false
		if p.digits() == 0 {
			return nil, false, p.fail("invalid number")
		}
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		integer = false
		p.pos++
		if c := p.peek(); c == '+' || c == '-' {
			p.pos++
		}
		if p.digits() == 0 {
			return nil, false, p.fail("invalid number")
		}
	}
	return p.data[start:p.pos], integer, nil
}

func (p *envParser) digits() int {
	n := 0
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
		p.pos++
		n++
	}
	return n
}

// skip skips a value, checking its syntax.
func (p *envParser) skip() error {
	switch c := p.peek(); c {
	case '{', '[':
		close := byte('}')
		if c == '[' {
			close = ']'
		}
		if p.depth++; p.depth > maxDepth {
			return p.fail("exceeded max depth")
		}
		defer func() { p.depth-- }()
		p.pos++
		p.ws()
		if p.consume(close) {
			return nil
		}
		for {
			p.ws()
			if c == '{' {
				if p.peek() != '"' {
					return p.fail("expected object key")
				}
				if _, err := p.rawString(); err != nil {
					return err
				}
				p.ws()
				if !p.consume(':') {
					return p.fail("expected ':'")
				}
				p.ws()
			}
			if err := p.skip(); err != nil {
				return err
			}
			p.ws()
			if p.consume(',') {
				continue
			}
			if p.consume(close) {
				return nil
			}
			return p.fail("expected ',' or '" + string(close) + "'")
		}
	case '"':
		_, err := p.rawString()
		return err
	case 't':
		return p.literal("true")
	case 'f':
		return p.literal("false")
	case 'n':
		return p.literal("null")
	}
	_, _, err := p.scanNumber()
	return err
}
