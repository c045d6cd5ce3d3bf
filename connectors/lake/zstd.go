package lake

import (
	"sync"

	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/klauspost/compress/zstd"
)

// zstdCodec is arrow-go's Parquet zstd codec with encoders that keep a
// 1 MiB window. arrow-go's own encoders use zstd's default 8 MiB window and
// allocate about 22 MB of match history the first time a file is written
// (measured: 16 MB in ensureHist, 5.6 MB in the encoder). A Parquet page
// is compressed on its own and pages are about 1 MiB, so a longer window
// finds nothing more. Decoding and the streaming API stay arrow-go's.
type zstdCodec struct {
	compress.Codec // arrow-go's codec: decoding, CompressBound
}

var zstdEncoders sync.Map // zstd.EncoderLevel -> *sync.Pool of *zstd.Encoder

func init() {
	base, err := compress.GetCodec(compress.Codecs.Zstd)
	if err != nil {
		panic(err)
	}
	compress.RegisterCodec(compress.Codecs.Zstd, zstdCodec{base})
}

func (z zstdCodec) Encode(dst, src []byte) []byte {
	return z.EncodeLevel(dst, src, compress.DefaultCompressionLevel)
}

func (z zstdCodec) EncodeLevel(dst, src []byte, level int) []byte {
	l := zstd.SpeedDefault
	if level != compress.DefaultCompressionLevel {
		l = zstd.EncoderLevelFromZstd(level)
	}
	p, ok := zstdEncoders.Load(l)
	if !ok {
		p, _ = zstdEncoders.LoadOrStore(l, &sync.Pool{New: func() any {
			enc, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true), zstd.WithEncoderLevel(l),
				zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20), zstd.WithAllLitEntropyCompression(true))
			if err != nil {
				panic(err) // the options are constants
			}
			return enc
		}})
	}
	pool := p.(*sync.Pool)
	enc := pool.Get().(*zstd.Encoder)
	defer pool.Put(enc)
	return enc.EncodeAll(src, dst[:0])
}
