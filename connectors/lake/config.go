package lake

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/config"
)

// Partition layouts (the partition_by key): the directory levels under a
// table's directory, from the source commit time of each row (UTC).
const (
	PartitionTable      = "table"       // table=public.orders (schema or database, then table)
	PartitionCommitDate = "commit_date" // commit_date=2026-11-24
	PartitionCommitHour = "commit_hour" // commit_hour=13 (after commit_date)
)

// Defaults for the optional configuration keys.
const (
	DefaultCompression  = "zstd"
	DefaultMaxFileRows  = 1_000_000
	DefaultRowGroupRows = 128 * 1024
	DefaultNamespace    = "plume"

	// The lake type's delivery defaults (delivery.batch_*): one batch is one
	// commit, so these are how files roll by size and by time.
	DefaultBatchMaxEvents = 10_000
	DefaultBatchMaxBytes  = 4 << 20
	DefaultBatchLinger    = 10 * time.Second
)

// Config is the configuration block of a target of type lake
// (targets.<name> in the pipeline file). See docs/targets/lake.md.
type Config struct {
	// Path is where the lake lives: s3://bucket/prefix, file:///dir or a
	// directory path (relative paths are relative to the pipeline file).
	Path string `yaml:"path"`
	// S3 configures the S3-compatible client for an s3:// path.
	S3 S3Config `yaml:"s3"`
	// PartitionBy lists the Hive-style directory levels of a data file, in
	// this order: table, commit_date, commit_hour (default [table,
	// commit_date]; [] puts every file in the root).
	PartitionBy []string `yaml:"partition_by"`
	// Compression is the Parquet codec: zstd (default), snappy, gzip, none.
	Compression string `yaml:"compression"`
	// MaxFileRows splits a batch's rows of one table partition into files
	// of at most this many rows.
	MaxFileRows int `yaml:"max_file_rows"`
	// Types says where column types come from: "source" (default: the
	// source database's catalog, through SourceDSN or the pipeline's source
	// DSN) or "infer" (from the JSON values only).
	Types string `yaml:"types"`
	// SourceDSN overrides the DSN used to read column types from the source
	// database (default: the pipeline's source.dsn).
	SourceDSN config.DSN `yaml:"source_dsn"`
	// Iceberg, when set, also appends every committed file to an Iceberg
	// table per source table.
	Iceberg *IcebergConfig `yaml:"iceberg"`
}

// S3Config configures the S3 client.
type S3Config struct {
	Endpoint        string        `yaml:"endpoint"` // e.g. http://127.0.0.1:7070; empty: AWS
	Region          string        `yaml:"region"`   // default us-east-1
	AccessKeyID     string        `yaml:"access_key_id"`
	SecretAccessKey config.Secret `yaml:"secret_access_key"`
	SessionToken    config.Secret `yaml:"session_token"`
	// PathStyle addresses buckets as endpoint/bucket/key (default true
	// with a custom endpoint, false for AWS).
	PathStyle *bool `yaml:"path_style"`
}

// IcebergConfig configures the Iceberg SQL catalog.
type IcebergConfig struct {
	// CatalogDSN is the catalog database: postgres://... (or mysql://...).
	CatalogDSN config.DSN `yaml:"catalog_dsn"`
	// CatalogName is the catalog_name column of the catalog tables
	// (default: plume).
	CatalogName string `yaml:"catalog_name"`
	// Namespace holds the tables (default plume); each source table
	// becomes <namespace>.<schema or database>_<table>.
	Namespace string `yaml:"namespace"`
}

// DefaultConfig returns a Config with the defaults filled in.
func DefaultConfig() Config {
	return Config{
		PartitionBy: []string{PartitionTable, PartitionCommitDate},
		Compression: DefaultCompression,
		MaxFileRows: DefaultMaxFileRows,
		Types:       "source",
	}
}

// settings is a validated Config.
type settings struct {
	local       string // local directory, or "" for S3
	bucket      string // S3 bucket
	prefix      string // key prefix without leading/trailing "/" ("" for the bucket root)
	s3          S3Config
	pathStyle   bool
	partitions  []string
	compression string
	maxFileRows int
	inferTypes  bool
	sourceDSN   string
	sourceType  string // postgres or mysql
	iceberg     *IcebergConfig
}

// validate checks c; bad reports an error about a key.
func (c *Config) validate(pipelineDir, sourceType, sourceDSN string, bad func(key, format string, args ...any)) *settings {
	s := &settings{s3: c.S3, compression: strings.ToLower(c.Compression), maxFileRows: c.MaxFileRows, iceberg: c.Iceberg}
	switch p := strings.TrimSpace(c.Path); {
	case p == "":
		bad("path", "is required (s3://bucket/prefix or a directory)")
	case strings.HasPrefix(p, "s3://") || strings.HasPrefix(p, "s3a://"):
		u, err := url.Parse(p)
		if err != nil || u.Host == "" {
			bad("path", "%q: want s3://bucket/prefix", p)
			break
		}
		s.bucket = u.Host
		s.prefix = strings.Trim(u.Path, "/")
	case strings.Contains(p, "://") && !strings.HasPrefix(p, "file://"):
		bad("path", "%q: unsupported scheme (want s3:// or file://)", p)
	default:
		p = strings.TrimPrefix(p, "file://")
		if !filepath.IsAbs(p) && pipelineDir != "" {
			p = filepath.Join(pipelineDir, p)
		}
		s.local = filepath.Clean(p)
	}
	if s.local == "" && s.bucket != "" {
		if s.s3.Region == "" {
			s.s3.Region = "us-east-1"
		}
		s.pathStyle = s.s3.Endpoint != ""
		if s.s3.PathStyle != nil {
			s.pathStyle = *s.s3.PathStyle
		}
		if s.s3.Endpoint != "" {
			if u, err := url.Parse(s.s3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad("s3.endpoint", "%q: want http(s)://host[:port]", s.s3.Endpoint)
			}
		}
		if (s.s3.AccessKeyID == "") != !s.s3.SecretAccessKey.IsSet() {
			bad("s3.access_key_id", "access_key_id and secret_access_key go together")
		}
	} else if c.S3 != (S3Config{}) {
		bad("s3", "only applies to an s3:// path")
	}
	seen := map[string]bool{}
	for _, p := range c.PartitionBy {
		switch p {
		case PartitionTable, PartitionCommitDate, PartitionCommitHour:
		default:
			bad("partition_by", "%q: want %s, %s or %s", p, PartitionTable, PartitionCommitDate, PartitionCommitHour)
			continue
		}
		if seen[p] {
			bad("partition_by", "%q listed twice", p)
		}
		seen[p] = true
	}
	if seen[PartitionCommitHour] && !seen[PartitionCommitDate] {
		bad("partition_by", "commit_hour needs commit_date before it")
	}
	if seen[PartitionTable] {
		s.partitions = append(s.partitions, PartitionTable)
	}
	if seen[PartitionCommitDate] {
		s.partitions = append(s.partitions, PartitionCommitDate)
	}
	if seen[PartitionCommitHour] {
		s.partitions = append(s.partitions, PartitionCommitHour)
	}
	switch s.compression {
	case "":
		s.compression = DefaultCompression
	case "zstd", "snappy", "gzip", "none", "uncompressed":
	default:
		bad("compression", "%q: want zstd, snappy, gzip or none", c.Compression)
	}
	switch {
	case c.MaxFileRows == 0:
		s.maxFileRows = DefaultMaxFileRows
	case c.MaxFileRows < 1:
		bad("max_file_rows", "must be at least 1")
	}
	switch c.Types {
	case "", "source":
		s.sourceDSN = c.SourceDSN.Reveal()
		if s.sourceDSN == "" {
			s.sourceDSN = sourceDSN
		}
		s.sourceType = sourceType
		if s.sourceType == "" {
			s.sourceType = guessSourceType(s.sourceDSN)
		}
	case "infer":
		s.inferTypes = true
	default:
		bad("types", "%q: want source or infer", c.Types)
	}
	if ic := c.Iceberg; ic != nil {
		if ic.CatalogDSN == "" {
			bad("iceberg.catalog_dsn", "is required (postgres://... or mysql://...)")
		} else if _, err := catalogDriver(ic.CatalogDSN.Reveal()); err != nil {
			bad("iceberg.catalog_dsn", "%v", err)
		}
		if ic.Namespace == "" {
			ic.Namespace = DefaultNamespace
		}
		if ic.CatalogName == "" {
			ic.CatalogName = "plume"
		}
	}
	return s
}

func guessSourceType(dsn string) string {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"), strings.Contains(dsn, "host="):
		return config.SourcePostgres
	case dsn != "":
		return config.SourceMySQL
	}
	return ""
}

// describe is the lake's location for logs: no credentials.
func (s *settings) describe() string {
	if s.local != "" {
		return s.local
	}
	return fmt.Sprintf("s3://%s/%s", s.bucket, s.prefix)
}

// String and GoString print the location only: settings hold secrets in
// unexported fields, which fmt would print raw.
func (s *settings) String() string   { return "lake " + s.describe() }
func (s *settings) GoString() string { return s.String() }
