package kafka

import (
	"bytes"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/twmb/franz-go/pkg/kgo"
)

// zstdCompressor is the producers' zstd codec (kgo.WithCompressor).
//
// franz-go's built-in compressor keeps its zstd encoders in a sync.Pool,
// which drops them at every garbage collection. Capture collects several
// times a second (GOGC=50), so it rebuilt its encoders (history and block
// buffers, about half a MB each) over and over and held the dropped ones
// until their finalizers ran: about 6 MB of a snapshot's 30 MB live heap
// was zstd state (heap profile, PostgreSQL snapshot, 4 workers).
//
// This one keeps its encoders: one per concurrent Compress (kgo compresses
// in one goroutine per broker), reused for the client's life. The output
// is what kgo's would be: zstd's fastest level, a 64 KiB window (a batch is
// at most kafka.max_message_bytes; a larger window only costs memory), one
// goroutine per encoder, and zero-length frames allowed; unlike kgo's, its
// frames carry no checksum (see get).
type zstdCompressor struct {
	mu   sync.Mutex
	free []*zstd.Encoder
}

func newZstdCompressor() *zstdCompressor { return &zstdCompressor{} }

// Compress implements kgo.Compressor.
func (c *zstdCompressor) Compress(dst *bytes.Buffer, src []byte, flags ...kgo.CompressFlag) ([]byte, kgo.CompressionCodecType) {
	for _, f := range flags {
		if f == kgo.CompressDisableZstd {
			// A broker older than Kafka 2.1 cannot take zstd; kgo's own
			// compressor falls back to no compression the same way.
			return src, kgo.CodecNone
		}
	}
	enc, err := c.get()
	if err != nil {
		return nil, kgo.CodecError
	}
	defer c.put(enc)
	if l := enc.MaxEncodedSize(len(src)); l > dst.Cap() {
		dst.Grow(l)
	}
	return enc.EncodeAll(src, dst.Bytes()), kgo.CodecZstd
}

func (c *zstdCompressor) get() (*zstd.Encoder, error) {
	c.mu.Lock()
	if n := len(c.free); n > 0 {
		enc := c.free[n-1]
		c.free = c.free[:n-1]
		c.mu.Unlock()
		return enc, nil
	}
	c.mu.Unlock()
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(64<<10),
		zstd.WithEncoderConcurrency(1),
		zstd.WithZeroFrames(true),
		// No frame checksum: a Kafka record batch carries its own CRC-32C
		// over the compressed bytes, which the broker checks. The
		// checksum would hash every uncompressed byte once more.
		zstd.WithEncoderCRC(false))
}

func (c *zstdCompressor) put(enc *zstd.Encoder) {
	c.mu.Lock()
	c.free = append(c.free, enc)
	c.mu.Unlock()
}
