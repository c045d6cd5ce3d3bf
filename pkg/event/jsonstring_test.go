package event

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestAppendJSONStringFastPathAgrees checks the eight-byte fast path of
// AppendJSONString against a byte-at-a-time reference, on strings that put
// every kind of special byte at every offset of an 8-byte block.
func TestAppendJSONStringFastPathAgrees(t *testing.T) {
	specials := []string{"\"", "\\", "\n", "\x00", "\x1f", "\x7f", " ", "~", "é", "\u2028", "😀", "\xff", "\xe2\x80"}
	var cases []string
	for _, sp := range specials {
		for pre := 0; pre < 17; pre++ {
			for post := 0; post < 9; post += 4 {
				cases = append(cases, strings.Repeat("a", pre)+sp+strings.Repeat("b", post))
			}
		}
	}
	rng := rand.New(rand.NewPCG(7, 9))
	alphabet := []byte("abcXYZ019 !#~\"\\\n\t\x01\x1f\x7f\x80\xc3\xa9\xe2\x80\xa8\xff")
	for n := 0; n < 5000; n++ {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			} else {
				b[i] = byte('a' + rng.IntN(26))
			}
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		got, want := string(AppendJSONString(nil, s)), referenceJSONString(s)
		if got != want {
			t.Fatalf("AppendJSONString(%q) = %s, want %s", s, got, want)
		}
		if utf8.ValidString(s) {
			var back string
			if err := json.Unmarshal([]byte(got), &back); err != nil || back != s {
				t.Fatalf("%s does not decode to %q: %v %q", got, s, err, back)
			}
		}
	}
}

// referenceJSONString is AppendJSONString without the fast path.
func referenceJSONString(s string) string {
	dst := []byte{'"'}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\':
				dst = append(dst, c)
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return string(append(dst, '"'))
}

func BenchmarkAppendJSONString1KB(b *testing.B) {
	s := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 23)
	buf := make([]byte, 0, 2048)
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		buf = AppendJSONString(buf[:0], s)
	}
}
