// Package mysql is Plume's MySQL / MariaDB change-data-capture source: a
// capture.Source that reads the row-based binary log as a replica (a dump
// connection of its own, parsed by go-mysql's replication.BinlogParser:
// dump.go), plus a chunked, lock-free initial snapshot.
//
// See docs/mysql.md for the operator's view (privileges, server settings,
// positions, snapshot algorithm, runbooks) and docs/types-mysql.md for how
// every column type is rendered.
package mysql

import (
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Snapshot modes.
const (
	// SnapshotWatermark reads each chunk in its own short consistent-snapshot
	// transaction and reconciles it with the binlog (no locks). Default.
	SnapshotWatermark = "watermark"
	// SnapshotLock takes FLUSH TABLES WITH READ LOCK for the moment it takes
	// to open one consistent-snapshot transaction per worker, then reads all
	// chunks from those transactions at a single binlog position.
	SnapshotLock = "lock"
)

// Config configures a Source. The lead wires the pipeline's YAML to it.
type Config struct {
	Pipeline string // pipeline name
	// DSN is in go-sql-driver form "user:pw@tcp(host:port)/"; the database
	// part is ignored. Supported parameters: tls=true|skip-verify|false,
	// timeout=<duration> (dial timeout).
	DSN string
	// Tables selects the captured tables as "db.table" patterns; each part
	// may use the glob characters * and ? (path.Match syntax).
	Tables []string
	// Snapshot runs an initial snapshot of the captured tables on the first
	// start (no checkpoint yet).
	Snapshot          bool
	SnapshotWorkers   int    // parallel chunk readers, default 2
	SnapshotChunkSize int    // rows per chunk, default 10000
	SnapshotMode      string // SnapshotWatermark (default) or SnapshotLock
	// HeartbeatInterval is the source heartbeat period: the replication
	// heartbeat period the server is asked for, and the longest time the
	// checkpoint may lag behind the stream while only uncaptured tables
	// change (an empty Commit then moves it). 0 (or negative) turns the
	// heartbeat commits off; the connection still asks for a 30s keepalive
	// heartbeat. The configuration default is DefaultHeartbeatInterval,
	// which the config loader fills in when the setting is absent.
	HeartbeatInterval time.Duration
	// Keys overrides the row key of tables ("db.table" -> column names),
	// for tables without a primary key.
	Keys map[string][]string
	// ServerID is the replica server id this source registers with; 0 means
	// derive it from the pipeline name (FNV-32a mapped into [1000, 2^31)).
	ServerID uint32
	// TLS, when set, is used for every connection (overrides the DSN's tls).
	TLS *tls.Config
}

// Defaults.
const (
	DefaultSnapshotWorkers   = 2
	DefaultSnapshotChunkSize = 10000
	DefaultHeartbeatInterval = 10 * time.Second
	// keepaliveHeartbeat is the replication heartbeat period used when
	// heartbeats are off: it only lets a dead connection be noticed.
	keepaliveHeartbeat = 30 * time.Second
)

// withDefaults returns cfg with defaults filled in, or an error naming the
// first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Pipeline == "" {
		return cfg, errors.New("mysql: config: pipeline name is empty")
	}
	if len(cfg.Tables) == 0 {
		return cfg, errors.New("mysql: config: no tables to capture")
	}
	for _, p := range cfg.Tables {
		if _, err := parseTablePattern(p); err != nil {
			return cfg, err
		}
	}
	if cfg.SnapshotWorkers <= 0 {
		cfg.SnapshotWorkers = DefaultSnapshotWorkers
	}
	if cfg.SnapshotChunkSize <= 0 {
		cfg.SnapshotChunkSize = DefaultSnapshotChunkSize
	}
	switch cfg.SnapshotMode {
	case "":
		cfg.SnapshotMode = SnapshotWatermark
	case SnapshotWatermark, SnapshotLock:
	default:
		return cfg, fmt.Errorf("mysql: config: snapshot mode %q is not %q or %q", cfg.SnapshotMode, SnapshotWatermark, SnapshotLock)
	}
	if cfg.HeartbeatInterval < 0 {
		cfg.HeartbeatInterval = 0
	}
	if cfg.ServerID == 0 {
		cfg.ServerID = DeriveServerID(cfg.Pipeline)
	}
	keys := make(map[string][]string, len(cfg.Keys))
	for t, cols := range cfg.Keys {
		if strings.Count(t, ".") != 1 || len(cols) == 0 {
			return cfg, fmt.Errorf("mysql: config: key override %q: want \"db.table\" with at least one column", t)
		}
		keys[t] = cols
	}
	cfg.Keys = keys
	return cfg, nil
}

// DeriveServerID maps a pipeline name to a replica server id in
// [1000, 2^31): FNV-32a of the name, modulo the range size, plus 1000. Ids
// below 1000 are left to real servers by convention.
func DeriveServerID(pipeline string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(pipeline))
	return 1000 + h.Sum32()%(1<<31-1000)
}

// dsn is a parsed go-sql-driver style DSN.
type dsn struct {
	User, Password string
	Net, Addr      string
	TLSMode        string // "", "true", "skip-verify", "false", "preferred"
	DialTimeout    time.Duration
}

// parseDSN parses "[user[:password]@][net[(addr)]]/[dbname][?params]".
// The password may contain any character but the last '@'.
func parseDSN(s string) (dsn, error) {
	d := dsn{Net: "tcp", Addr: "127.0.0.1:3306", DialTimeout: 10 * time.Second}
	slash := strings.LastIndexByte(s, '/')
	if slash < 0 {
		return d, errors.New("mysql: DSN has no '/' (want user:pw@tcp(host:port)/)")
	}
	head, tail := s[:slash], s[slash+1:]
	if at := strings.LastIndexByte(head, '@'); at >= 0 {
		cred := head[:at]
		head = head[at+1:]
		if colon := strings.IndexByte(cred, ':'); colon >= 0 {
			d.User, d.Password = cred[:colon], cred[colon+1:]
		} else {
			d.User = cred
		}
	}
	if head != "" {
		open := strings.IndexByte(head, '(')
		if open < 0 {
			d.Net = head
		} else {
			if !strings.HasSuffix(head, ")") {
				return d, errors.New("mysql: DSN: unterminated address, want net(addr)")
			}
			d.Net = head[:open]
			d.Addr = head[open+1 : len(head)-1]
		}
	}
	if d.Net != "tcp" && d.Net != "unix" {
		return d, fmt.Errorf("mysql: DSN: network %q not supported (tcp or unix)", d.Net)
	}
	if d.Net == "tcp" {
		if _, _, err := net.SplitHostPort(d.Addr); err != nil {
			d.Addr = net.JoinHostPort(d.Addr, "3306")
		}
	}
	if q := strings.IndexByte(tail, '?'); q >= 0 {
		params, err := url.ParseQuery(tail[q+1:])
		if err != nil {
			return d, fmt.Errorf("mysql: DSN parameters: %v", err)
		}
		d.TLSMode = strings.ToLower(params.Get("tls"))
		if v := params.Get("timeout"); v != "" {
			t, err := time.ParseDuration(v)
			if err != nil {
				return d, fmt.Errorf("mysql: DSN timeout: %v", err)
			}
			d.DialTimeout = t
		}
	}
	if d.User == "" {
		return d, errors.New("mysql: DSN has no user")
	}
	return d, nil
}

// hostPort splits the TCP address (the dump connection reports its port).
func (d dsn) hostPort() (string, uint16, error) {
	if d.Net != "tcp" {
		return d.Addr, 0, nil
	}
	h, p, err := net.SplitHostPort(d.Addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, uint16(n), nil
}

// String renders the DSN for messages: user and address, never the password.
func (d dsn) String() string { return d.User + "@" + d.Net + "(" + d.Addr + ")" }

// tablePattern is one "db.table" glob pair.
type tablePattern struct{ db, table string }

func parseTablePattern(p string) (tablePattern, error) {
	i := strings.IndexByte(p, '.')
	if i <= 0 || i == len(p)-1 || strings.Count(p, ".") != 1 {
		return tablePattern{}, fmt.Errorf("mysql: config: table pattern %q is not \"db.table\"", p)
	}
	tp := tablePattern{db: p[:i], table: p[i+1:]}
	for _, part := range []string{tp.db, tp.table} {
		if _, err := path.Match(part, ""); err != nil {
			return tp, fmt.Errorf("mysql: config: table pattern %q: %v", p, err)
		}
	}
	return tp, nil
}

// tableFilter matches qualified table names against the configured patterns.
type tableFilter []tablePattern

func newTableFilter(patterns []string) tableFilter {
	var f tableFilter
	for _, p := range patterns {
		tp, err := parseTablePattern(p)
		if err == nil {
			f = append(f, tp)
		}
	}
	return f
}

// Match reports whether db.table is captured.
func (f tableFilter) Match(db, table string) bool {
	for _, p := range f {
		if ok, _ := path.Match(p.db, db); !ok {
			continue
		}
		if ok, _ := path.Match(p.table, table); ok {
			return true
		}
	}
	return false
}

// literalDBs lists the database parts without glob characters, for
// narrowing information_schema queries; nil if any part is a glob.
func (f tableFilter) literalDBs() []string {
	seen := map[string]bool{}
	for _, p := range f {
		if strings.ContainsAny(p.db, "*?[\\") {
			return nil
		}
		seen[p.db] = true
	}
	out := make([]string, 0, len(seen))
	for db := range seen {
		out = append(out, db)
	}
	sort.Strings(out)
	return out
}
