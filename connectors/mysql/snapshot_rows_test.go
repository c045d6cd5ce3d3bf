package mysql

import (
	"bytes"
	"context"
	"math"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

func TestRowEncodingRoundTrip(t *testing.T) {
	row := []gomysql.FieldValue{
		gomysql.NewFieldValue(gomysql.FieldValueTypeNull, 0, nil),
		gomysql.NewFieldValue(gomysql.FieldValueTypeUnsigned, math.MaxUint64, nil),
		gomysql.NewFieldValue(gomysql.FieldValueTypeSigned, uint64(1<<63), nil), // MinInt64
		gomysql.NewFieldValue(gomysql.FieldValueTypeSigned, uint64(math.MaxUint64), nil),
		gomysql.NewFieldValue(gomysql.FieldValueTypeFloat, math.Float64bits(-0.1), nil),
		gomysql.NewFieldValue(gomysql.FieldValueTypeString, 0, []byte{}),
		gomysql.NewFieldValue(gomysql.FieldValueTypeString, 0, bytes.Repeat([]byte{0, 0xff, 'x'}, 100)),
	}
	b := appendRow(appendRow(nil, row), row)
	for r := 0; r < 2; r++ {
		got := make([]gomysql.FieldValue, len(row))
		var err error
		if b, err = decodeRow(b, got); err != nil {
			t.Fatal(err)
		}
		for i := range row {
			if got[i].Type != row[i].Type || got[i].AsUint64() != row[i].AsUint64() || !bytes.Equal(got[i].AsString(), row[i].AsString()) {
				t.Errorf("row %d column %d: %v, want %v", r, i, got[i].Value(), row[i].Value())
			}
		}
	}
	if len(b) != 0 {
		t.Errorf("%d bytes left", len(b))
	}
	// Truncated input is an error, never a panic.
	full := appendRow(nil, row)
	for n := 0; n < len(full); n++ {
		if _, err := decodeRow(full[:n], make([]gomysql.FieldValue, len(row))); err == nil {
			t.Fatalf("decoding %d of %d bytes: no error", n, len(full))
		}
	}
}

// TestRowBuffersBound runs workers that fill chunks as fast as they can and
// an emitter that drains them in order, slowly: the bytes of non-head
// chunks never exceed the budget, the head's never its allowance, and
// nothing deadlocks.
func TestRowBuffersBound(t *testing.T) {
	const (
		chunks  = 12
		segs    = 20 // segments per chunk: more than the budget holds
		workers = 3
		limit   = 4 * segmentSize
		head    = 2 * segmentSize
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := newRowBuffers(ctx, limit, head)
	all := make([]*chunk, chunks)
	for i := range all {
		all[i] = newChunk()
	}
	var mu sync.Mutex
	var errs []string
	check := func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		var charged int64
		for _, ch := range all {
			var free int64 // taken as the head: not charged to the budget
			for _, s := range ch.segs {
				if s.charged {
					charged += int64(cap(s.buf))
				} else {
					free += int64(cap(s.buf))
				}
			}
			if free > head {
				mu.Lock()
				errs = append(errs, "head over its allowance")
				mu.Unlock()
			}
		}
		if b.used > limit || charged > b.used {
			mu.Lock()
			errs = append(errs, "budget exceeded")
			mu.Unlock()
		}
	}
	jobs := make(chan *chunk)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range jobs {
				for i := 0; i < segs; i++ {
					s, err := b.get(ch, 100)
					if err != nil {
						t.Error(err)
						return
					}
					s.buf = append(s.buf, byte(i))
					s.rows = 1
					b.publish(ch, s)
					check()
				}
				b.end(ch)
			}
		}()
	}
	go func() {
		for _, ch := range all {
			jobs <- ch
		}
		close(jobs)
	}()
	for i, ch := range all {
		b.setHead(ch)
		n := 0
		for {
			s, err := b.next(ctx, ch)
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			if s == nil {
				break
			}
			if int(s.buf[0]) != n {
				t.Fatalf("chunk %d: segment %d out of order", i, s.buf[0])
			}
			n++
			time.Sleep(100 * time.Microsecond)
			check()
			b.release(ch, s)
		}
		if n != segs {
			t.Fatalf("chunk %d: %d segments, want %d", i, n, segs)
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	if b.used != 0 {
		t.Errorf("%d bytes still charged", b.used)
	}
}
