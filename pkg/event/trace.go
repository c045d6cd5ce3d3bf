package event

import (
	"encoding/binary"
	"encoding/hex"
	"hash/fnv"
	"math"
)

// TraceContext is the W3C trace context of one source transaction: every
// event of the transaction carries it as its traceparent extension. It is
// deterministic, derived from the pipeline and the transaction's source
// position, so a replayed event carries the same traceparent as the first
// delivery, and the record bytes stay identical.
type TraceContext struct {
	TraceID [16]byte // FNV-128a of pipeline, connector, database and position
	SpanID  [8]byte  // the capture span of the transaction: FNV-64a of the trace id
	Sampled bool
}

// NewTraceContext derives the trace context of the source transaction at
// position pos. ratio (0..1) is the share of transactions marked sampled,
// decided from the trace id so every process agrees.
func NewTraceContext(pipeline, connector, database, pos string, ratio float64) TraceContext {
	h := fnv.New128a()
	for _, s := range []string{pipeline, connector, database, pos} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var tc TraceContext
	h.Sum(tc.TraceID[:0])
	if tc.TraceID == ([16]byte{}) {
		tc.TraceID[15] = 1 // all zeros is invalid
	}
	s := fnv.New64a()
	s.Write(tc.TraceID[:])
	s.Write([]byte("capture"))
	s.Sum(tc.SpanID[:0])
	if tc.SpanID == ([8]byte{}) {
		tc.SpanID[7] = 1
	}
	switch {
	case ratio >= 1:
		tc.Sampled = true
	case ratio > 0:
		tc.Sampled = float64(mix64(binary.BigEndian.Uint64(tc.TraceID[:8])^binary.BigEndian.Uint64(tc.TraceID[8:]))) < ratio*math.MaxUint64
	}
	return tc
}

// String renders the traceparent: "00-<trace id>-<span id>-<flags>".
func (tc TraceContext) String() string {
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], tc.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], tc.SpanID[:])
	copy(b[52:], "-00")
	if tc.Sampled {
		b[54] = '1'
	}
	return string(b[:])
}

// ParseTraceParent parses a version-00 traceparent.
func ParseTraceParent(s string) (TraceContext, bool) {
	var tc TraceContext
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return tc, false
	}
	if _, err := hex.Decode(tc.TraceID[:], []byte(s[3:35])); err != nil {
		return tc, false
	}
	if _, err := hex.Decode(tc.SpanID[:], []byte(s[36:52])); err != nil {
		return tc, false
	}
	var flags [1]byte
	if _, err := hex.Decode(flags[:], []byte(s[53:55])); err != nil {
		return tc, false
	}
	if tc.TraceID == ([16]byte{}) || tc.SpanID == ([8]byte{}) {
		return tc, false
	}
	tc.Sampled = flags[0]&1 == 1
	return tc, true
}

// mix64 is splitmix64's finalizer: FNV's bits are not uniform enough to
// compare against a ratio directly.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
