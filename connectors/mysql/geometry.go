package mysql

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MySQL and MariaDB store a geometry as a 4-byte little-endian SRID followed
// by the OGC well-known binary (WKB). Plume renders it as well-known text
// (WKT) in the style of MariaDB's ST_AsText: "POINT(1 2)",
// "POLYGON((0 0,1 0,1 1,0 0))", "MULTIPOINT(1 1,2 2)". A non-zero SRID is
// kept as an EWKT prefix: "SRID=4326;POINT(1 2)".

const maxGeometryDepth = 32

type wkbReader struct {
	b     []byte
	order binary.ByteOrder
}

var errShortWKB = errors.New("truncated WKB")

func (r *wkbReader) u32() (uint32, error) {
	if len(r.b) < 4 {
		return 0, errShortWKB
	}
	v := r.order.Uint32(r.b)
	r.b = r.b[4:]
	return v, nil
}

func (r *wkbReader) f64() (float64, error) {
	if len(r.b) < 8 {
		return 0, errShortWKB
	}
	v := math.Float64frombits(r.order.Uint64(r.b))
	r.b = r.b[8:]
	return v, nil
}

// header reads a WKB byte-order byte and geometry type.
func (r *wkbReader) header() (uint32, error) {
	if len(r.b) < 1 {
		return 0, errShortWKB
	}
	switch r.b[0] {
	case 0:
		r.order = binary.BigEndian
	case 1:
		r.order = binary.LittleEndian
	default:
		return 0, fmt.Errorf("bad WKB byte order %d", r.b[0])
	}
	r.b = r.b[1:]
	return r.u32()
}

func appendCoord(sb *strings.Builder, f float64) {
	sb.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
}

func (r *wkbReader) point(sb *strings.Builder) error {
	x, err := r.f64()
	if err != nil {
		return err
	}
	y, err := r.f64()
	if err != nil {
		return err
	}
	appendCoord(sb, x)
	sb.WriteByte(' ')
	appendCoord(sb, y)
	return nil
}

func (r *wkbReader) points(sb *strings.Builder) error {
	n, err := r.u32()
	if err != nil {
		return err
	}
	if uint64(n)*16 > uint64(len(r.b)) {
		return errShortWKB
	}
	sb.WriteByte('(')
	for i := uint32(0); i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		if err := r.point(sb); err != nil {
			return err
		}
	}
	sb.WriteByte(')')
	return nil
}

func (r *wkbReader) rings(sb *strings.Builder) error {
	n, err := r.u32()
	if err != nil {
		return err
	}
	if uint64(n)*4 > uint64(len(r.b)) {
		return errShortWKB
	}
	sb.WriteByte('(')
	for i := uint32(0); i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		if err := r.points(sb); err != nil {
			return err
		}
	}
	sb.WriteByte(')')
	return nil
}

var wkbNames = [...]string{1: "POINT", 2: "LINESTRING", 3: "POLYGON", 4: "MULTIPOINT",
	5: "MULTILINESTRING", 6: "MULTIPOLYGON", 7: "GEOMETRYCOLLECTION"}

// geometry appends one WKB geometry (with its header) as WKT.
func (r *wkbReader) geometry(sb *strings.Builder, depth int) error {
	if depth > maxGeometryDepth {
		return errors.New("WKB nested too deeply")
	}
	t, err := r.header()
	if err != nil {
		return err
	}
	if t == 0 || t >= uint32(len(wkbNames)) {
		return fmt.Errorf("unsupported WKB geometry type %d", t)
	}
	sb.WriteString(wkbNames[t])
	switch t {
	case 1:
		sb.WriteByte('(')
		if err := r.point(sb); err != nil {
			return err
		}
		sb.WriteByte(')')
		return nil
	case 2:
		return r.points(sb)
	case 3:
		return r.rings(sb)
	}
	// Multi geometries and collections: a count, then full WKB geometries.
	n, err := r.u32()
	if err != nil {
		return err
	}
	if uint64(n)*5 > uint64(len(r.b)) {
		return errShortWKB
	}
	if n == 0 {
		sb.WriteString(" EMPTY")
		return nil
	}
	sb.WriteByte('(')
	for i := uint32(0); i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sub := wkbReader{b: r.b}
		if t == 7 {
			if err := sub.geometry(sb, depth+1); err != nil {
				return err
			}
		} else {
			// MULTIPOINT(1 1,2 2), MULTILINESTRING((..),(..)),
			// MULTIPOLYGON(((..)),((..))): the member's body without its name.
			st, err := sub.header()
			if err != nil {
				return err
			}
			switch {
			case t == 4 && st == 1:
				err = sub.point(sb)
			case t == 5 && st == 2:
				err = sub.points(sb)
			case t == 6 && st == 3:
				err = sub.rings(sb)
			default:
				err = fmt.Errorf("WKB type %d inside %s", st, wkbNames[t])
			}
			if err != nil {
				return err
			}
		}
		r.b = sub.b
	}
	sb.WriteByte(')')
	return nil
}

// geometryWKT converts a MySQL geometry value (SRID + WKB) to (E)WKT.
func geometryWKT(v []byte) (string, error) {
	if len(v) < 4 {
		return "", errShortWKB
	}
	srid := binary.LittleEndian.Uint32(v)
	var sb strings.Builder
	if srid != 0 {
		sb.WriteString("SRID=")
		sb.WriteString(strconv.FormatUint(uint64(srid), 10))
		sb.WriteByte(';')
	}
	r := wkbReader{b: v[4:]}
	if err := r.geometry(&sb, 0); err != nil {
		return "", fmt.Errorf("geometry: %w", err)
	}
	return sb.String(), nil
}
