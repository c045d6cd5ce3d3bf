package postgres

import (
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"
)

// TestParseRowMessageMatchesPglogrepl checks the row-message parser
// against pglogrepl.Parse on random Insert, Update and Delete messages, and
// that truncated messages are errors, not panics.
func TestParseRowMessageMatchesPglogrepl(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tuple := func() []byte {
		n := 1 + rng.IntN(6)
		b := binary.BigEndian.AppendUint16(nil, uint16(n))
		for range n {
			switch k := "ntub"[rng.IntN(4)]; k {
			case 'n', 'u':
				b = append(b, k)
			default:
				v := make([]byte, rng.IntN(40))
				for i := range v {
					v[i] = byte(rng.IntN(256))
				}
				b = append(b, k)
				b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
				b = append(b, v...)
			}
		}
		return b
	}
	// One scratch for every message, as the stream uses it: a message
	// parsed into storage that held a longer or different one (or a
	// failed parse) must come out the same as pglogrepl's.
	var sc rowScratch
	for i := 0; i < 3000; i++ {
		var msg []byte
		switch i % 5 {
		case 0:
			msg = append([]byte{'I'}, binary.BigEndian.AppendUint32(nil, rng.Uint32())...)
			msg = append(append(msg, 'N'), tuple()...)
		case 1:
			msg = append([]byte{'U'}, binary.BigEndian.AppendUint32(nil, rng.Uint32())...)
			msg = append(append(msg, 'N'), tuple()...)
		case 2:
			msg = append([]byte{'U'}, binary.BigEndian.AppendUint32(nil, rng.Uint32())...)
			msg = append(append(msg, "KO"[rng.IntN(2)]), tuple()...)
			msg = append(append(msg, 'N'), tuple()...)
		default:
			msg = append([]byte{'D'}, binary.BigEndian.AppendUint32(nil, rng.Uint32())...)
			msg = append(append(msg, "KO"[rng.IntN(2)]), tuple()...)
		}
		want, err := pglogrepl.Parse(msg)
		if err != nil {
			t.Fatalf("pglogrepl: %v", err)
		}
		got, err := parseRowMessage(msg, &sc)
		if err != nil {
			t.Fatalf("message %x: %v", msg, err)
		}
		if !sameRowMessage(got, want) {
			t.Fatalf("message %x:\n got %#v\nwant %#v", msg, got, want)
		}
		for cut := 1; cut < len(msg); cut++ {
			if _, err := parseRowMessage(msg[:cut], &sc); err == nil {
				t.Fatalf("prefix %x of %x parsed without an error", msg[:cut], msg)
			}
		}
	}
}

func sameRowMessage(a, b pglogrepl.Message) bool {
	td := func(t *pglogrepl.TupleData) []pglogrepl.TupleDataColumn {
		if t == nil {
			return nil
		}
		out := []pglogrepl.TupleDataColumn{}
		for _, c := range t.Columns {
			x := *c
			if len(x.Data) == 0 {
				x.Data = nil
			}
			out = append(out, x)
		}
		return out
	}
	switch x := a.(type) {
	case *pglogrepl.InsertMessage:
		y, ok := b.(*pglogrepl.InsertMessage)
		return ok && x.RelationID == y.RelationID && reflect.DeepEqual(td(x.Tuple), td(y.Tuple))
	case *pglogrepl.UpdateMessage:
		y, ok := b.(*pglogrepl.UpdateMessage)
		return ok && x.RelationID == y.RelationID && x.OldTupleType == y.OldTupleType &&
			reflect.DeepEqual(td(x.OldTuple), td(y.OldTuple)) && reflect.DeepEqual(td(x.NewTuple), td(y.NewTuple))
	case *pglogrepl.DeleteMessage:
		y, ok := b.(*pglogrepl.DeleteMessage)
		return ok && x.RelationID == y.RelationID && x.OldTupleType == y.OldTupleType && reflect.DeepEqual(td(x.OldTuple), td(y.OldTuple))
	}
	return false
}
