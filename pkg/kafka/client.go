// Package kafka holds Plume's one path to Kafka: client options (TLS, SASL,
// compression), topic administration with kadm, and the embedded broker that
// stands in for a cluster on a single machine. Whether the broker is embedded
// or a real cluster, the rest of Plume uses the same franz-go client code.
package kafka

import (
	"crypto/tls"
	"fmt"
	"github.com/klauspost/compress/zstd"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// ClientConfig is how to reach the brokers.
type ClientConfig struct {
	Brokers []string
	TLS     *tls.Config // nil: plaintext
	// SASLMechanism is "", "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512".
	SASLMechanism string
	SASLUser      string
	SASLPassword  string
	// Compression is "none", "gzip", "snappy", "lz4" or "zstd" (default).
	Compression string
}

// Opts returns the kgo options common to every client Plume creates.
func (c ClientConfig) Opts() ([]kgo.Opt, error) {
	if len(c.Brokers) == 0 {
		return nil, fmt.Errorf("kafka: no brokers")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...)}
	if c.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(c.TLS))
	}
	switch strings.ToUpper(c.SASLMechanism) {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka: unknown SASL mechanism %q", c.SASLMechanism)
	}
	codec, err := compression(c.Compression)
	if err != nil {
		return nil, err
	}
	if codec == defaultZstd {
		opts = append(opts, kgo.WithCompressor(newZstdCompressor()))
	} else {
		opts = append(opts, kgo.ProducerBatchCompression(codec))
	}
	return opts, nil
}

// defaultZstd is zstd's fastest level: on JSON change envelopes about 25%
// less CPU than the default level at a similar ratio (capture is CPU-bound
// on small machines; see bench/results). Producers compress it with
// zstdCompressor.
var defaultZstd = kgo.ZstdCompression().WithLevel(int(zstd.SpeedFastest))

func compression(name string) (kgo.CompressionCodec, error) {
	switch strings.ToLower(name) {
	case "", "zstd":
		return defaultZstd, nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "none":
		return kgo.NoCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("kafka: unknown compression %q", name)
}
