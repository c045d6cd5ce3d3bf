package config

import (
	"fmt"
	"hash/fnv"
	"strings"
)

// applyDefaults fills in every default, in one place. It runs after decoding
// and before validate. A key that is absent (or null) gets its default; for
// strings an empty value also means "default". Numbers, booleans and
// durations given explicitly are kept (and validated), so that
// heartbeat_interval: 0 disables heartbeats and snapshot_workers: 0 is an
// error rather than silently 2.
func applyDefaults(p *Pipeline) {
	has := p.meta.has
	str := func(s *string, def string) {
		if *s == "" {
			*s = def
		}
	}

	str(&p.Log.Level, DefaultLogLevel)
	str(&p.Log.Format, DefaultLogFormat)

	s := &p.Source
	str(&s.Snapshot, DefaultSnapshot)
	if !has("source.snapshot_workers") {
		s.SnapshotWorkers = DefaultSnapshotWorkers
	}
	if !has("source.snapshot_chunk_size") {
		s.SnapshotChunkSize = DefaultSnapshotChunkSize
	}
	if !has("source.heartbeat_interval") {
		s.HeartbeatInterval = Duration{DefaultHeartbeatInterval}
	}
	switch s.Type {
	case SourceMySQL:
		str(&s.SnapshotMode, SnapshotModeWatermark)
		if s.ServerID == 0 {
			s.ServerID = DeriveServerID(p.Name)
		}
	case SourcePostgres:
		str(&s.Slot, DefaultSlotName(p.Name))
		str(&s.Publication, DefaultPublicationName(p.Name))
	}

	k := &p.Kafka
	if len(k.Brokers) == 0 {
		str(&k.Embedded.Listen, DefaultEmbeddedListen)
	}
	str(&k.TopicPrefix, p.Name)
	if !has("kafka.topics.partitions") {
		k.Topics.Partitions = DefaultPartitions
	}
	if !has("kafka.topics.replication_factor") {
		k.Topics.ReplicationFactor = DefaultReplicationFactor
	}
	str(&k.Mode, DefaultMode)
	if !has("kafka.tombstones") {
		k.Tombstones = DefaultTombstones
	}
	str(&k.Compression, DefaultCompression)
	if !has("kafka.batch_max_events") {
		k.BatchMaxEvents = DefaultBatchMaxEvents
	}
	if !has("kafka.batch_linger") {
		k.BatchLinger = Duration{DefaultBatchLinger}
	}
	if !has("kafka.max_buffered_bytes") {
		k.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	if !has("kafka.max_message_bytes") {
		k.MaxMessageBytes = DefaultMaxMessageBytes
	}
	str(&k.Oversize, DefaultOversize)
	if has("kafka.tls") && !has("kafka.tls.enabled") {
		k.TLS.Enabled = true
	}

	for i := range p.Routes {
		str(&p.Routes[i].When, DefaultWhen)
	}

	str(&p.DLQ.Topic, p.TopicPrefix()+"."+p.Name+".dlq")
	if p.Admin != nil {
		str(&p.Admin.Listen, DefaultAdminListen)
	}
	if p.Metrics != nil {
		str(&p.Metrics.Listen, DefaultMetricsListen)
	}
}

// DeriveServerID returns the MySQL server id used when source.server_id is 0:
// 1000 + FNV-32a(name) mod (2^31 - 1000), which is in [1000, 2^31).
func DeriveServerID(name string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return 1000 + h.Sum32()%(1<<31-1000)
}

// DefaultSlotName returns the default PostgreSQL replication slot name:
// "plume_" + name with '-' replaced by '_'. Names longer than PostgreSQL's
// 63-byte limit keep their first 54 bytes followed by '_' and 8 hex digits
// of FNV-32a of the full name, so distinct names stay distinct.
func DefaultSlotName(name string) string {
	s := "plume_" + strings.ReplaceAll(name, "-", "_")
	if len(s) > 63 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(s))
		s = fmt.Sprintf("%s_%08x", s[:54], h.Sum32())
	}
	return s
}

// DefaultPublicationName returns the default PostgreSQL publication name; it
// is the same as DefaultSlotName (an identifier that needs no quoting).
func DefaultPublicationName(name string) string { return DefaultSlotName(name) }
