package kafka

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"

	"github.com/plumecdc/plume/pkg/config"
	plumekafka "github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/target"
)

// Accepted values of the enumerated keys.
const (
	ValueEvent = "event" // value: the original CloudEvent record (value and headers)
	ValueRow   = "row"   // value: Message.Row as JSON, CloudEvents headers kept

	KeySubject = "subject" // key: the rendered primary key (the input record's key)
	KeyNone    = "none"    // key: no key (records spread over the partitions)
)

// Limits of max_message_bytes: what franz-go accepts as a record batch size.
const (
	minMessageBytes = 512
	maxMessageBytes = 1<<30 - 1<<20 // leaves room for the produce request around a batch
)

// Config is the configuration block of a target of type kafka
// (targets.<name> in the pipeline file). See docs/targets/kafka.md.
type Config struct {
	// Brokers are the seed brokers of the cluster to write to. Empty means
	// the pipeline's own cluster (with its kafka.tls and kafka.sasl).
	Brokers []string `yaml:"brokers"`
	// Topic is the fixed output topic; exactly one of Topic and TopicExpr.
	Topic string `yaml:"topic"`
	// TopicExpr is an expr-lang expression over {table, schema, database,
	// op, route} returning the output topic.
	TopicExpr string `yaml:"topic_expr"`
	// Value is ValueEvent (default) or ValueRow.
	Value string `yaml:"value"`
	// Key is KeySubject (default) or KeyNone.
	Key string `yaml:"key"`
	// Topics are the settings of output topics the target creates.
	Topics config.Topics `yaml:"topics"`
	// TLS and SASL reach another cluster; the same shapes as the
	// pipeline's kafka block. Only valid with Brokers.
	TLS  config.KafkaTLS `yaml:"tls"`
	SASL config.SASL     `yaml:"sasl"`
	// Compression is the producer codec; default the pipeline's
	// kafka.compression.
	Compression string `yaml:"compression"`
	// MaxMessageBytes caps the size of one output record (and of a record
	// batch); default the pipeline's kafka.max_message_bytes. The limit in
	// force for a topic is the smaller of this and the topic's
	// max.message.bytes. A larger record is rejected (dead-lettered).
	MaxMessageBytes int `yaml:"max_message_bytes"`
}

// TopicEnv is what a topic_expr expression sees.
type TopicEnv struct {
	Table    string `expr:"table"`
	Schema   string `expr:"schema"`   // PostgreSQL schema; "" for MySQL
	Database string `expr:"database"` // the source database
	Op       string `expr:"op"`       // insert, update, delete, read, truncate
	Route    string `expr:"route"`    // the route that sent the message
}

// settings is a validated Config of one target of one pipeline.
type settings struct {
	pipeline string
	name     string
	// prefix is the pipeline's topic prefix; with sameCluster, topics under
	// "<prefix>." would be read back by the pipeline's own delivery loops.
	prefix      string
	sameCluster bool
	// client resolves the Kafka client settings; called by Open only (the
	// factory must not connect, and the embedded broker's address is only
	// known at run time).
	client func() (plumekafka.ClientConfig, error)

	topic     string      // fixed topic, or ""
	topicExpr *vm.Program // compiled topic_expr, or nil
	row       bool        // value: row
	keyed     bool        // key: subject
	spec      plumekafka.TopicSpec
	maxBytes  int32

	txnID        string // plume.<pipeline>.<target>.reroute
	offsetsTopic string // <topic_prefix>.<pipeline>.<target>.offsets
}

// TransactionalID returns the target's transactional id:
// "plume.<pipeline>.<target>.reroute".
func TransactionalID(pipeline, targetName string) string {
	return "plume." + pipeline + "." + targetName + ".reroute"
}

// OffsetsTopic returns the topic holding the target's committed input
// offsets: "<topic_prefix>.<pipeline>.<target>.offsets". It is under the
// pipeline's topic prefix, so on the pipeline's own cluster the delivery
// loops must exclude it (like the checkpoint and DLQ topics).
func OffsetsTopic(p *config.Pipeline, targetName string) string {
	return p.TopicPrefix() + "." + p.Name + "." + targetName + ".offsets"
}

func checkTopicName(s string) error {
	if !config.ValidTopicName(s) {
		return fmt.Errorf("invalid Kafka topic name %q: want 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'", s)
	}
	return nil
}

// parse decodes and validates the target's block. Errors are *config.Error
// values (a config.ErrorList when there are several) at the offending key.
func parse(env target.Env) (*settings, error) {
	p := env.Pipeline
	if p == nil {
		return nil, fmt.Errorf("kafka target %q: no pipeline configuration", env.Name)
	}
	c := env.Config
	cfg := Config{
		Value:           ValueEvent,
		Key:             KeySubject,
		Topics:          config.Topics{Partitions: 1, ReplicationFactor: -1},
		Compression:     p.Kafka.Compression,
		MaxMessageBytes: p.Kafka.MaxMessageBytes,
		// When the tls block is present, enabled defaults to true (as for
		// kafka.tls); reset below when it is absent.
		TLS: config.KafkaTLS{Enabled: true},
	}
	if err := c.Decode(&cfg); err != nil {
		return nil, err
	}
	if !c.Has("tls") {
		cfg.TLS.Enabled = false
	}
	if !c.Has("max_message_bytes") {
		// The pipeline's kafka.max_message_bytes, within what the client
		// accepts.
		if cfg.MaxMessageBytes == 0 {
			cfg.MaxMessageBytes = config.DefaultMaxMessageBytes
		}
		cfg.MaxMessageBytes = min(max(cfg.MaxMessageBytes, minMessageBytes), maxMessageBytes)
	}

	var errs config.ErrorList
	bad := func(key, format string, args ...any) {
		var e *config.Error
		if errors.As(c.Errorf(key, format, args...), &e) {
			errs = append(errs, e)
		}
	}
	// badIn reports about a key nested in a block (its position: the block's).
	badIn := func(block, key, format string, args ...any) {
		var e *config.Error
		if errors.As(c.PosOf(block).Errorf(c.Key(block)+"."+key, format, args...), &e) {
			errs = append(errs, e)
		}
	}

	s := &settings{
		pipeline:     p.Name,
		name:         env.Name,
		prefix:       p.TopicPrefix(),
		row:          cfg.Value == ValueRow,
		keyed:        cfg.Key == KeySubject,
		txnID:        TransactionalID(p.Name, env.Name),
		offsetsTopic: OffsetsTopic(p, env.Name),
		spec: plumekafka.TopicSpec{
			Partitions:        cfg.Topics.Partitions,
			ReplicationFactor: cfg.Topics.ReplicationFactor,
			Configs:           cfg.Topics.Configs,
		},
	}

	// Brokers.
	seen := map[string]bool{}
	for _, b := range cfg.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			bad("brokers", "invalid broker address %q: want host:port", b)
		} else if seen[b] {
			bad("brokers", "duplicate broker %q", b)
		}
		seen[b] = true
	}
	switch {
	case len(cfg.Brokers) == 0:
		s.sameCluster = true
	case len(p.Kafka.Brokers) > 0:
		own := slices.Clone(p.Kafka.Brokers)
		mine := slices.Clone(cfg.Brokers)
		slices.Sort(own)
		slices.Sort(mine)
		s.sameCluster = slices.Equal(own, mine)
	}

	// Output topic.
	switch {
	case cfg.Topic == "" && strings.TrimSpace(cfg.TopicExpr) == "":
		bad("topic", "required: set topic or topic_expr")
	case cfg.Topic != "" && cfg.TopicExpr != "":
		bad("topic_expr", "set either topic or topic_expr, not both")
	case cfg.Topic != "":
		if err := s.checkTopic(cfg.Topic); err != nil {
			bad("topic", "%v", err)
		}
		s.topic = cfg.Topic
	default:
		prog, err := expr.Compile(cfg.TopicExpr, expr.Env(TopicEnv{}), expr.AsKind(reflect.String))
		if err != nil {
			bad("topic_expr", "%v", err)
		}
		s.topicExpr = prog
	}

	switch cfg.Value {
	case ValueEvent, ValueRow:
	default:
		bad("value", "invalid value %q: want %s or %s", cfg.Value, ValueEvent, ValueRow)
	}
	switch cfg.Key {
	case KeySubject, KeyNone:
	default:
		bad("key", "invalid value %q: want %s or %s", cfg.Key, KeySubject, KeyNone)
	}

	if cfg.Topics.Partitions < 1 {
		badIn("topics", "partitions", "must be at least 1, got %d", cfg.Topics.Partitions)
	}
	if rf := cfg.Topics.ReplicationFactor; rf < 1 && rf != -1 {
		badIn("topics", "replication_factor", "must be -1 (broker default) or at least 1, got %d", rf)
	}
	for name := range cfg.Topics.Configs {
		if strings.TrimSpace(name) == "" {
			badIn("topics", "configs", "empty topic config name")
		}
	}

	switch strings.ToLower(cfg.Compression) {
	case "", "none", "gzip", "snappy", "lz4", "zstd":
	default:
		bad("compression", "invalid value %q: want none, gzip, snappy, lz4 or zstd", cfg.Compression)
	}
	if cfg.MaxMessageBytes < minMessageBytes || cfg.MaxMessageBytes > maxMessageBytes {
		bad("max_message_bytes", "must be in [%d, %d], got %d", minMessageBytes, maxMessageBytes, cfg.MaxMessageBytes)
	}
	s.maxBytes = int32(min(max(cfg.MaxMessageBytes, minMessageBytes), maxMessageBytes))

	// TLS and SASL: only for a cluster named here; the pipeline's own
	// cluster is reached with the pipeline's kafka.tls and kafka.sasl.
	hasSASL := c.Has("sasl") || cfg.SASL != (config.SASL{})
	if len(cfg.Brokers) == 0 {
		if c.Has("tls") {
			bad("tls", "only valid with brokers (without brokers the target uses the pipeline's own cluster, with kafka.tls)")
		}
		if hasSASL {
			bad("sasl", "only valid with brokers (without brokers the target uses the pipeline's own cluster, with kafka.sasl)")
		}
	} else {
		t := &cfg.TLS.TLS
		if (t.CertFile == "") != (t.KeyFile == "") {
			badIn("tls", "cert_file", "cert_file and key_file go together")
		}
		if hasSASL {
			switch cfg.SASL.Mechanism {
			case config.SASLPlain, config.SASLScramSHA256, config.SASLScramSHA512:
			case "":
				badIn("sasl", "mechanism", "required")
			default:
				badIn("sasl", "mechanism", "invalid value %q: want %s, %s or %s", cfg.SASL.Mechanism,
					config.SASLPlain, config.SASLScramSHA256, config.SASLScramSHA512)
			}
			if cfg.SASL.Username == "" {
				badIn("sasl", "username", "required")
			}
			if !cfg.SASL.Password.IsSet() {
				badIn("sasl", "password", "required")
			}
		}
	}
	if len(errs) > 0 {
		if len(errs) == 1 {
			return nil, errs[0]
		}
		return nil, errs
	}

	// Client settings.
	if len(cfg.Brokers) == 0 {
		s.client = func() (plumekafka.ClientConfig, error) { return pipelineClient(env, cfg.Compression) }
		return s, nil
	}
	cc := plumekafka.ClientConfig{
		Brokers:       slices.Clone(cfg.Brokers),
		Compression:   cfg.Compression,
		SASLMechanism: cfg.SASL.Mechanism,
		SASLUser:      cfg.SASL.Username,
		SASLPassword:  cfg.SASL.Password.Reveal(),
	}
	if cfg.TLS.Enabled {
		t := cfg.TLS.TLS
		for _, f := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
			if *f != "" && !filepath.IsAbs(*f) {
				*f = filepath.Join(p.Dir, *f)
			}
		}
		tc, err := t.ClientConfig()
		if err != nil {
			return nil, c.Errorf("tls", "%v", err)
		}
		cc.TLS = tc
	}
	s.client = func() (plumekafka.ClientConfig, error) { return cc, nil }
	return s, nil
}

// checkTopic checks an output topic: a legal name, not the offsets topic,
// and not one the pipeline itself consumes.
func (s *settings) checkTopic(topic string) error {
	if err := checkTopicName(topic); err != nil {
		return err
	}
	if topic == s.offsetsTopic {
		return fmt.Errorf("%q is the target's own offsets topic", topic)
	}
	if s.sameCluster && strings.HasPrefix(topic, s.prefix+".") {
		return fmt.Errorf("topic %q is under the pipeline's topic prefix %q on the pipeline's own cluster: "+
			"the pipeline would read its own output back (an endless loop); choose a topic outside %q",
			topic, s.prefix+".", s.prefix+".*")
	}
	return nil
}

// errEmbedded is returned (as Permanent) by Open when the target has no
// brokers, the pipeline uses the embedded broker, and the runtime did not
// pass its address (a target built outside a running pipeline).
var errEmbedded = errors.New("the target has no brokers and the pipeline's embedded broker address was not provided")

// pipelineClient returns the settings of the pipeline's own cluster: those
// the runtime resolved (env.Kafka: the embedded broker's actual address, or
// kafka.brokers with kafka.tls and kafka.sasl), else the pipeline's kafka
// block itself (a target built outside the runtime), with the target's
// compression.
func pipelineClient(env target.Env, compression string) (plumekafka.ClientConfig, error) {
	cc := env.Kafka
	if len(cc.Brokers) == 0 {
		p := env.Pipeline
		if p.Embedded() {
			return plumekafka.ClientConfig{}, errEmbedded
		}
		cc = plumekafka.ClientConfig{
			Brokers:       p.Kafka.Brokers,
			SASLMechanism: p.Kafka.SASL.Mechanism,
			SASLUser:      p.Kafka.SASL.Username,
			SASLPassword:  p.Kafka.SASL.Password.Reveal(),
		}
		if p.Kafka.TLS.Enabled {
			tc, err := p.Kafka.TLS.TLS.ClientConfig()
			if err != nil {
				return cc, fmt.Errorf("kafka.tls: %w", err)
			}
			cc.TLS = tc
		}
	}
	cc.Brokers = slices.Clone(cc.Brokers)
	cc.Compression = compression
	return cc, nil
}
