package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

var (
	logLevels     = []string{"debug", "info", "warn", "error"}
	logFormats    = []string{"text", "json"}
	sourceTypes   = []string{SourceMySQL, SourcePostgres}
	snapshotModes = []string{SnapshotInitial, SnapshotNever}
	kafkaModes    = []string{ModeBinary, ModeStructured}
	compressions  = []string{"none", "gzip", "snappy", "lz4", "zstd"}
	oversizes     = []string{OversizeFail, OversizeDLQ}
	mechanisms    = []string{SASLPlain, SASLScramSHA256, SASLScramSHA512}
	maskKinds     = []string{MaskHash, MaskRedact}
)

type validator struct {
	p    *Pipeline
	errs []*Error
}

// errorf reports an error about the key at path, at the position of its
// value (or of its nearest ancestor present in the file).
func (v *validator) errorf(path, format string, args ...any) {
	pos := v.p.meta.at(path)
	v.errs = append(v.errs, &Error{File: v.p.File, Line: pos.Line, Column: pos.Column, Key: path, Msg: fmt.Sprintf(format, args...)})
}

// keyErrorf is errorf at the position of the key itself (for errors about
// a mapping key, such as a target name).
func (v *validator) keyErrorf(path, format string, args ...any) {
	pos := v.p.meta.at(path)
	if e, ok := v.p.meta.entries[path]; ok {
		pos = e.key
	}
	v.errs = append(v.errs, &Error{File: v.p.File, Line: pos.Line, Column: pos.Column, Key: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) required(path, value string) bool {
	if value == "" {
		v.errorf(path, "required")
		return false
	}
	return true
}

func (v *validator) enum(path, value string, allowed []string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.errorf(path, "invalid value %q (want %s)", value, orList(allowed))
}

func (v *validator) atLeast(path string, value, min int64) {
	if value < min {
		v.errorf(path, "must be at least %d, got %d", min, value)
	}
}

// listen checks a host:port listen address; port 0 means any free port.
func (v *validator) listen(path, addr string) {
	if _, port, err := net.SplitHostPort(addr); err != nil {
		v.errorf(path, "invalid address %q: want host:port", addr)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		v.errorf(path, "invalid port in %q: want 0-65535", addr)
	}
}

// The name checks are loops, not regexps: a bounded repetition such as
// {1,249} compiles into a program of hundreds of KB that every process
// would build at start-up and keep.

// ValidTopicName reports whether s is a legal Kafka topic name: 1-249
// characters of a-z, A-Z, 0-9, '.', '_' and '-', and not "." or "..".
func ValidTopicName(s string) bool {
	if len(s) < 1 || len(s) > 249 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// nameOK reports whether s is a lower-case name: [a-z0-9][a-z0-9_-]*, at
// most max bytes (max < 0: unbounded).
func nameOK(s string, max int) bool {
	if s == "" || (max >= 0 && len(s) > max) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '-')) {
			return false
		}
	}
	return true
}

// slotOK reports whether s is a PostgreSQL slot name: [a-z0-9_]{1,63}.
func slotOK(s string) bool {
	if len(s) < 1 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (v *validator) topic(path, name string) {
	if !ValidTopicName(name) {
		v.errorf(path, "invalid Kafka topic name %q: want 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'", name)
	}
}

func (v *validator) tls(path string, t TLS) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		if t.CertFile == "" {
			v.errorf(joinKey(path, "cert_file"), "required when key_file is set")
		} else {
			v.errorf(joinKey(path, "key_file"), "required when cert_file is set")
		}
	}
}

// validate checks a decoded pipeline with defaults applied and returns its
// errors (unsorted).
func validate(p *Pipeline) []*Error {
	v := &validator{p: p}

	if v.required("name", p.Name) && !nameOK(p.Name, 63) {
		v.errorf("name", "invalid name %q: want 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit", p.Name)
	}
	v.required("state_dir", p.StateDir)
	v.enum("log.level", p.Log.Level, logLevels)
	v.enum("log.format", p.Log.Format, logFormats)

	v.source()
	v.kafka()
	v.routes()

	for _, name := range p.TargetNames() {
		t := p.Targets[name]
		path := joinKey("targets", name)
		if !nameOK(name, -1) {
			v.keyErrorf(path, "invalid target name %q: want a-z, 0-9, '_' and '-', starting with a letter or digit", name)
		}
		v.required(joinKey(path, "type"), t.Type)
	}

	if p.meta.has("dlq.topic") {
		v.topic("dlq.topic", p.DLQ.Topic)
	}
	if p.Admin != nil {
		v.listen("admin.listen", p.Admin.Listen)
	}
	if p.Metrics != nil {
		v.listen("metrics.listen", p.Metrics.Listen)
	}
	if e := p.Tracing.OTLP.Endpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errorf("tracing.otlp.endpoint", "invalid endpoint %q: want http://host:port or https://host:port (OTLP/HTTP)", e)
		}
	}
	if r := p.Tracing.OTLP.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		v.errorf("tracing.otlp.sample_ratio", "must be between 0 and 1, got %v", *r)
	}
	return v.errs
}

func (v *validator) source() {
	s := &v.p.Source
	if !v.p.meta.has("source") && s.Type == "" && s.DSN == "" && len(s.Tables) == 0 {
		v.errorf("source", "required: the database to capture from (type, dsn, tables)")
		return
	}
	if v.required("source.type", s.Type) {
		v.enum("source.type", s.Type, sourceTypes)
	}
	if v.required("source.dsn", string(s.DSN)) {
		scheme, _, ok := strings.Cut(string(s.DSN), "://")
		scheme = strings.ToLower(scheme)
		switch {
		case !ok:
		case s.Type == SourceMySQL && (scheme == "postgres" || scheme == "postgresql"):
			v.errorf("source.dsn", "a postgres:// DSN for a mysql source (mysql DSNs look like user:password@tcp(host:3306)/)")
		case s.Type == SourcePostgres && scheme == "mysql":
			v.errorf("source.dsn", "a mysql:// DSN for a postgres source (want postgres://user:password@host:5432/db)")
		}
	}
	if len(s.Tables) == 0 {
		v.errorf("source.tables", "required: list at least one table (\"db.table\"; '*' and '?' are allowed in each part)")
	}
	seen := map[string]int{}
	for i, t := range s.Tables {
		path := joinIndex("source.tables", i)
		if msg := checkTableName(t, true); msg != "" {
			v.errorf(path, "invalid table %q: %s", t, msg)
		} else if j, dup := seen[t]; dup {
			v.errorf(path, "duplicate table %q (also source.tables[%d])", t, j)
		} else {
			seen[t] = i
		}
	}
	v.enum("source.snapshot", s.Snapshot, snapshotModes)
	v.atLeast("source.snapshot_workers", int64(s.SnapshotWorkers), 1)
	v.atLeast("source.snapshot_chunk_size", int64(s.SnapshotChunkSize), 1)
	if s.HeartbeatInterval.Duration < 0 {
		v.errorf("source.heartbeat_interval", "must not be negative (0 disables heartbeats)")
	}
	for _, table := range sortedKeys(s.Keys) {
		path := joinKey("source.keys", table)
		if msg := checkTableName(table, false); msg != "" {
			v.keyErrorf(path, "invalid table %q: %s", table, msg)
		} else if db, tb, _ := strings.Cut(table, "."); len(s.Tables) > 0 && !s.Includes(db, tb) {
			v.keyErrorf(path, "table %q is not included by source.tables", table)
		}
		cols := s.Keys[table]
		if len(cols) == 0 {
			v.errorf(path, "list at least one key column")
		}
		colSeen := map[string]bool{}
		for i, c := range cols {
			switch {
			case c == "":
				v.errorf(joinIndex(path, i), "empty column name")
			case colSeen[c]:
				v.errorf(joinIndex(path, i), "duplicate column %q", c)
			}
			colSeen[c] = true
		}
	}
	if s.SnapshotMode != "" {
		if s.Type != SourceMySQL && s.Type != "" {
			v.errorf("source.snapshot_mode", "only valid for mysql sources (source.type is %s)", s.Type)
		} else if s.SnapshotMode != SnapshotModeWatermark && s.SnapshotMode != SnapshotModeLock {
			v.errorf("source.snapshot_mode", "must be %s or %s, not %q", SnapshotModeWatermark, SnapshotModeLock, s.SnapshotMode)
		}
	}
	if s.Type != SourceMySQL && s.Type != "" && s.ServerID != 0 {
		v.errorf("source.server_id", "only valid for mysql sources (source.type is %s)", s.Type)
	}
	if s.Type != SourcePostgres && s.Type != "" {
		if s.Slot != "" {
			v.errorf("source.slot", "only valid for postgres sources (source.type is %s)", s.Type)
		}
		if s.Publication != "" {
			v.errorf("source.publication", "only valid for postgres sources (source.type is %s)", s.Type)
		}
	}
	if s.Type == SourcePostgres {
		if !slotOK(s.Slot) {
			v.errorf("source.slot", "invalid replication slot name %q: want 1-63 characters of a-z, 0-9 and '_'", s.Slot)
		}
		if len(s.Publication) > 63 || strings.ContainsAny(s.Publication, "\"\x00") {
			v.errorf("source.publication", "invalid publication name %q: want at most 63 bytes, no '\"'", s.Publication)
		}
	}
	v.tls("source.tls", s.TLS)
}

// checkTableName checks a "db.table" name; it returns "" if it is valid.
func checkTableName(t string, globs bool) string {
	db, tb, ok := strings.Cut(t, ".")
	switch {
	case !ok:
		return `want "db.table" ("schema.table" for postgres)`
	case strings.Contains(tb, "."):
		return "want exactly one '.' between database (or schema) and table"
	case db == "" || tb == "":
		return "empty database (or schema) or table part"
	case !globs && strings.ContainsAny(t, "*?"):
		return "must name one table: '*' and '?' are not allowed here"
	case strings.TrimSpace(t) != t:
		return "leading or trailing white space"
	}
	return ""
}

func (v *validator) kafka() {
	k := &v.p.Kafka
	seen := map[string]bool{}
	for i, b := range k.Brokers {
		path := joinIndex("kafka.brokers", i)
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" {
			v.errorf(path, "invalid broker address %q: want host:port", b)
			continue
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			v.errorf(path, "invalid port in broker address %q", b)
			continue
		}
		if seen[b] {
			v.errorf(path, "duplicate broker %q", b)
		}
		seen[b] = true
	}
	if len(k.Brokers) > 0 {
		if k.Embedded.Listen != "" {
			v.errorf("kafka.embedded", "only valid without kafka.brokers (the embedded broker runs only when no brokers are given)")
		}
	} else {
		v.listen("kafka.embedded.listen", k.Embedded.Listen)
		if k.TLS.Enabled || !k.TLS.IsZero() {
			v.errorf("kafka.tls", "only valid with kafka.brokers (the embedded broker is plain-text on %s)", k.Embedded.Listen)
		}
		if k.SASL != (SASL{}) {
			v.errorf("kafka.sasl", "only valid with kafka.brokers (the embedded broker does not authenticate)")
		}
	}
	if v.p.meta.has("kafka.topic_prefix") {
		v.topic("kafka.topic_prefix", k.TopicPrefix)
	}
	if k.Topics.Partitions < 1 {
		v.errorf("kafka.topics.partitions", "must be at least 1, got %d", k.Topics.Partitions)
	}
	if rf := k.Topics.ReplicationFactor; rf < 1 && rf != -1 {
		v.errorf("kafka.topics.replication_factor", "must be -1 (broker default) or at least 1, got %d", rf)
	}
	for _, name := range sortedKeys(k.Topics.Configs) {
		if strings.TrimSpace(name) == "" {
			v.errorf(joinKey("kafka.topics.configs", name), "empty topic config name")
		}
	}
	v.enum("kafka.mode", k.Mode, kafkaModes)
	v.enum("kafka.compression", k.Compression, compressions)
	v.enum("kafka.oversize", k.Oversize, oversizes)
	v.atLeast("kafka.batch_max_events", int64(k.BatchMaxEvents), 1)
	if k.BatchLinger.Duration < 0 {
		v.errorf("kafka.batch_linger", "must not be negative")
	}
	v.atLeast("kafka.max_message_bytes", int64(k.MaxMessageBytes), 1)
	if k.MaxBufferedBytes < int64(k.MaxMessageBytes) {
		v.errorf("kafka.max_buffered_bytes", "must be at least kafka.max_message_bytes (%d), got %d", k.MaxMessageBytes, k.MaxBufferedBytes)
	}
	v.tls("kafka.tls", k.TLS.TLS)
	if v.p.meta.has("kafka.sasl") || k.SASL != (SASL{}) {
		if v.required("kafka.sasl.mechanism", k.SASL.Mechanism) {
			v.enum("kafka.sasl.mechanism", k.SASL.Mechanism, mechanisms)
		}
		v.required("kafka.sasl.username", k.SASL.Username)
		if !k.SASL.Password.IsSet() {
			v.errorf("kafka.sasl.password", "required")
		}
	}
}

func (v *validator) routes() {
	p := v.p
	names := map[string]int{}
	defined := p.TargetNames()
	for i := range p.Routes {
		r := &p.Routes[i]
		path := joinIndex("routes", i)
		if v.required(joinKey(path, "name"), r.Name) {
			if !nameOK(r.Name, -1) {
				v.errorf(joinKey(path, "name"), "invalid route name %q: want a-z, 0-9, '_' and '-', starting with a letter or digit", r.Name)
			} else if j, dup := names[r.Name]; dup {
				v.errorf(joinKey(path, "name"), "duplicate route name %q (also routes[%d])", r.Name, j)
			} else {
				names[r.Name] = i
			}
		}
		if strings.TrimSpace(r.When) == "" {
			v.errorf(joinKey(path, "when"), "blank expression (remove the key to match every event)")
		}
		if len(r.To) == 0 {
			v.errorf(joinKey(path, "to"), "required: list at least one target")
		}
		to := map[string]int{}
		for j, t := range r.To {
			tp := joinIndex(joinKey(path, "to"), j)
			if _, ok := p.Targets[t]; !ok {
				if len(defined) == 0 {
					v.errorf(tp, "unknown target %q (no targets are defined)", t)
				} else {
					v.errorf(tp, "unknown target %q (defined: %s)", t, strings.Join(defined, ", "))
				}
			} else if k, dup := to[t]; dup {
				v.errorf(tp, "duplicate target %q (also to[%d])", t, k)
			}
			to[t] = j
		}
		dropped := map[string]bool{}
		for j, c := range r.Drop {
			if c == "" {
				v.errorf(joinIndex(joinKey(path, "drop"), j), "empty column name")
			}
			dropped[c] = true
		}
		for _, c := range sortedKeys(r.Mask) {
			mp := joinKey(joinKey(path, "mask"), c)
			v.enum(mp, r.Mask[c], maskKinds)
			if dropped[c] {
				v.keyErrorf(mp, "column %q is both dropped and masked", c)
			}
		}
	}
}

// orList formats allowed values: "a, b or c".
func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}
