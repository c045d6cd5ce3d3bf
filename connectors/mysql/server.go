package mysql

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// conn is a plain (non-replication) connection to the server, set up for
// Plume: utf8mb4, session time zone UTC (TIMESTAMP values in UTC).
type conn struct {
	*client.Conn
}

// tlsConfig resolves the TLS settings: Config.TLS wins over the DSN's tls
// parameter.
func (s *Source) tlsConfig() *tls.Config {
	if s.cfg.TLS != nil {
		return s.cfg.TLS
	}
	switch s.dsn.TLSMode {
	case "true":
		host, _, _ := net.SplitHostPort(s.dsn.Addr)
		return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	case "skip-verify", "preferred":
		return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the user asked for it
	}
	return nil
}

// dialOnce opens one connection (no retries).
func (s *Source) dialOnce(ctx context.Context) (*conn, error) {
	d := &net.Dialer{Timeout: s.dsn.DialTimeout}
	tc := s.tlsConfig()
	ctx, cancel := context.WithTimeout(ctx, s.dsn.DialTimeout+5*time.Second)
	defer cancel()
	c, err := client.ConnectWithDialer(ctx, s.dsn.Net, s.dsn.Addr, s.dsn.User, s.dsn.Password, "", d.DialContext,
		func(c *client.Conn) error {
			if tc != nil {
				c.SetTLSConfig(tc)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	if _, err := c.Execute("SET NAMES utf8mb4, time_zone = '+00:00'"); err != nil {
		c.Close()
		return nil, err
	}
	return &conn{c}, nil
}

// dial opens a connection with bounded retries (s.connectAttempts, backoff
// doubling from s.retryBackoff). The error names the address and user, never
// the password.
func (s *Source) dial(ctx context.Context) (*conn, error) {
	var err error
	backoff := s.retryBackoff
	for attempt := 1; ; attempt++ {
		var c *conn
		c, err = s.dialOnce(ctx)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if isAuthError(err) || attempt >= s.connectAttempts {
			break
		}
		s.log.Warn("mysql: connect failed, retrying", "addr", s.dsn.Addr, "attempt", attempt, "err", redact(err, s.dsn.Password))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	return nil, fmt.Errorf("mysql: cannot connect to %s: %w", s.dsn, redactErr(err, s.dsn.Password))
}

func isAuthError(err error) bool {
	if strings.Contains(err.Error(), "does not support TLS") || strings.Contains(err.Error(), "x509:") {
		return true // a configuration problem: retrying cannot help
	}
	var me *gomysql.MyError
	if errors.As(err, &me) {
		return me.Code == gomysql.ER_ACCESS_DENIED_ERROR || me.Code == gomysql.ER_DBACCESS_DENIED_ERROR
	}
	return false
}

// redact removes the password from an error message (belt and braces: the
// drivers do not print it, but a DSN may end up in a wrapped message).
func redact(err error, pw string) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if pw != "" {
		msg = strings.ReplaceAll(msg, pw, "******")
	}
	return msg
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redactErr(err error, pw string) error {
	if pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return &redactedError{msg: redact(err, pw), err: err}
}

// query runs a text-protocol statement, aborting it if ctx ends.
func (c *conn) query(ctx context.Context, sql string, args ...any) (*gomysql.Result, error) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r, err := c.Execute(sql, args...)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return r, err
}

// rows returns every row of a small result as strings (NULL -> "", ok=false).
func rowsOf(r *gomysql.Result) [][]string {
	if r == nil || r.Resultset == nil {
		return nil
	}
	out := make([][]string, r.RowNumber())
	for i := range out {
		row := make([]string, r.ColumnNumber())
		for j := range row {
			row[j], _ = r.GetString(i, j)
		}
		out[i] = row
	}
	return out
}

// serverInfo is what Run learns about the server before streaming.
type serverInfo struct {
	Version    string
	Flavor     string // gomysql.MySQLFlavor or gomysql.MariaDBFlavor
	ServerID   uint32
	GTIDMode   bool // GTIDs usable for resuming
	Collations map[uint64]string
}

// inspect detects the flavor and checks the binlog configuration. Every
// problem found is listed in one error with the statements that fix it.
func (s *Source) inspect(ctx context.Context, c *conn) (*serverInfo, error) {
	info := &serverInfo{Version: c.GetServerVersion(), Flavor: gomysql.MySQLFlavor}
	r, err := c.query(ctx, "SELECT VERSION(), @@server_id")
	if err != nil {
		return nil, fmt.Errorf("mysql: %s: %w", s.dsn, err)
	}
	if row := rowsOf(r); len(row) == 1 {
		info.Version = row[0][0]
		id, _ := strconv.ParseUint(row[0][1], 10, 32)
		info.ServerID = uint32(id)
	}
	if strings.Contains(strings.ToLower(info.Version), "mariadb") {
		info.Flavor = gomysql.MariaDBFlavor
	}
	if info.ServerID == s.cfg.ServerID {
		return nil, fmt.Errorf("mysql: the replica server id %d equals the server's own server_id; set another ServerID in the pipeline config", s.cfg.ServerID)
	}

	r, err = c.query(ctx, "SHOW GLOBAL VARIABLES WHERE Variable_name IN "+
		"('log_bin','binlog_format','binlog_row_image','binlog_row_metadata','gtid_mode','binlog_row_value_options')")
	if err != nil {
		return nil, fmt.Errorf("mysql: %s: reading server variables: %w", s.dsn, err)
	}
	vars := map[string]string{}
	for _, row := range rowsOf(r) {
		vars[strings.ToLower(row[0])] = strings.ToUpper(row[1])
	}
	var problems []string
	if vars["log_bin"] != "ON" && vars["log_bin"] != "1" {
		problems = append(problems, "binary logging is off: start the server with log_bin (e.g. log-bin=binlog under [mysqld]; needs a restart)")
	}
	want := func(name, value, hint string) {
		if vars[name] != value {
			got := vars[name]
			if got == "" {
				got = "not supported by this server version"
			}
			problems = append(problems, fmt.Sprintf("%s is %s, want %s: SET GLOBAL %s = '%s'; and %s=%s under [mysqld] in the server config%s",
				name, got, value, name, value, name, value, hint))
		}
	}
	want("binlog_format", "ROW", " (affects new sessions only)")
	want("binlog_row_image", "FULL", "")
	// Column names, signedness, charsets and enum/set values come from the
	// TABLE_MAP's optional metadata, which only FULL writes. Plume has no
	// DDL parser or schema history yet, so this is required (MySQL >= 8.0.14,
	// MariaDB >= 10.5). Events written before the setting changed still lack
	// it and are rejected when read.
	want("binlog_row_metadata", "FULL", " (MySQL >= 8.0.14, MariaDB >= 10.5)")
	if v := vars["binlog_row_value_options"]; v != "" {
		problems = append(problems, "binlog_row_value_options is "+v+": partial JSON updates are not supported: SET GLOBAL binlog_row_value_options = ''")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("mysql: server %s (%s) is not configured for row-based change capture:\n  - %s",
			s.dsn.Addr, info.Version, strings.Join(problems, "\n  - "))
	}
	switch info.Flavor {
	case gomysql.MariaDBFlavor:
		info.GTIDMode = true // MariaDB always writes GTIDs (>= 10.0)
	default:
		info.GTIDMode = vars["gtid_mode"] == "ON"
	}
	if s.noGTID {
		info.GTIDMode = false
	}
	info.Collations = s.loadCollations(ctx, c)
	return info, nil
}

// loadCollations maps collation ids to character set names. MariaDB >= 10.10
// lists its full collation ids in COLLATION_CHARACTER_SET_APPLICABILITY.
func (s *Source) loadCollations(ctx context.Context, c *conn) map[uint64]string {
	m := make(map[uint64]string, len(defaultCollations))
	for id, cs := range defaultCollations {
		m[id] = cs
	}
	for _, q := range []string{
		"SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
		"SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL",
	} {
		r, err := c.query(ctx, q)
		if err != nil {
			continue
		}
		for _, row := range rowsOf(r) {
			if id, err := strconv.ParseUint(row[0], 10, 64); err == nil && row[1] != "" {
				m[id] = strings.ToLower(row[1])
			}
		}
	}
	return m
}

// masterStatus returns the binlog end position, and with it the GTID set at
// that position (MySQL: Executed_Gtid_Set; MariaDB: BINLOG_GTID_POS).
func masterStatus(ctx context.Context, c *conn, flavor string) (binlogPos, string, error) {
	r, err := c.query(ctx, "SHOW MASTER STATUS")
	if err != nil {
		var me *gomysql.MyError
		if errors.As(err, &me) && me.Code == gomysql.ER_PARSE_ERROR {
			r, err = c.query(ctx, "SHOW BINARY LOG STATUS") // MySQL >= 8.4
		}
		if err != nil {
			return binlogPos{}, "", privilegeHint(err, "REPLICATION CLIENT (MariaDB >= 10.5: BINLOG MONITOR)")
		}
	}
	rows := rowsOf(r)
	if len(rows) == 0 || rows[0][0] == "" {
		return binlogPos{}, "", errors.New("mysql: SHOW MASTER STATUS returned nothing: is binary logging on?")
	}
	p, err := strconv.ParseUint(rows[0][1], 10, 32)
	if err != nil {
		return binlogPos{}, "", fmt.Errorf("mysql: bad binlog position %q", rows[0][1])
	}
	pos := binlogPos{File: rows[0][0], Pos: uint32(p)}
	gtid := ""
	if flavor == gomysql.MariaDBFlavor {
		r, err := c.query(ctx, "SELECT BINLOG_GTID_POS(?, ?)", pos.File, uint64(pos.Pos))
		if err != nil {
			return pos, "", err
		}
		if rows := rowsOf(r); len(rows) == 1 {
			gtid = rows[0][0]
		}
	} else if len(rows[0]) >= 5 {
		gtid = strings.ReplaceAll(strings.ReplaceAll(rows[0][4], "\n", ""), " ", "")
	}
	return pos, gtid, nil
}

// binaryLogs lists the binlog files the server still has, oldest first.
func binaryLogs(ctx context.Context, c *conn) ([]binlogFile, error) {
	r, err := c.query(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return nil, privilegeHint(err, "REPLICATION CLIENT (MariaDB >= 10.5: BINLOG MONITOR)")
	}
	var out []binlogFile
	for _, row := range rowsOf(r) {
		n, _ := strconv.ParseInt(row[1], 10, 64)
		out = append(out, binlogFile{Name: row[0], Size: n})
	}
	return out, nil
}

type binlogFile struct {
	Name string
	Size int64
}

func privilegeHint(err error, priv string) error {
	var me *gomysql.MyError
	if errors.As(err, &me) && (me.Code == gomysql.ER_SPECIFIC_ACCESS_DENIED_ERROR || me.Code == gomysql.ER_ACCESS_DENIED_ERROR) {
		return fmt.Errorf("mysql: %w (the capture user needs %s)", err, priv)
	}
	return err
}
