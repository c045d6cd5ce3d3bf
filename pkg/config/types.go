package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"
)

// Accepted values of enumerated keys.
const (
	SourceMySQL    = "mysql"    // source.type
	SourcePostgres = "postgres" // source.type

	SnapshotInitial = "initial" // source.snapshot: snapshot included tables, then stream
	SnapshotNever   = "never"   // source.snapshot: stream only

	SnapshotModeWatermark = "watermark" // source.snapshot_mode: lock-free chunks reconciled with the binlog
	SnapshotModeLock      = "lock"      // source.snapshot_mode: brief global read lock, consistent snapshot

	ModeBinary     = "binary"     // kafka.mode: CloudEvents Kafka binary content mode
	ModeStructured = "structured" // kafka.mode: CloudEvents Kafka structured content mode

	OversizeFail = "fail" // kafka.oversize: stop the pipeline
	OversizeDLQ  = "dlq"  // kafka.oversize: send a reference to the DLQ topic

	MaskHash   = "hash"   // routes[].mask value
	MaskRedact = "redact" // routes[].mask value

	SASLPlain       = "PLAIN"         // kafka.sasl.mechanism
	SASLScramSHA256 = "SCRAM-SHA-256" // kafka.sasl.mechanism
	SASLScramSHA512 = "SCRAM-SHA-512" // kafka.sasl.mechanism
)

// Default values applied by Parse (see docs/config.md).
const (
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "text"
	DefaultSnapshot          = SnapshotInitial
	DefaultSnapshotWorkers   = 2
	DefaultSnapshotChunkSize = 10000
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultEmbeddedListen    = "127.0.0.1:9092"
	DefaultPartitions        = 1
	DefaultReplicationFactor = -1 // broker default
	DefaultMode              = ModeBinary
	DefaultTombstones        = true
	DefaultCompression       = "zstd"
	DefaultBatchMaxEvents    = 5000
	DefaultBatchLinger       = 50 * time.Millisecond
	DefaultMaxBufferedBytes  = 16 << 20
	DefaultMaxMessageBytes   = 1 << 20
	DefaultOversize          = OversizeFail
	DefaultWhen              = "true"
	DefaultAdminListen       = "127.0.0.1:8080"
	DefaultMetricsListen     = "127.0.0.1:9100"
)

// Pipeline is one pipeline's configuration: the contents of one YAML file.
// Parse and Load return it with defaults applied, validated, and relative
// paths resolved against the config file's directory.
type Pipeline struct {
	// Name names the pipeline; it is part of topic, slot, group and
	// checkpoint names. It matches [a-z0-9][a-z0-9_-]{0,62}.
	Name string `yaml:"name"`
	// StateDir holds the offset store and the embedded broker's data.
	StateDir string `yaml:"state_dir"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// Source is the database to capture from.
	Source Source `yaml:"source"`
	// Kafka configures the broker events are written to.
	Kafka Kafka `yaml:"kafka"`
	// Routes send events to targets, in file order.
	Routes []Route `yaml:"routes"`
	// Targets are the sinks, by name. Their options are decoded by the
	// connectors with Target.Decode.
	Targets map[string]Target `yaml:"targets"`
	// DLQ configures the dead-letter topic.
	DLQ DLQ `yaml:"dlq"`
	// Admin configures the admin HTTP server; nil when the key is absent.
	Admin *Admin `yaml:"admin"`
	// Metrics configures the metrics HTTP server; nil when the key is absent.
	Metrics *Metrics `yaml:"metrics"`
	// Tracing configures the W3C traceparent on events and optional
	// OpenTelemetry span export.
	Tracing Tracing `yaml:"tracing"`

	// File is the config file name as given to Load or Parse.
	File string `yaml:"-"`
	// Dir is the directory relative paths were resolved against
	// (filepath.Dir(File)).
	Dir string `yaml:"-"`

	meta *meta
}

// Format prints the pipeline as fmt prints a struct (%v, %+v or %#v; other
// verbs print as %v), with secrets redacted. It exists so that no verb
// prints the fields behind its pointers raw.
func (p Pipeline) Format(f fmt.State, verb rune) {
	type plain Pipeline // no methods: avoids recursion
	switch {
	case verb == 'v' && f.Flag('#'):
		fmt.Fprintf(f, "%#v", plain(p))
	case f.Flag('+'):
		fmt.Fprintf(f, "%+v", plain(p))
	default:
		fmt.Fprintf(f, "%v", plain(p))
	}
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error; default info
	Format string `yaml:"format"` // text | json; default text
}

// SlogLevel returns Level as a slog.Level (info for unknown values).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Source is the database to capture changes from.
type Source struct {
	// Type is SourceMySQL or SourcePostgres.
	Type string `yaml:"type"`
	// DSN is the connection string; it prints with its password masked.
	DSN DSN `yaml:"dsn"`
	// Tables is the include list: "db.table" (mysql) or "schema.table"
	// (postgres); each part may use the globs '*' and '?'. See Includes.
	Tables []string `yaml:"tables"`
	// Snapshot is SnapshotInitial or SnapshotNever.
	Snapshot string `yaml:"snapshot"`
	// SnapshotWorkers is the number of tables snapshotted concurrently.
	SnapshotWorkers int `yaml:"snapshot_workers"`
	// SnapshotChunkSize is the number of rows read per snapshot chunk.
	SnapshotChunkSize int `yaml:"snapshot_chunk_size"`
	// HeartbeatInterval is the heartbeat period; 0 disables heartbeats.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	// Keys overrides the key columns of tables ("db.table" -> columns),
	// for tables without a primary key.
	Keys map[string][]string `yaml:"keys"`
	// SnapshotMode is the MySQL snapshot algorithm (mysql only):
	// SnapshotModeWatermark (lock-free, default) or SnapshotModeLock.
	SnapshotMode string `yaml:"snapshot_mode"`
	// ServerID is the MySQL replica server id (mysql only). After Parse it
	// is never 0: 0 is replaced by DeriveServerID(Name).
	ServerID uint32 `yaml:"server_id"`
	// Slot is the replication slot (postgres only); defaults to
	// DefaultSlotName(Name).
	Slot string `yaml:"slot"`
	// Publication is the publication (postgres only); defaults to
	// DefaultPublicationName(Name).
	Publication string `yaml:"publication"`
	// TLS configures TLS to the database.
	TLS TLS `yaml:"tls"`
}

// Includes reports whether the table schema.table (database.table for
// MySQL) matches an entry of Tables. Matching is case-sensitive; in each
// part '*' matches any run of characters and '?' one character.
func (s *Source) Includes(schema, table string) bool {
	for _, t := range s.Tables {
		db, tb, ok := strings.Cut(t, ".")
		if ok && globMatch(db, schema) && globMatch(tb, table) {
			return true
		}
	}
	return false
}

// KeyFor returns the key column override for schema.table, or nil.
func (s *Source) KeyFor(schema, table string) []string {
	return s.Keys[schema+"."+table]
}

// TLS configures a TLS client. File paths are resolved against the config
// file's directory.
type TLS struct {
	CAFile             string `yaml:"ca_file"`              // PEM CA bundle; system roots if empty
	CertFile           string `yaml:"cert_file"`            // PEM client certificate (with KeyFile)
	KeyFile            string `yaml:"key_file"`             // PEM client key (with CertFile)
	ServerName         string `yaml:"server_name"`          // overrides the verified host name
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // do not verify the server certificate
}

// IsZero reports whether no TLS option is set.
func (t TLS) IsZero() bool { return t == TLS{} }

// OptionalClientConfig is ClientConfig for a block that may be absent: nil
// (plaintext, or the DSN's own TLS settings) when no option is set.
func (t TLS) OptionalClientConfig() (*tls.Config, error) {
	if t.IsZero() {
		return nil, nil
	}
	return t.ClientConfig()
}

// ClientConfig builds a *tls.Config from the options, reading the files.
func (t TLS) ClientConfig() (*tls.Config, error) {
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // explicitly requested by the user
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: reading ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: ca_file %s: no PEM certificates found", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: loading cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// KafkaTLS is TLS plus an on/off switch. When the kafka.tls block is present
// Enabled defaults to true.
type KafkaTLS struct {
	Enabled bool `yaml:"enabled"`
	TLS     `yaml:",inline"`
}

// SASL configures Kafka SASL authentication.
type SASL struct {
	Mechanism string `yaml:"mechanism"` // SASLPlain, SASLScramSHA256 or SASLScramSHA512
	Username  string `yaml:"username"`
	Password  Secret `yaml:"password"`
}

// Embedded configures the embedded broker (used when Kafka.Brokers is empty).
type Embedded struct {
	// Listen is the listen address; default DefaultEmbeddedListen. If the
	// port is taken the next free one is used.
	Listen string `yaml:"listen"`
}

// Topics are the settings of topics Plume creates.
type Topics struct {
	Partitions        int32             `yaml:"partitions"`         // default 1
	ReplicationFactor int16             `yaml:"replication_factor"` // default -1: broker default
	Configs           map[string]string `yaml:"configs"`            // topic configs, e.g. cleanup.policy
}

// Kafka configures the broker events are written to.
type Kafka struct {
	// Brokers are the seed brokers; empty means the embedded broker.
	Brokers []string `yaml:"brokers"`
	// Embedded configures the embedded broker.
	Embedded Embedded `yaml:"embedded"`
	// TopicPrefix prefixes every topic; defaults to the pipeline name.
	TopicPrefix string `yaml:"topic_prefix"`
	// Topic is an optional expression computing the topic of an event
	// (compiled by the router, not here).
	Topic string `yaml:"topic"`
	// TopicPos is the position of the Topic expression.
	TopicPos Pos `yaml:"-" pos:"topic"`
	// Topics are the settings of auto-created topics.
	Topics Topics `yaml:"topics"`
	// Mode is ModeBinary or ModeStructured.
	Mode string `yaml:"mode"`
	// Tombstones: a delete is followed by a tombstone (default true).
	Tombstones bool `yaml:"tombstones"`
	// Compression is none, gzip, snappy, lz4 or zstd.
	Compression string `yaml:"compression"`
	// BatchMaxEvents bounds the source events per Kafka transaction (whole
	// source transactions only).
	BatchMaxEvents int `yaml:"batch_max_events"`
	// BatchLinger is how long a batch may wait to fill.
	BatchLinger Duration `yaml:"batch_linger"`
	// MaxBufferedBytes bounds the producer's in-flight bytes (backpressure).
	MaxBufferedBytes int64 `yaml:"max_buffered_bytes"`
	// MaxMessageBytes is the largest record produced.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// Oversize is OversizeFail or OversizeDLQ: what to do with a record
	// larger than MaxMessageBytes.
	Oversize string `yaml:"oversize"`
	// TLS configures TLS to the brokers.
	TLS KafkaTLS `yaml:"tls"`
	// SASL configures SASL; Mechanism is empty when not configured.
	SASL SASL `yaml:"sasl"`
}

// Route sends matching events to targets.
type Route struct {
	// Name is unique among routes; it matches [a-z0-9][a-z0-9_-]*.
	Name string `yaml:"name"`
	// When is the filter expression (default "true").
	When string `yaml:"when"`
	// To names the targets; non-empty, each a key of Pipeline.Targets.
	To []string `yaml:"to"`
	// Map is an optional projection expression.
	Map string `yaml:"map"`
	// Drop lists columns removed from events.
	Drop []string `yaml:"drop"`
	// Mask maps columns to MaskHash or MaskRedact.
	Mask map[string]string `yaml:"mask"`

	// Index is the route's index in Pipeline.Routes.
	Index int `yaml:"-"`
	// Pos is the position of the route's entry.
	Pos Pos `yaml:"-"`
	// WhenPos is the position of the When expression (Pos if absent).
	WhenPos Pos `yaml:"-" pos:"when"`
	// MapPos is the position of the Map expression (Pos if absent).
	MapPos Pos `yaml:"-" pos:"map"`
}

// Key returns the key path of one of the route's keys, e.g.
// r.Key("when") == "routes[2].when", for use with Pos.Errorf.
func (r *Route) Key(field string) string {
	return joinKey(joinIndex("routes", r.Index), field)
}

// DLQ configures the dead-letter topic.
type DLQ struct {
	// Topic defaults to "<topic_prefix>.<name>.dlq".
	Topic string `yaml:"topic"`
}

// Admin configures the admin HTTP server.
type Admin struct {
	Listen string `yaml:"listen"` // default DefaultAdminListen
	Token  Secret `yaml:"token"`  // bearer token; empty means no authentication
}

// String prints the admin settings with the token redacted.
func (a Admin) String() string {
	return fmt.Sprintf("{Listen:%s Token:%s}", a.Listen, a.Token)
}

// Tracing configures distributed tracing (docs/operations.md).
type Tracing struct {
	// TraceParent puts a W3C traceparent extension on every event:
	// deterministic, derived from the event's source and position, so a
	// replayed event carries the same one. Default true.
	TraceParent *bool `yaml:"traceparent"`
	// OTLP exports spans over OTLP/HTTP (protobuf) when Endpoint is set.
	OTLP OTLP `yaml:"otlp"`
}

// TraceParentOn reports whether events carry a traceparent.
func (t Tracing) TraceParentOn() bool { return t.TraceParent == nil || *t.TraceParent }

// OTLP is an OpenTelemetry collector's OTLP/HTTP endpoint.
type OTLP struct {
	// Endpoint is the collector's base URL, e.g. "http://otel-collector:4318";
	// spans are POSTed to <endpoint>/v1/traces. Empty: no export.
	Endpoint string `yaml:"endpoint"`
	// Headers are sent with every export request (an API key, say).
	Headers map[string]Secret `yaml:"headers"`
	// ServiceName is the service.name resource attribute (default "plume").
	ServiceName string `yaml:"service_name"`
	// SampleRatio is the share of source transactions traced (0..1,
	// default 1).
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// String prints the OTLP settings with the header values redacted.
func (o OTLP) String() string {
	return fmt.Sprintf("{Endpoint:%s Headers:%d ServiceName:%s}", o.Endpoint, len(o.Headers), o.ServiceName)
}

// Metrics configures the metrics HTTP server.
type Metrics struct {
	Listen string `yaml:"listen"` // default DefaultMetricsListen
}

// String prints the metrics settings.
func (m Metrics) String() string { return fmt.Sprintf("{Listen:%s}", m.Listen) }

// Duration is a time.Duration written as a Go duration string ("50ms",
// "10s", "1m30s"; "0" is also accepted).
type Duration struct {
	time.Duration
}

// ParseDuration parses a duration string such as "50ms".
func ParseDuration(s string) (Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return Duration{}, err
	}
	return Duration{d}, nil
}

// MarshalText returns the duration as a string such as "50ms".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a string such as "50ms".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// TopicPrefix returns kafka.topic_prefix, or the pipeline name if unset.
func (p *Pipeline) TopicPrefix() string {
	if p.Kafka.TopicPrefix != "" {
		return p.Kafka.TopicPrefix
	}
	return p.Name
}

// TableTopic returns the default topic of a table:
// "<topic_prefix>.<database>.<table>" (schema instead of database for
// postgres).
func (p *Pipeline) TableTopic(database, table string) string {
	return p.TopicPrefix() + "." + database + "." + table
}

// DLQTopic returns dlq.topic, or "<topic_prefix>.<name>.dlq" if unset.
func (p *Pipeline) DLQTopic() string {
	if p.DLQ.Topic != "" {
		return p.DLQ.Topic
	}
	return p.TopicPrefix() + "." + p.Name + ".dlq"
}

// CheckpointTopic returns the topic holding the pipeline's source
// checkpoints: "<topic_prefix>.<name>.checkpoints".
func (p *Pipeline) CheckpointTopic() string {
	return p.TopicPrefix() + "." + p.Name + ".checkpoints"
}

// ConsumerGroup returns the consumer group of a target: "plume.<name>.<target>".
func (p *Pipeline) ConsumerGroup(target string) string {
	return "plume." + p.Name + "." + target
}

// TransactionalID returns the capture producer's transactional id:
// "plume.<name>.capture".
func (p *Pipeline) TransactionalID() string {
	return "plume." + p.Name + ".capture"
}

// Embedded reports whether the embedded broker is used (no kafka.brokers).
func (p *Pipeline) Embedded() bool { return len(p.Kafka.Brokers) == 0 }

// TargetNames returns the target names, sorted.
func (p *Pipeline) TargetNames() []string {
	names := make([]string, 0, len(p.Targets))
	for n := range p.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PosOf returns the position of the value at a key path such as
// "source.dsn" or "routes[1].to[0]" (map keys that are not plain words are
// written ["quoted"], e.g. `source.keys["shop.events"]`). It returns the
// zero Pos for keys absent from the file.
func (p *Pipeline) PosOf(path string) Pos {
	if p.meta == nil {
		return Pos{}
	}
	if e, ok := p.meta.entries[path]; ok {
		return e.val
	}
	return Pos{}
}

// globMatch matches s against pattern, where '*' matches any run of
// characters (including none) and '?' exactly one character.
func globMatch(pattern, s string) bool {
	p, r := []rune(pattern), []rune(s)
	pi, ri := 0, 0
	star, mark := -1, 0
	for ri < len(r) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == r[ri]):
			pi++
			ri++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, ri
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			ri = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
