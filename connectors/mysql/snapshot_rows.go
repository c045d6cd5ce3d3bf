package mysql

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"sync"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// Snapshot row buffers.
//
// Workers do not materialise a chunk as decoded Go values. Each row is
// encoded compactly (appendRow: per column a type byte and the value, as
// varints or raw bytes) into segments of segmentSize bytes, and every
// segment is handed to its chunk as soon as it is full, so the Run goroutine
// can emit a chunk's rows while its worker is still reading it. The Run
// goroutine decodes a row only to emit it.
//
// Invariant (memory): the segments of a snapshot run never hold more than
// snapshotBufferBytes for the chunks the Run goroutine is not emitting yet,
// plus headBufferBytes for the chunk it emits next (the head), plus one
// segment being filled per worker (larger only for a single row longer than
// segmentSize), plus the recycled segments kept for reuse, which are at most
// what was once in use. It holds because a worker takes a segment from
// rowBuffers.get before filling it, and get blocks until the segment fits:
// into the shared budget for a chunk that is not the head, into the head's
// own allowance for the head (an empty budget or allowance always admits
// one segment, so a long row cannot stall). The head is exempt from the
// shared budget because the Run goroutine only drains the head: were the
// head to wait for the budget, chunks after it could hold the budget
// forever. Every other chunk waits, which is backpressure on its worker's
// read (its connection's net_write_timeout is raised so the server waits
// too; see snapshotSession).
//
// The budget also bounds how far workers read ahead in parallel; 2 MiB is
// about two chunks of 100-byte rows. With the emitter as the bottleneck
// (local database), more did not add throughput, and every MiB costs about
// 1.5 MiB of RSS at GOGC=50 (docs/operations.md, "Memory").
const (
	segmentSize         = 64 << 10
	snapshotBufferBytes = 2 << 20
	headBufferBytes     = 512 << 10
)

// segment is a run of encoded rows of one chunk.
type segment struct {
	buf     []byte
	rows    int
	charged bool // counted in rowBuffers.used (taken while not the head)
}

// rowBuffers is a snapshot run's byte budget for buffered rows and its pool
// of segments. One mutex guards it and every chunk's segment queue.
type rowBuffers struct {
	mu    sync.Mutex
	cond  *sync.Cond // a segment was released, the head moved or the run stopped
	limit int64      // shared budget (non-head chunks)
	head  int64      // the head's allowance
	used  int64      // bytes of charged segments not yet released
	cur   *chunk     // the head: the chunk the Run goroutine emits next
	free  []*segment // recycled segments of segmentSize
	done  bool       // the run stopped: get fails
}

func newRowBuffers(ctx context.Context, limit, head int64) *rowBuffers {
	b := &rowBuffers{limit: limit, head: head}
	b.cond = sync.NewCond(&b.mu)
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		b.done = true
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	return b
}

var errSnapshotStopped = errors.New("mysql: snapshot stopped")

// get returns an empty segment for ch able to take at least need bytes,
// waiting until ch may buffer it (see the memory invariant above).
func (b *rowBuffers) get(ch *chunk, need int) (*segment, error) {
	size := segmentSize
	if need > size {
		size = need
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if b.done {
			return nil, errSnapshotStopped
		}
		if b.cur == ch {
			if ch.pending == 0 || ch.pending+int64(size) <= b.head {
				break
			}
		} else if b.used == 0 || b.used+int64(size) <= b.limit {
			break
		}
		b.cond.Wait()
	}
	var s *segment
	if size == segmentSize && len(b.free) > 0 {
		s = b.free[len(b.free)-1]
		b.free = b.free[:len(b.free)-1]
	} else {
		s = &segment{buf: make([]byte, 0, size)}
	}
	s.charged = b.cur != ch
	if s.charged {
		b.used += int64(cap(s.buf))
	}
	ch.pending += int64(cap(s.buf))
	return s, nil
}

// publish appends a filled segment to ch's queue.
func (b *rowBuffers) publish(ch *chunk, s *segment) {
	b.mu.Lock()
	ch.segs = append(ch.segs, s)
	b.mu.Unlock()
	notify(ch.avail)
}

// end marks ch's read finished (after its last publish).
func (b *rowBuffers) end(ch *chunk) {
	b.mu.Lock()
	ch.ended = true
	b.mu.Unlock()
	notify(ch.avail)
}

// next returns ch's next segment, waiting for its worker; nil once the read
// ended and every segment was taken.
func (b *rowBuffers) next(ctx context.Context, ch *chunk) (*segment, error) {
	for {
		b.mu.Lock()
		if len(ch.segs) > 0 {
			s := ch.segs[0]
			ch.segs[0] = nil
			ch.segs = ch.segs[1:]
			b.mu.Unlock()
			return s, nil
		}
		ended := ch.ended
		b.mu.Unlock()
		if ended {
			return nil, nil
		}
		select {
		case <-ch.avail:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// release returns an emitted segment of ch.
func (b *rowBuffers) release(ch *chunk, s *segment) {
	b.mu.Lock()
	n := int64(cap(s.buf))
	ch.pending -= n
	if s.charged {
		b.used -= n
	}
	if cap(s.buf) == segmentSize {
		s.buf, s.rows, s.charged = s.buf[:0], 0, false
		b.free = append(b.free, s)
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

// setHead makes ch the head (nil: none).
func (b *rowBuffers) setHead(ch *chunk) {
	b.mu.Lock()
	b.cur = ch
	b.cond.Broadcast()
	b.mu.Unlock()
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Row encoding: per column one byte, the go-mysql value type, then for
// unsigned a uvarint, for signed a zigzag varint, for float its 8 bytes
// (IEEE 754 bits, little endian), for string a uvarint length and the bytes;
// NULL has nothing more.

// appendRow appends row's encoding to dst.
func appendRow(dst []byte, row []gomysql.FieldValue) []byte {
	for i := range row {
		fv := &row[i]
		dst = append(dst, byte(fv.Type))
		switch fv.Type {
		case gomysql.FieldValueTypeNull:
		case gomysql.FieldValueTypeUnsigned:
			dst = binary.AppendUvarint(dst, fv.AsUint64())
		case gomysql.FieldValueTypeSigned:
			dst = binary.AppendVarint(dst, fv.AsInt64())
		case gomysql.FieldValueTypeFloat:
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(fv.AsFloat64()))
		default:
			s := fv.AsString()
			dst = binary.AppendUvarint(dst, uint64(len(s)))
			dst = append(dst, s...)
		}
	}
	return dst
}

var errBadRow = errors.New("mysql: corrupt snapshot row buffer")

// decodeRow decodes one row from b into row (len(row) columns) and returns
// the rest of b. String values alias b.
func decodeRow(b []byte, row []gomysql.FieldValue) ([]byte, error) {
	for i := range row {
		if len(b) == 0 {
			return nil, errBadRow
		}
		t := gomysql.FieldValueType(b[0])
		b = b[1:]
		switch t {
		case gomysql.FieldValueTypeNull:
			row[i] = gomysql.NewFieldValue(t, 0, nil)
		case gomysql.FieldValueTypeUnsigned:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return nil, errBadRow
			}
			row[i], b = gomysql.NewFieldValue(t, v, nil), b[n:]
		case gomysql.FieldValueTypeSigned:
			v, n := binary.Varint(b)
			if n <= 0 {
				return nil, errBadRow
			}
			row[i], b = gomysql.NewFieldValue(t, uint64(v), nil), b[n:]
		case gomysql.FieldValueTypeFloat:
			if len(b) < 8 {
				return nil, errBadRow
			}
			row[i], b = gomysql.NewFieldValue(t, binary.LittleEndian.Uint64(b), nil), b[8:]
		case gomysql.FieldValueTypeString:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return nil, errBadRow
			}
			row[i], b = gomysql.NewFieldValue(t, 0, b[n:n+int(l):n+int(l)]), b[n+int(l):]
		default:
			return nil, errBadRow
		}
	}
	return b, nil
}
