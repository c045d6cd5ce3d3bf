package kafka

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

var ownBrokers = []string{"kafka-1:9092", "kafka-2:9092"}

func TestConfigDefaults(t *testing.T) {
	tg, err := build(t, parsePipeline(t, ownBrokers, "    type: kafka\n    topic: erp.products\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := tg.set
	switch {
	case s.topic != "erp.products" || s.topicExpr != nil:
		t.Errorf("topic %q expr %v", s.topic, s.topicExpr)
	case s.row || !s.keyed:
		t.Errorf("value/key defaults: row=%v keyed=%v, want event and subject", s.row, s.keyed)
	case s.txnID != "plume.shop.out.reroute":
		t.Errorf("transactional id %q", s.txnID)
	case s.offsetsTopic != "shop.shop.out.offsets":
		t.Errorf("offsets topic %q", s.offsetsTopic)
	case !s.sameCluster:
		t.Error("no brokers: want the pipeline's own cluster")
	case s.spec.Partitions != 1 || s.spec.ReplicationFactor != -1:
		t.Errorf("topics: %+v", s.spec)
	case s.maxBytes != config.DefaultMaxMessageBytes:
		t.Errorf("max bytes %d", s.maxBytes)
	}
	cc, err := s.client()
	if err != nil || strings.Join(cc.Brokers, ",") != strings.Join(ownBrokers, ",") || cc.Compression != "zstd" {
		t.Errorf("client: %+v, %v; want the pipeline's brokers", cc, err)
	}

	tg, err = build(t, parsePipeline(t, ownBrokers, `    type: kafka
    brokers: ["other:9092"]
    topic: shop.products
    value: row
    key: none
    compression: lz4
    max_message_bytes: 4096
    topics: { partitions: 3, replication_factor: 2, configs: { retention.ms: "1000" } }
    sasl: { mechanism: SCRAM-SHA-512, username: u, password: "secret" }
`))
	if err != nil {
		t.Fatal(err)
	}
	s = tg.set
	if s.sameCluster || !s.row || s.keyed || s.maxBytes != 4096 || s.spec.Partitions != 3 ||
		s.spec.ReplicationFactor != 2 || s.spec.Configs["retention.ms"] != "1000" {
		t.Errorf("settings: %+v", s)
	}
	cc, err = s.client()
	if err != nil || cc.Brokers[0] != "other:9092" || cc.SASLMechanism != "SCRAM-SHA-512" || cc.SASLPassword != "secret" ||
		cc.Compression != "lz4" || cc.TLS != nil {
		t.Errorf("client: %v", err)
	}
}

// TestConfigErrors checks that bad options are rejected by the factory,
// with the file position of the offending key.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, keys string
		want       []string // substrings of the error
	}{
		{"unknown key", "    topic: a\n    tpoic: b\n", []string{"pipeline.yaml:16:5: targets.out.tpoic: unknown key", `did you mean "topic"`}},
		{"no topic", "    value: row\n", []string{"targets.out.topic: required"}},
		{"both topics", "    topic: a\n    topic_expr: '\"b\"'\n", []string{"targets.out.topic_expr: set either topic or topic_expr"}},
		{"bad expression", "    topic_expr: 'tabel + \"x\"'\n", []string{"pipeline.yaml:15:17: targets.out.topic_expr:", "unknown name tabel"}},
		{"expression not a string", "    topic_expr: 'len(table)'\n", []string{"targets.out.topic_expr:", "string"}},
		{"bad value", "    topic: a\n    value: envelope\n", []string{"pipeline.yaml:16:12: targets.out.value: invalid value \"envelope\""}},
		{"bad key", "    topic: a\n    key: id\n", []string{"targets.out.key: invalid value \"id\""}},
		{"bad topic name", "    topic: 'a b'\n", []string{"targets.out.topic: invalid Kafka topic name"}},
		{"loop", "    topic: shop.public.products2\n", []string{"targets.out.topic:", "endless loop"}},
		{"offsets topic", "    brokers: [\"x:9092\"]\n    topic: shop.shop.out.offsets\n", []string{"own offsets topic"}},
		{"tls without brokers", "    topic: a\n    tls: { ca_file: ca.pem }\n", []string{"targets.out.tls: only valid with brokers"}},
		{"sasl without brokers", "    topic: a\n    sasl: { mechanism: PLAIN, username: u, password: p }\n", []string{"targets.out.sasl: only valid with brokers"}},
		{"sasl incomplete", "    brokers: [\"x:9092\"]\n    topic: a\n    sasl: { mechanism: PLAINTEXT }\n",
			[]string{"targets.out.sasl.mechanism: invalid value", "targets.out.sasl.username: required", "targets.out.sasl.password: required"}},
		{"bad broker", "    brokers: [\"x\"]\n    topic: a\n", []string{"targets.out.brokers: invalid broker address \"x\""}},
		{"tls file", "    brokers: [\"x:9092\"]\n    topic: a\n    tls: { ca_file: /nonexistent/ca.pem }\n", []string{"targets.out.tls:", "ca_file"}},
		{"partitions", "    topic: a\n    topics: { partitions: 0 }\n", []string{"targets.out.topics.partitions: must be at least 1"}},
		{"replication", "    topic: a\n    topics: { replication_factor: 0 }\n", []string{"targets.out.topics.replication_factor"}},
		{"max bytes", "    topic: a\n    max_message_bytes: 10\n", []string{"targets.out.max_message_bytes: must be in"}},
		{"compression", "    topic: a\n    compression: brotli\n", []string{"targets.out.compression: invalid value"}},
		{"wrong type", "    topic: [a]\n", []string{"targets.out.topic:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := build(t, parsePipeline(t, ownBrokers, "    type: kafka\n"+tc.keys))
			if err == nil {
				t.Fatal("accepted")
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not a *config.Error: %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestConfigLoopCheckIsPerCluster: a topic under the pipeline's prefix is
// fine on another cluster.
func TestConfigLoopCheckIsPerCluster(t *testing.T) {
	if _, err := build(t, parsePipeline(t, ownBrokers, "    type: kafka\n    brokers: [\"other:9092\"]\n    topic: shop.public.products\n")); err != nil {
		t.Fatalf("another cluster: %v", err)
	}
	// The pipeline's own brokers, named explicitly (in another order).
	_, err := build(t, parsePipeline(t, ownBrokers, "    type: kafka\n    brokers: [\"kafka-2:9092\", \"kafka-1:9092\"]\n    topic: shop.public.products\n"))
	if err == nil || !strings.Contains(err.Error(), "endless loop") {
		t.Fatalf("own cluster named explicitly: %v", err)
	}
}

// TestFactoryDoesNotConnect: building (plume validate) and closing a target
// whose brokers do not exist is quick and fine; Open is what connects.
func TestFactoryDoesNotConnect(t *testing.T) {
	start := time.Now()
	tg, err := build(t, parsePipeline(t, nil, "    type: kafka\n    brokers: [\"127.0.0.1:1\"]\n    topic: erp.products\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("factory took %v", d)
	}
	if !slices.Contains(target.Types(), "kafka") {
		t.Fatalf("kafka not registered: %v", target.Types())
	}
}

// TestEmbeddedBrokerNeedsRuntimeSupport: without brokers, and without the
// pipeline's client settings from the runtime, the factory accepts the
// target (validate passes) and Open fails permanently with an explanation.
func TestEmbeddedBrokerNeedsRuntimeSupport(t *testing.T) {
	tg, err := build(t, parsePipeline(t, nil, "    type: kafka\n    topic: erp.products\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	_, err = tg.Open(context.Background())
	if !target.IsPermanent(err) || !errors.Is(err, errEmbedded) {
		t.Fatalf("open: %v, want a permanent errEmbedded", err)
	}
}
