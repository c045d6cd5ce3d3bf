package mysql

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/encoding/unicode"
	"golang.org/x/text/encoding/unicode/utf32"
)

// The binlog carries character data in the column's own character set (the
// TABLE_MAP's column charset metadata names its collation id). Plume renders
// all text as UTF-8, so non-UTF-8 charsets are decoded here. A snapshot reads
// through a utf8mb4 connection, where the server converts.

// textDecoder turns raw column bytes into a UTF-8 string.
type textDecoder func(b []byte) string

// latin1ToUnicode is MySQL's latin1, which is Windows-1252 with the five
// bytes that cp1252 leaves undefined mapped to the C1 controls (as MySQL's
// own conversion table does), so every byte decodes.
var latin1High = [32]rune{
	0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
	0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
}

func decodeLatin1(b []byte) string {
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + len(b)/2)
	for _, c := range b {
		switch {
		case c < 0x80:
			sb.WriteByte(c)
		case c < 0xA0:
			sb.WriteRune(latin1High[c-0x80])
		default:
			sb.WriteRune(rune(c))
		}
	}
	return sb.String()
}

func xtext(e encoding.Encoding) textDecoder {
	return func(b []byte) string {
		out, err := e.NewDecoder().Bytes(b)
		if err != nil {
			return strings.ToValidUTF8(string(b), string(utf8.RuneError))
		}
		return string(out)
	}
}

// charsetDecoders maps MySQL/MariaDB character set names to decoders. A nil
// decoder means the bytes are UTF-8 already (colType.fromBinlog).
var charsetDecoders = map[string]textDecoder{
	"utf8mb4":  nil,
	"utf8mb3":  nil,
	"utf8":     nil,
	"ascii":    nil,
	"latin1":   decodeLatin1,
	"latin2":   xtext(charmap.ISO8859_2),
	"latin5":   xtext(charmap.ISO8859_9),
	"latin7":   xtext(charmap.ISO8859_13),
	"greek":    xtext(charmap.ISO8859_7),
	"hebrew":   xtext(charmap.ISO8859_8),
	"cp1250":   xtext(charmap.Windows1250),
	"cp1251":   xtext(charmap.Windows1251),
	"cp1256":   xtext(charmap.Windows1256),
	"cp1257":   xtext(charmap.Windows1257),
	"cp850":    xtext(charmap.CodePage850),
	"cp852":    xtext(charmap.CodePage852),
	"cp866":    xtext(charmap.CodePage866),
	"koi8r":    xtext(charmap.KOI8R),
	"koi8u":    xtext(charmap.KOI8U),
	"macroman": xtext(charmap.Macintosh),
	"tis620":   xtext(charmap.Windows874),
	"sjis":     xtext(japanese.ShiftJIS),
	"cp932":    xtext(japanese.ShiftJIS),
	"ujis":     xtext(japanese.EUCJP),
	"eucjpms":  xtext(japanese.EUCJP),
	"euckr":    xtext(korean.EUCKR),
	"gb2312":   xtext(simplifiedchinese.GBK),
	"gbk":      xtext(simplifiedchinese.GBK),
	"gb18030":  xtext(simplifiedchinese.GB18030),
	"big5":     xtext(traditionalchinese.Big5),
	"ucs2":     xtext(unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM)),
	"utf16":    xtext(unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM)),
	"utf16le":  xtext(unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM)),
	"utf32":    xtext(utf32.UTF32(utf32.BigEndian, utf32.IgnoreBOM)),
}

// defaultCollations is used when information_schema.COLLATIONS cannot be
// read: the ids of the collations most tables use.
var defaultCollations = map[uint64]string{
	8: "latin1", 5: "latin1", 31: "latin1", 47: "latin1", 48: "latin1", 49: "latin1", 94: "latin1",
	11: "ascii", 65: "ascii",
	33: "utf8mb3", 83: "utf8mb3", 192: "utf8mb3", 223: "utf8mb3",
	45: "utf8mb4", 46: "utf8mb4", 224: "utf8mb4", 255: "utf8mb4",
	63: "binary",
}
