package postgres

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// TestMsgBatchArena: row messages are copied into the arena, which never
// moves while the batch fills (earlier copies stay where they are), other
// messages and row messages that do not fit get memory of their own, and
// a recycled batch's arena is sized by what the last one needed.
func TestMsgBatchArena(t *testing.T) {
	free := make(chan *msgBatch, 1)
	b := nextBatch(free)
	src := bytes.Repeat([]byte{'I'}, 1000)
	first := b.add(src) // no arena yet: a copy of its own
	src[1] = 'x'
	if first[1] != 'I' {
		t.Fatal("the copy shares memory with the source")
	}
	b.recycle(free)
	if b = nextBatch(free); cap(b.arena) != minArena {
		t.Fatalf("arena %d, want %d", cap(b.arena), minArena)
	}
	var got [][]byte
	for i := 0; i < 100; i++ { // 100 KB of rows: 64 fit the arena
		m := append([]byte{'U'}, []byte(strings.Repeat(strconv.Itoa(i%10), 999))...)
		got = append(got, b.add(m))
	}
	rel := b.add([]byte("R relation"))
	arena := b.arena[:cap(b.arena)]
	for i, m := range got {
		if m[1] != byte('0'+i%10) || len(m) != 1000 {
			t.Fatalf("message %d changed", i)
		}
		inArena := within(m, arena)
		if inArena != (i < 65) {
			t.Fatalf("message %d in arena: %v", i, inArena)
		}
	}
	if within(rel, arena) {
		t.Fatal("a relation message was copied into the arena")
	}
	if len(b.msgs) != 101 || b.size != 100*1000+len("R relation") {
		t.Fatalf("%d messages, %d bytes", len(b.msgs), b.size)
	}
	b.recycle(free)
	b = nextBatch(free)
	if want := 100*1000 + 100*1000/4; cap(b.arena) != want || len(b.msgs) != 0 || b.size != 0 {
		t.Fatalf("arena %d (want %d), %d messages, %d bytes after recycle", cap(b.arena), want, len(b.msgs), b.size)
	}
	b.add([]byte("I small")) // a smaller batch keeps an arena up to four times its need
	b.recycle(free)
	if b = nextBatch(free); cap(b.arena) != 125000 {
		t.Fatalf("arena %d after a small batch, want 125000 kept", cap(b.arena))
	}
	big := bytes.Repeat([]byte{'D'}, 1<<20)
	b.add(big)
	b.recycle(free)
	if b = nextBatch(free); cap(b.arena) != maxArena {
		t.Fatalf("arena %d after 1 MiB, want %d (the most)", cap(b.arena), maxArena)
	}
	b.add([]byte("I small"))
	b.recycle(free)
	if b = nextBatch(free); cap(b.arena) != minArena {
		t.Fatalf("arena %d after a small batch, want %d", cap(b.arena), minArena)
	}
}

// within reports whether m starts inside arena's memory.
func within(m, arena []byte) bool {
	p, lo := uintptr(unsafe.Pointer(&m[0])), uintptr(unsafe.Pointer(&arena[0]))
	return p >= lo && p < lo+uintptr(len(arena))
}

// TestReusedBatchesKeepValues checks the reuse of the reader's batches
// (msgBatch) against a server: rows of ~1 KB, distinct, in two tables and
// many transactions, with an emitter that pauses now and then so the
// reader's read-ahead fills and every arena is reused many times. A batch
// recycled before its messages were handled, or a row value kept uncopied,
// shows up as another row's bytes. Every value is checked at Emit, and the
// recorder's copies (event.CloneImage) again at the end.
func TestReusedBatchesKeepValues(t *testing.T) {
	pg := testharness.Postgres(t)
	db := pg.NewDatabase(t)
	pg.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY, pad text); CREATE TABLE b (id int PRIMARY KEY, pad text)`)
	src := newSource(t, testConfig(pg, db, "reused-batches", "public.a", "public.b"))
	rec := newRecorder(src, true)
	var bad []string
	n := 0
	rec.onEmit = func(c *event.Change) {
		id, _ := c.After[0].(int64)
		if pad, _ := c.After[1].(string); pad != testharness.Pad(c.Table.Name, id) && len(bad) < 5 {
			bad = append(bad, fmt.Sprintf("%s id %d: %.40q", c.Table.Name, id, pad))
		}
		if n++; n%100 == 0 {
			time.Sleep(5 * time.Millisecond) // the reader gets ahead: its read-ahead fills
		}
	}
	r := startRun(t, src, nil, rec)
	waitStreaming(t, pg, db, r)
	const txns, per = 40, 50
	for i := 0; i < txns; i++ {
		lo, hi := i*per+1, (i+1)*per
		pg.Exec(t, db, fmt.Sprintf(`BEGIN;
			INSERT INTO a SELECT g, %s FROM generate_series(%d, %d) g;
			INSERT INTO b SELECT g, %s FROM generate_series(%d, %d) g;
			COMMIT`, testharness.PadSQL(true, "a", "g"), lo, hi, testharness.PadSQL(true, "b", "g"), lo, hi))
	}
	const long = 3000 // one transaction of ~3 MB: several full batches
	pg.Exec(t, db, fmt.Sprintf(`INSERT INTO a SELECT g, %s FROM generate_series(100001, %d) g`, testharness.PadSQL(true, "a", "g"), 100000+long))
	total := 2*txns*per + long
	waitFor(t, 60*time.Second, "every row", func() bool { return len(rec.changes()) >= total })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("values changed under the stream: %v", bad)
	}
	testharness.CheckPads(t, rec.changes(), total) // the recorder's copies, after the stream moved on
}
