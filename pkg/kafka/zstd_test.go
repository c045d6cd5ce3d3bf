package kafka

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestZstdCompressorRoundTrip(t *testing.T) {
	c := newZstdCompressor()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				src := bytes.Repeat([]byte(fmt.Sprintf(`{"id":%d,"g":%d,"payload":"abcdefgh"}`, i, g)), 1+i*37)
				out, codec := c.Compress(new(bytes.Buffer), src)
				if codec != kgo.CodecZstd {
					errs <- fmt.Errorf("codec %v, want zstd", codec)
					return
				}
				got, err := dec.DecodeAll(out, nil)
				if err != nil || !bytes.Equal(got, src) {
					errs <- fmt.Errorf("round trip of %d bytes: err %v, equal %v", len(src), err, bytes.Equal(got, src))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(c.free); n < 1 || n > 4 {
		t.Fatalf("%d encoders kept, want 1..4 (one per concurrent Compress)", n)
	}
}

func TestZstdCompressorOldBroker(t *testing.T) {
	src := []byte("plain")
	out, codec := newZstdCompressor().Compress(new(bytes.Buffer), src, kgo.CompressDisableZstd)
	if codec != kgo.CodecNone || !bytes.Equal(out, src) {
		t.Fatalf("got %q, codec %v; want the input uncompressed", out, codec)
	}
}

func TestDefaultCompressionUsesZstdCompressor(t *testing.T) {
	opts, err := ClientConfig{Brokers: []string{"127.0.0.1:1"}}.Opts()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := cl.OptValue(kgo.WithCompressor)
	if _, ok := got.(*zstdCompressor); !ok {
		t.Fatalf("compressor %T, want *zstdCompressor", got)
	}
}
