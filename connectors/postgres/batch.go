package postgres

// readAhead is how many batches of messages wait between the reader and
// the stream.
const readAhead = 4

// msgBatch is a batch of pgoutput messages handed from the reader to the
// stream (Source.readLoop), with the storage its row messages are copied
// into.
//
// Reuse. Row messages (Insert, Update, Delete) are copied into arena, and
// the stream's changes point into it: parseRowMessage and aliasString use
// the bytes in place. A batch goes back to the reader (recycle) only after
// the stream has handled every message in it, and by then nothing refers to
// the arena: capture.Emitter keeps nothing of a change (its images
// included), the stream keeps no message or tuple (parseRowMessage), and
// the catch-up rule reads row images without keeping them (streamer.keep).
// Every other message (relations, types, logical decoding messages, begin
// and commit) is copied into memory of its own, because the stream keeps
// parts of some (relation and type names).
//
// The arena never grows: a row message that does not fit is copied on its
// own, and the next use of the batch gets an arena a quarter larger than
// what this one needed (at least minArena, at most maxArena); an arena more
// than four times what a batch needed is replaced by a smaller one. So it
// settles at what a batch of the stream's rows takes.
type msgBatch struct {
	msgs  [][]byte
	size  int    // bytes in msgs
	arena []byte // row messages' storage
	need  int    // bytes of row messages added since the last recycle
}

const (
	minArena = 64 << 10
	maxArena = 1<<20 + 64<<10 // a batch is sent once it holds 1 MiB
)

func nextBatch(free chan *msgBatch) *msgBatch {
	select {
	case b := <-free:
		return b
	default:
		return &msgBatch{msgs: make([][]byte, 0, 64)}
	}
}

// add appends a copy of data and returns the copy.
func (b *msgBatch) add(data []byte) []byte {
	var c []byte
	if len(data) > 0 && (data[0] == 'I' || data[0] == 'U' || data[0] == 'D') {
		b.need += len(data)
		if n := len(b.arena); n+len(data) <= cap(b.arena) {
			b.arena = append(b.arena, data...)
			c = b.arena[n:len(b.arena):len(b.arena)]
		}
	}
	if c == nil {
		c = append([]byte(nil), data...)
	}
	b.msgs = append(b.msgs, c)
	b.size += len(c)
	return c
}

// recycle empties the batch and offers it to the reader again. Only call it
// once every message in it has been handled.
func (b *msgBatch) recycle(free chan *msgBatch) {
	if want := min(max(b.need+b.need/4, minArena), maxArena); b.need > cap(b.arena) || cap(b.arena) > 4*want {
		b.arena = make([]byte, 0, want)
	}
	clear(b.msgs)
	b.msgs, b.size, b.arena, b.need = b.msgs[:0], 0, b.arena[:0], 0
	select {
	case free <- b:
	default:
	}
}
