package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/jackc/pglogrepl"

	"github.com/plumecdc/plume/pkg/event"
)

// Row messages (Insert, Update, Delete) are most of a stream. They are
// parsed here rather than by pglogrepl.Parse, whose tuple decoder copies
// every column value byte by byte into a new slice and allocates each
// column on its own. Here a tuple's columns are one allocation and their
// values are sub-slices of the message: the message is the reader's own
// copy of the WAL data (readLoop), reused only after the stream has handled
// every message of its batch (msgBatch), when nothing refers to it. The layouts are pgoutput's without
// streaming of in-progress transactions (which this source does not
// request), as in pglogrepl:
//
//	Insert: 'I' relid:u32 'N' tuple
//	Update: 'U' relid:u32 [('K'|'O') tuple] 'N' tuple
//	Delete: 'D' relid:u32 ('K'|'O') tuple
//	tuple:  ncols:u16 { 'n' | 'u' | ('t'|'b') len:u32 bytes }
//
// Unlike pglogrepl's, a malformed message is an error, not a panic.
//
// The message and its tuples are built in s, which the next call reuses
// (nil: fresh ones). The stream applies each message before it parses the
// next, and nothing keeps a message or a tuple: decodeTuple copies the
// column values out into the change's own slice.
func parseRowMessage(data []byte, s *rowScratch) (pglogrepl.Message, error) {
	if len(data) < 6 {
		return nil, fmt.Errorf("%c message of %d bytes", data[0], len(data))
	}
	if s == nil {
		s = new(rowScratch)
	}
	rel := binary.BigEndian.Uint32(data[1:5])
	pos := 5
	slot := 0
	tuple := func() (*pglogrepl.TupleData, error) {
		t, n, err := s.parseTuple(data[pos:], slot)
		pos += n
		slot++
		return t, err
	}
	kind := data[pos]
	pos++
	switch data[0] {
	case 'I':
		if kind != 'N' {
			return nil, fmt.Errorf("insert: tuple type %q, want 'N'", kind)
		}
		t, err := tuple()
		if err != nil {
			return nil, fmt.Errorf("insert: %w", err)
		}
		s.ins = pglogrepl.InsertMessage{RelationID: rel, Tuple: t}
		return &s.ins, nil
	case 'U':
		m := &s.upd
		*m = pglogrepl.UpdateMessage{RelationID: rel}
		if kind == 'K' || kind == 'O' {
			t, err := tuple()
			if err != nil {
				return nil, fmt.Errorf("update: old tuple: %w", err)
			}
			m.OldTupleType, m.OldTuple = kind, t
			if pos >= len(data) {
				return nil, errors.New("update: no new tuple")
			}
			kind = data[pos]
			pos++
		}
		if kind != 'N' {
			return nil, fmt.Errorf("update: tuple type %q, want 'N'", kind)
		}
		t, err := tuple()
		if err != nil {
			return nil, fmt.Errorf("update: new tuple: %w", err)
		}
		m.NewTuple = t
		return m, nil
	case 'D':
		if kind != 'K' && kind != 'O' {
			return nil, fmt.Errorf("delete: tuple type %q, want 'K' or 'O'", kind)
		}
		t, err := tuple()
		if err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
		s.del = pglogrepl.DeleteMessage{RelationID: rel, OldTupleType: kind, OldTuple: t}
		return &s.del, nil
	}
	return nil, fmt.Errorf("not a row message: %q", data[0])
}

// rowScratch is the storage of one parsed row message (parseRowMessage):
// the message and up to two tuples (an update's old and new), reused from
// one message to the next instead of allocating five objects per row.
type rowScratch struct {
	ins  pglogrepl.InsertMessage
	upd  pglogrepl.UpdateMessage
	del  pglogrepl.DeleteMessage
	tds  [2]pglogrepl.TupleData
	cols [2][]pglogrepl.TupleDataColumn
	ptrs [2][]*pglogrepl.TupleDataColumn
}

// parseTuple parses a TupleData at the start of b into tuple slot (0 or 1)
// of s and returns it and its length. Column values alias b.
func (s *rowScratch) parseTuple(b []byte, slot int) (*pglogrepl.TupleData, int, error) {
	if len(b) < 2 {
		return nil, 0, errors.New("truncated tuple")
	}
	n := int(binary.BigEndian.Uint16(b))
	if cap(s.cols[slot]) < n {
		s.cols[slot] = make([]pglogrepl.TupleDataColumn, n)
		s.ptrs[slot] = make([]*pglogrepl.TupleDataColumn, n)
	}
	cols, ptrs := s.cols[slot][:n], s.ptrs[slot][:n]
	clear(cols)
	pos := 2
	for i := range cols {
		if pos >= len(b) {
			return nil, 0, fmt.Errorf("truncated tuple at column %d of %d", i+1, n)
		}
		c := &cols[i]
		c.DataType = b[pos]
		pos++
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(b)-pos < 4 {
				return nil, 0, fmt.Errorf("truncated length of column %d", i+1)
			}
			l := binary.BigEndian.Uint32(b[pos:])
			pos += 4
			if uint64(len(b)-pos) < uint64(l) {
				return nil, 0, fmt.Errorf("column %d: %d bytes, %d left", i+1, l, len(b)-pos)
			}
			c.Length = l
			c.Data = b[pos : pos+int(l) : pos+int(l)]
			pos += int(l)
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
		default:
			return nil, 0, fmt.Errorf("column %d: unknown kind %q", i+1, c.DataType)
		}
		ptrs[i] = c
	}
	td := &s.tds[slot]
	*td = pglogrepl.TupleData{ColumnNum: uint16(n), Columns: ptrs}
	return td, pos, nil
}

// aliasString is the stream's decoder of text-like values: the value is
// used in place (see parseRowMessage and msgBatch for why it does not
// change while the change is emitted). The
// snapshot keeps decodeString, which copies: pgx reuses its row buffers.
func aliasString(b []byte) (event.Value, error) {
	return unsafe.String(unsafe.SliceData(b), len(b)), nil
}

var decodeStringPC = reflect.ValueOf(decodeString).Pointer()

// isDecodeString reports whether dec is decodeString (text-like types and
// the domains and enums that decode as text).
func isDecodeString(dec decoder) bool {
	return dec != nil && reflect.ValueOf(dec).Pointer() == decodeStringPC
}
