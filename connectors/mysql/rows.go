package mysql

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unsafe"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/plumecdc/plume/pkg/event"
)

// Direct row decoding: rows events of Plume's own decoding, straight from the
// packet into event values.
//
// go-mysql's RowsEvent.decodeImage builds a fresh []any per row image, boxes
// every value in go-mysql's own type (int32, []byte, ...), and grows
// e.Rows and e.SkippedColumns per row; colType.fromBinlog then boxes most
// values a second time. At 100-byte rows that was about half of what the
// MySQL source allocated per event (bench/README.md). Here each value is read
// from the packet once and boxed once, as its event type, into an image the
// streamer reuses for every row (capture.Emitter keeps no image).
//
// Which events: the reader (rowsDecoder) leaves the row data of a captured
// table's plain rows event undecoded when every column of its table map has a
// type this file decodes (directType); the streamer decodes it (rowImages).
// Everything else (MySQL's binary JSON, the pre-5.6 temporal and DECIMAL
// formats, VECTOR, MySQL partial JSON updates, MariaDB compressed rows
// events, rows inside MySQL transaction payloads) goes through go-mysql's
// decoder as before. Both paths render every value identically:
// TestDirectRowsMatchGoMySQL decodes the same events both ways.

// binCol is a column's binlog encoding, from its TABLE_MAP type and metadata.
type binCol struct {
	typ    byte   // the real type: CHAR, BINARY, ENUM and SET travel as MYSQL_TYPE_STRING
	meta   uint16 // the TABLE_MAP metadata
	length int    // MYSQL_TYPE_STRING: the byte length of CHAR/BINARY, the pack length of ENUM/SET
	direct bool   // decodable here (directType)
}

// directType resolves a column's binlog encoding and whether this file
// decodes it.
func directType(typ byte, meta uint16) binCol {
	bc := binCol{typ: typ, meta: meta}
	if typ == gomysql.MYSQL_TYPE_STRING {
		bc.typ, bc.length = stringRealType(meta)
	}
	switch bc.typ {
	case gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_SHORT, gomysql.MYSQL_TYPE_INT24,
		gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_LONGLONG,
		gomysql.MYSQL_TYPE_FLOAT, gomysql.MYSQL_TYPE_DOUBLE, gomysql.MYSQL_TYPE_NEWDECIMAL,
		gomysql.MYSQL_TYPE_BIT, gomysql.MYSQL_TYPE_YEAR, gomysql.MYSQL_TYPE_DATE,
		gomysql.MYSQL_TYPE_DATETIME2, gomysql.MYSQL_TYPE_TIMESTAMP2, gomysql.MYSQL_TYPE_TIME2,
		gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING, gomysql.MYSQL_TYPE_STRING,
		gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_GEOMETRY:
		bc.direct = true
	case gomysql.MYSQL_TYPE_ENUM, gomysql.MYSQL_TYPE_SET:
		// Only as the real type of MYSQL_TYPE_STRING, with a pack length of
		// 1 or 2 (ENUM) or 1 to 8 bytes (SET).
		bc.direct = typ == gomysql.MYSQL_TYPE_STRING &&
			(bc.length == 1 || bc.length == 2 || (bc.typ == gomysql.MYSQL_TYPE_SET && bc.length <= 8))
	}
	return bc
}

// errShortRow reports row data that ends inside a value.
var errShortRow = errors.New("rows event ends inside a value")

// rowImages reads the row images of one rows event's row data, in order.
type rowImages struct {
	data  []byte
	cols  []colType
	table *event.Table // for the column names in errors
	// present is the event's column bitmap of each image kind (before or
	// only image; after image of an update), nullBytes the size of the
	// null bitmap that starts every image of that kind: a bit per present
	// column. Both hold for the whole event.
	present   [2][]byte
	nullBytes [2]int
}

func newRowImages(data []byte, info *tableInfo, bitmap1, bitmap2 []byte) rowImages {
	r := rowImages{data: data, cols: info.cols, table: info.table, present: [2][]byte{bitmap1, bitmap2}}
	for k, bm := range r.present {
		if bm == nil {
			continue
		}
		count := 0
		for i := range r.cols {
			if bitSet(bm, i) {
				count++
			}
		}
		r.nullBytes[k] = (count + 7) / 8
	}
	return r
}

// more reports whether another image follows.
func (r *rowImages) more() bool { return len(r.data) > 0 }

// next decodes the next image, of kind k (0: the before or only image, 1:
// an update's after image), into dst (len(r.cols) values): the present
// columns, NULLs as nil, the columns absent from the image (binlog_row_image
// other than FULL) as event.Unchanged.
func (r *rowImages) next(k int, dst []event.Value) error {
	present, nb := r.present[k], r.nullBytes[k]
	if len(r.data) < nb {
		return errShortRow
	}
	nulls, data := r.data[:nb], r.data[nb:]
	j := 0 // index into nulls: it has a bit per present column only
	for i := range r.cols {
		if !bitSet(present, i) {
			dst[i] = event.Unchanged{}
			continue
		}
		null := bitSet(nulls, j)
		j++
		if null {
			dst[i] = nil
			continue
		}
		v, used, err := r.cols[i].fromRow(data)
		if err != nil {
			return fmt.Errorf("column %s: %w", r.table.Columns[i].Name, err)
		}
		dst[i] = v
		data = data[used:]
	}
	r.data = data
	return nil
}

func bitSet(bitmap []byte, i int) bool { return bitmap[i>>3]&(1<<(uint(i)&7)) != 0 }

// fromRow decodes one non-NULL value of the column from the start of data,
// as colType.fromBinlog renders go-mysql's decoding of it, and returns it
// with the bytes it used.
func (ct *colType) fromRow(data []byte) (event.Value, int, error) {
	bc := &ct.bin
	switch bc.typ {
	case gomysql.MYSQL_TYPE_TINY:
		if len(data) < 1 {
			return nil, 0, errShortRow
		}
		if ct.kind == kUnsigned {
			return uint64(data[0]), 1, nil
		}
		return int64(int8(data[0])), 1, nil
	case gomysql.MYSQL_TYPE_SHORT:
		if len(data) < 2 {
			return nil, 0, errShortRow
		}
		u := binary.LittleEndian.Uint16(data)
		if ct.kind == kUnsigned {
			return uint64(u), 2, nil
		}
		return int64(int16(u)), 2, nil
	case gomysql.MYSQL_TYPE_INT24:
		if len(data) < 3 {
			return nil, 0, errShortRow
		}
		u := uint32(data[0]) | uint32(data[1])<<8 | uint32(data[2])<<16
		if ct.kind == kUnsigned {
			return uint64(u), 3, nil
		}
		return int64(int32(u<<8) >> 8), 3, nil
	case gomysql.MYSQL_TYPE_LONG:
		if len(data) < 4 {
			return nil, 0, errShortRow
		}
		u := binary.LittleEndian.Uint32(data)
		if ct.kind == kUnsigned {
			return uint64(u), 4, nil
		}
		return int64(int32(u)), 4, nil
	case gomysql.MYSQL_TYPE_LONGLONG:
		if len(data) < 8 {
			return nil, 0, errShortRow
		}
		u := binary.LittleEndian.Uint64(data)
		if ct.kind == kUnsigned {
			return u, 8, nil
		}
		return int64(u), 8, nil
	case gomysql.MYSQL_TYPE_FLOAT:
		if len(data) < 4 {
			return nil, 0, errShortRow
		}
		return float32Value(math.Float32frombits(binary.LittleEndian.Uint32(data))), 4, nil
	case gomysql.MYSQL_TYPE_DOUBLE:
		if len(data) < 8 {
			return nil, 0, errShortRow
		}
		return math.Float64frombits(binary.LittleEndian.Uint64(data)), 8, nil
	case gomysql.MYSQL_TYPE_NEWDECIMAL:
		s, n, err := decodeDecimal(data, int(bc.meta>>8), int(bc.meta&0xFF))
		if err != nil {
			return nil, 0, err
		}
		return event.Decimal(s), n, nil
	case gomysql.MYSQL_TYPE_BIT:
		nbits := int(bc.meta>>8)*8 + int(bc.meta&0xFF)
		n := (nbits + 7) / 8
		if n > 8 {
			return nil, 0, fmt.Errorf("bit(%d) is wider than 64 bits", nbits)
		}
		if len(data) < n {
			return nil, 0, errShortRow
		}
		return gomysql.BFixedLengthInt(data[:n]), n, nil
	case gomysql.MYSQL_TYPE_YEAR:
		if len(data) < 1 {
			return nil, 0, errShortRow
		}
		if data[0] == 0 {
			return int64(0), 1, nil
		}
		return int64(data[0]) + 1900, 1, nil
	case gomysql.MYSQL_TYPE_DATE:
		if len(data) < 3 {
			return nil, 0, errShortRow
		}
		u := int(data[0]) | int(data[1])<<8 | int(data[2])<<16
		var b [16]byte
		out := appendDate(b[:0], u/(16*32), u/32%16, u%32)
		return string(out), 3, nil
	case gomysql.MYSQL_TYPE_DATETIME2:
		return ct.datetime2(data)
	case gomysql.MYSQL_TYPE_TIMESTAMP2:
		return ct.timestamp2(data)
	case gomysql.MYSQL_TYPE_TIME2:
		return ct.time2(data)
	case gomysql.MYSQL_TYPE_ENUM:
		if len(data) < bc.length {
			return nil, 0, errShortRow
		}
		i := int(data[0])
		if bc.length == 2 {
			i = int(binary.LittleEndian.Uint16(data))
		}
		if i == 0 {
			return "", bc.length, nil // the invalid-value marker of non-strict mode
		}
		if i > len(ct.enum) {
			return nil, 0, fmt.Errorf("enum index %d out of %d values", i, len(ct.enum))
		}
		return ct.enum[i-1], bc.length, nil
	case gomysql.MYSQL_TYPE_SET:
		if len(data) < bc.length {
			return nil, 0, errShortRow
		}
		return setString(gomysql.FixedLengthInt(data[:bc.length]), ct.set), bc.length, nil
	case gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING:
		b, n, err := lengthPrefixed(data, int(bc.meta))
		if err != nil {
			return nil, 0, err
		}
		v, err := ct.bytesValue(b)
		return v, n, err
	case gomysql.MYSQL_TYPE_STRING:
		b, n, err := lengthPrefixed(data, bc.length)
		if err != nil {
			return nil, 0, err
		}
		v, err := ct.bytesValue(b)
		return v, n, err
	case gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_GEOMETRY:
		p := int(bc.meta)
		if p < 1 || p > 4 {
			return nil, 0, fmt.Errorf("invalid blob pack length %d", p)
		}
		if len(data) < p {
			return nil, 0, errShortRow
		}
		l := gomysql.FixedLengthInt(data[:p])
		if uint64(len(data)-p) < l {
			return nil, 0, errShortRow
		}
		n := p + int(l)
		v, err := ct.bytesValue(data[p:n])
		return v, n, err
	}
	return nil, 0, fmt.Errorf("binlog type %d is not decoded directly", bc.typ)
}

// lengthPrefixed reads a string of at most maxLen bytes: a 1-byte length
// below 256, else a 2-byte one.
func lengthPrefixed(data []byte, maxLen int) ([]byte, int, error) {
	p := 1
	if maxLen >= 256 {
		p = 2
	}
	if len(data) < p {
		return nil, 0, errShortRow
	}
	l := int(data[0])
	if p == 2 {
		l = int(binary.LittleEndian.Uint16(data))
	}
	if len(data)-p < l {
		return nil, 0, errShortRow
	}
	return data[p : p+l], p + l, nil
}

// bytesValue renders a string or blob column's bytes.
func (ct *colType) bytesValue(b []byte) (event.Value, error) {
	switch ct.kind {
	case kText:
		if ct.decode == nil {
			// UTF-8 text aliases the packet, as in colType.fromBinlog: the
			// packet is reused only after the streamer has handled its
			// event, and the Emitter keeps no value past Emit.
			return unsafe.String(unsafe.SliceData(b), len(b)), nil
		}
		return ct.decode(b), nil
	case kBinary:
		return padBinary(b, ct.padLen), nil
	case kGeometry:
		return geometryWKT(b)
	case kJSON:
		// MYSQL_TYPE_JSON is never decoded here (directType); a text column
		// of another kind would be a table map this file does not know.
	}
	return nil, fmt.Errorf("unexpected %s value in a string column", ct.name)
}

// datetime2 decodes DATETIME(fsp) (MySQL >= 5.6.4 format): 5 bytes of
// packed date and time, offset by 0x8000000000, then fsp/2 rounded up bytes
// of fraction.
func (ct *colType) datetime2(data []byte) (event.Value, int, error) {
	dec := int(ct.bin.meta)
	n := 5 + (dec+1)/2
	if dec > 6 || len(data) < n {
		return nil, 0, errShortRow
	}
	intPart := int64(gomysql.BFixedLengthInt(data[:5])) - 0x8000000000
	frac := fracMicros(data[5:n], dec)
	var b [40]byte
	out := b[:0]
	if intPart == 0 {
		out = appendDate(out, 0, 0, 0)
		out = append(out, "T00:00:00"...)
	} else {
		tmp := intPart<<24 + frac
		if tmp < 0 {
			tmp = -tmp
		}
		ymdhms := tmp >> 24
		ymd, hms := ymdhms>>17, ymdhms%(1<<17)
		ym := ymd >> 5
		out = appendDate(out, int(ym/13), int(ym%13), int(ymd%(1<<5)))
		out = append(out, 'T')
		out = appendClock(out, int(hms>>12), int((hms>>6)%(1<<6)), int(hms%(1<<6)))
	}
	out = appendFrac(out, frac, ct.fsp)
	return string(out), n, nil
}

// timestamp2 decodes TIMESTAMP(fsp): 4 bytes of big-endian Unix seconds,
// then the fraction; rendered in UTC.
func (ct *colType) timestamp2(data []byte) (event.Value, int, error) {
	dec := int(ct.bin.meta)
	n := 4 + (dec+1)/2
	if dec > 6 || len(data) < n {
		return nil, 0, errShortRow
	}
	sec := int64(binary.BigEndian.Uint32(data))
	frac := fracMicros(data[4:n], dec)
	var b [40]byte
	out := b[:0]
	if sec == 0 {
		out = appendDate(out, 0, 0, 0)
		out = append(out, "T00:00:00"...)
	} else {
		t := time.Unix(sec, 0).UTC()
		y, m, d := t.Date()
		hh, mm, ss := t.Clock()
		out = appendDate(out, y, int(m), d)
		out = append(out, 'T')
		out = appendClock(out, hh, mm, ss)
	}
	out = appendFrac(out, frac, ct.fsp)
	out = append(out, 'Z')
	return string(out), n, nil
}

// time2 decodes TIME(fsp): 3 bytes of packed time offset by 0x800000, then
// the fraction (6 bytes together at fsp 5 and 6); negative values store the
// fraction reversed.
func (ct *colType) time2(data []byte) (event.Value, int, error) {
	dec := int(ct.bin.meta)
	n := 3 + (dec+1)/2
	if dec > 6 || len(data) < n {
		return nil, 0, errShortRow
	}
	var tmp int64
	switch dec {
	case 1, 2:
		intPart := int64(gomysql.BFixedLengthInt(data[:3])) - 0x800000
		frac := int64(data[3])
		if intPart < 0 && frac != 0 {
			intPart++
			frac -= 0x100
		}
		tmp = intPart<<24 + frac*10000
	case 3, 4:
		intPart := int64(gomysql.BFixedLengthInt(data[:3])) - 0x800000
		frac := int64(binary.BigEndian.Uint16(data[3:5]))
		if intPart < 0 && frac != 0 {
			intPart++
			frac -= 0x10000
		}
		tmp = intPart<<24 + frac*100
	case 5, 6:
		tmp = int64(gomysql.BFixedLengthInt(data[:6])) - 0x800000000000
	default:
		tmp = (int64(gomysql.BFixedLengthInt(data[:3])) - 0x800000) << 24
	}
	var b [40]byte
	out := b[:0]
	if tmp < 0 {
		tmp = -tmp
		out = append(out, '-')
	}
	hms := tmp >> 24
	out = appendClock(out, int((hms>>12)%(1<<10)), int((hms>>6)%(1<<6)), int(hms%(1<<6)))
	out = appendFrac(out, tmp%(1<<24), ct.fsp)
	return string(out), n, nil
}

// fracMicros reads a temporal value's fraction bytes as microseconds.
func fracMicros(b []byte, dec int) int64 {
	switch dec {
	case 1, 2:
		return int64(b[0]) * 10000
	case 3, 4:
		return int64(binary.BigEndian.Uint16(b)) * 100
	case 5, 6:
		return int64(gomysql.BFixedLengthInt(b[:3]))
	}
	return 0
}

// appendPadded appends v in decimal, zero-padded to width digits.
func appendPadded(b []byte, v, width int) []byte {
	var d [20]byte
	s := strconv.AppendInt(d[:0], int64(v), 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

func appendDate(b []byte, y, m, d int) []byte {
	b = appendPadded(b, y, 4)
	b = append(b, '-')
	b = appendPadded(b, m, 2)
	b = append(b, '-')
	return appendPadded(b, d, 2)
}

func appendClock(b []byte, h, m, s int) []byte {
	b = appendPadded(b, h, 2)
	b = append(b, ':')
	b = appendPadded(b, m, 2)
	b = append(b, ':')
	return appendPadded(b, s, 2)
}

// appendFrac appends the first fsp digits of a 6-digit microsecond fraction.
func appendFrac(b []byte, micros int64, fsp int) []byte {
	if fsp <= 0 {
		return b
	}
	var d [6]byte
	for i := 5; i >= 0; i-- {
		d[i] = byte('0' + micros%10)
		micros /= 10
	}
	b = append(b, '.')
	return append(b, d[:min(fsp, 6)]...)
}

// decimalBytes is the storage size of 0 to 9 decimal digits.
var decimalBytes = [10]int{0, 1, 1, 2, 2, 3, 3, 4, 4, 4}

// decodeDecimal decodes a DECIMAL(precision, scale) in MySQL's binary format
// (strings/decimal.c, decimal2bin): groups of 9 digits in 4 big-endian bytes,
// a shorter leading (integral) and trailing (fractional) group, the sign in
// the top bit of the first byte, and negative numbers stored inverted. It
// renders what go-mysql's decodeDecimal does: no leading zeros, and exactly
// scale fraction digits.
func decodeDecimal(data []byte, precision, scale int) (string, int, error) {
	integral := precision - scale
	if precision > 65 || scale > 30 || integral < 0 {
		return "", 0, fmt.Errorf("invalid decimal(%d,%d)", precision, scale)
	}
	intFull, fracFull := integral/9, scale/9
	intRest, fracRest := integral-intFull*9, scale-fracFull*9
	size := intFull*4 + decimalBytes[intRest] + fracFull*4 + decimalBytes[fracRest]
	if len(data) < size || size == 0 {
		return "", 0, errShortRow
	}
	var buf [64]byte // size is at most 7*4+4 + 3*4+4
	d := buf[:size]
	copy(d, data)
	var mask byte
	var ob [80]byte // a sign, 65 digits and a point
	out := ob[:0]
	if d[0]&0x80 == 0 {
		mask = 0xFF
		out = append(out, '-')
	}
	d[0] ^= 0x80
	group := func(b []byte) uint64 {
		var v uint64
		for _, x := range b {
			v = v<<8 | uint64(x^mask)
		}
		return v
	}
	pos := 0
	leading := true
	if k := decimalBytes[intRest]; k > 0 {
		if v := group(d[:k]); v != 0 {
			out = strconv.AppendUint(out, v, 10)
			leading = false
		}
		pos = k
	}
	for i := 0; i < intFull; i++ {
		v := group(d[pos : pos+4])
		pos += 4
		switch {
		case !leading:
			out = appendPadded(out, int(v), 9)
		case v != 0:
			out = strconv.AppendUint(out, v, 10)
			leading = false
		}
	}
	if leading {
		out = append(out, '0')
	}
	if scale > 0 {
		out = append(out, '.')
		for i := 0; i < fracFull; i++ {
			out = appendPadded(out, int(group(d[pos:pos+4])), 9)
			pos += 4
		}
		if k := decimalBytes[fracRest]; k > 0 {
			out = appendPadded(out, int(group(d[pos:pos+k])), fracRest)
			pos += k
		}
	}
	return string(out), size, nil
}
