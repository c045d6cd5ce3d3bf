package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sessionParams are set on every connection Plume opens (normal, snapshot
// and replication). They fix the text output of every type, which is what
// pgoutput sends and what snapshots read, so both paths decode identical
// text (see types.go and docs/types-postgres.md). The walsender of a
// logical replication connection applies startup parameters like any
// backend, so its output functions honour them too.
var sessionParams = map[string]string{
	"client_encoding":    "UTF8",
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "iso_8601",
	"TimeZone":           "UTC",
	"extra_float_digits": "1", // shortest exact float text
	"bytea_output":       "hex",
	"lc_monetary":        "C", // money as -$1,234.56: parsed reliably
	"application_name":   "plume",
}

// connector builds connection configurations from Config.DSN and opens
// connections with bounded retries.
type connector struct {
	dsn      string
	tls      *tls.Config   // overrides sslmode when set
	attempts int           // connection attempts before giving up
	backoff  time.Duration // first retry delay, doubled up to maxBackoff
}

const maxBackoff = 8 * time.Second

// parse returns the pgconn config for the DSN with Plume's session
// parameters; replication selects a logical replication connection.
func (c *connector) parse(replication bool) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(c.dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: invalid DSN: %s", redact(err.Error(), c.dsn))
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	for k, v := range sessionParams {
		if _, set := cfg.RuntimeParams[k]; !set || k != "application_name" {
			cfg.RuntimeParams[k] = v
		}
	}
	if replication {
		cfg.RuntimeParams["replication"] = "database"
	} else {
		delete(cfg.RuntimeParams, "replication")
	}
	if c.tls != nil {
		// An explicit tls.Config replaces sslmode handling: TLS always, no
		// plaintext fallback.
		t := c.tls.Clone()
		if t.ServerName == "" {
			t.ServerName = cfg.Host
		}
		cfg.TLSConfig = t
		cfg.Fallbacks = nil
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return cfg, nil
}

// address renders host:port, user and database of the DSN, never the password.
func (c *connector) address() string {
	cfg, err := pgconn.ParseConfig(c.dsn)
	if err != nil {
		return "(invalid DSN)"
	}
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(cfg.Port)))
	}
	return fmt.Sprintf("%s (user %s, database %s)", host, cfg.User, cfg.Database)
}

// connect opens a normal pgx connection, retrying transient failures.
func (c *connector) connect(ctx context.Context) (*pgx.Conn, error) {
	pc, err := c.parse(false)
	if err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cc.Config = *pc
	// No statement cache surprises across DDL: describe each time is cheap
	// for the few statements Plume runs.
	cc.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	var conn *pgx.Conn
	err = c.retry(ctx, func() error {
		var err error
		conn, err = pgx.ConnectConfig(ctx, cc)
		return err
	})
	return conn, err
}

// connectReplication opens a logical replication connection
// (replication=database), retrying transient failures.
func (c *connector) connectReplication(ctx context.Context) (*pgconn.PgConn, error) {
	pc, err := c.parse(true)
	if err != nil {
		return nil, err
	}
	var conn *pgconn.PgConn
	err = c.retry(ctx, func() error {
		var err error
		conn, err = pgconn.ConnectConfig(ctx, pc)
		return err
	})
	return conn, err
}

func (c *connector) retry(ctx context.Context, fn func() error) error {
	attempts := c.attempts
	if attempts <= 0 {
		attempts = 5
	}
	delay := c.backoff
	if delay <= 0 {
		delay = time.Second
	}
	var err error
	for i := 1; ; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if permanent(err) || i >= attempts {
			return fmt.Errorf("postgres: cannot connect to %s after %d attempt(s): %s",
				c.address(), i, redact(err.Error(), c.dsn))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, maxBackoff)
	}
}

// permanent reports connection errors that retrying cannot fix: bad
// credentials, missing database, missing privilege, bad TLS setup.
func permanent(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "28", "3D", "42": // auth, invalid catalog name, privilege/syntax
			return true
		}
		return pe.Code == "55000" // object not in prerequisite state (wal_level)
	}
	return false
}

// redact removes the DSN's password from s.
func redact(s, dsn string) string {
	pw := dsnPassword(dsn)
	if pw == "" {
		return s
	}
	return strings.ReplaceAll(s, pw, "****")
}

func dsnPassword(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err == nil {
		return cfg.Password
	}
	// Best effort for unparsable URLs: postgres://user:pw@host
	if _, rest, ok := strings.Cut(dsn, "://"); ok {
		if userinfo, _, ok := strings.Cut(rest, "@"); ok {
			if _, pw, ok := strings.Cut(userinfo, ":"); ok {
				return pw
			}
		}
	}
	return ""
}
