package sql

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// Dialects.
const (
	dialectPostgres = "postgres"
	dialectMySQL    = "mysql"
)

// dsnInfo is a parsed DSN. Only host and database ever appear in messages;
// password is kept to scrub it from driver errors.
type dsnInfo struct {
	dialect  string
	host     string // "host:port" (or the socket path), for messages
	database string
	password string
	pg       *pgx.ConnConfig
	my       *mysql.Config
}

var kvDSN = regexp.MustCompile(`^\s*[A-Za-z_]+\s*=`)

// parseDSN picks the dialect from the DSN's form:
//
//	postgres://, postgresql://, or libpq "key=value ..."  -> PostgreSQL (pgx)
//	mysql://user:pw@host:3306/db?param=value, mariadb:// -> MySQL/MariaDB
//	user:pw@tcp(host:3306)/db?param=value (go-sql-driver) -> MySQL/MariaDB
//
// Errors never contain the password.
func parseDSN(dsn string) (dsnInfo, error) {
	lower := strings.ToLower(strings.TrimSpace(dsn))
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"), kvDSN.MatchString(dsn):
		return parsePostgresDSN(dsn)
	case strings.HasPrefix(lower, "mysql://"), strings.HasPrefix(lower, "mariadb://"):
		cfg, err := mysqlURLConfig(dsn)
		if err != nil {
			return dsnInfo{}, err
		}
		return mysqlInfo(cfg)
	case strings.Contains(lower, "://"):
		return dsnInfo{}, errors.New("unsupported scheme (want postgres://, postgresql://, mysql:// or mariadb://)")
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return dsnInfo{}, errors.New("not a PostgreSQL URL or key=value DSN, nor a MySQL DSN (user:pw@tcp(host:3306)/db)")
	}
	return mysqlInfo(cfg)
}

func parsePostgresDSN(dsn string) (dsnInfo, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgconn redacts the password in its parse errors; scrub anyway.
		return dsnInfo{}, errors.New("invalid PostgreSQL DSN: " + scrub(err.Error(), dsnPassword(dsn)))
	}
	// Zone-less timestamps are read as UTC (see convert.go).
	cfg.RuntimeParams["timezone"] = "UTC"
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "plume"
	}
	// Every parameter is bound as text and cast in SQL ($1::text::numeric),
	// so the exec mode (one round trip, no statement cache to bloat with
	// statements of every row count) needs no type information.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 15 * time.Second
	}
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	}
	return dsnInfo{
		dialect:  dialectPostgres,
		host:     host,
		database: cfg.Database,
		password: cfg.Password,
		pg:       cfg,
	}, nil
}

// mysqlURLConfig turns mysql://user:pw@host:port/db?params into a
// go-sql-driver Config. Params are passed to the driver as in its own DSN
// form (tls=true, charset=..., or session variables).
func mysqlURLConfig(dsn string) (*mysql.Config, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, errors.New("invalid MySQL URL")
	}
	db := strings.TrimPrefix(u.Path, "/")
	cfg, err := mysql.ParseDSN("/" + db + "?" + u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("invalid MySQL URL parameters: %v", err)
	}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	host := u.Hostname()
	if host == "" {
		host = "127.0.0.1"
	}
	port := u.Port()
	if port == "" {
		port = "3306"
	}
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort(host, port)
	return cfg, nil
}

func mysqlInfo(cfg *mysql.Config) (dsnInfo, error) {
	// Placeholders are interpolated by the driver (safe with utf8mb4 and
	// aware of NO_BACKSLASH_ESCAPES): one round trip per statement instead
	// of prepare/execute/close for statements of every row count.
	cfg.InterpolateParams = true
	cfg.ParseTime = false
	cfg.MultiStatements = false
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	// Zone-less timestamps are UTC (see convert.go); strict mode makes bad
	// values errors (dead-lettered) instead of silently truncated data.
	if _, ok := cfg.Params["time_zone"]; !ok {
		cfg.Params["time_zone"] = "'+00:00'"
	}
	if _, ok := cfg.Params["sql_mode"]; !ok {
		cfg.Params["sql_mode"] = "CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')"
	}
	return dsnInfo{
		dialect:  dialectMySQL,
		host:     cfg.Addr,
		database: cfg.DBName,
		password: cfg.Passwd,
		my:       cfg,
	}, nil
}

// dsnPassword extracts the password of a URL DSN, for scrubbing only.
func dsnPassword(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		p, _ := u.User.Password()
		return p
	}
	return ""
}

// scrub removes the password from a message. Passwords shorter than 3
// characters are left alone: replacing them would mangle the message, and
// they are no secret anyway.
func scrub(msg, password string) string {
	if len(password) < 3 {
		return msg
	}
	return strings.ReplaceAll(msg, password, "xxxxx")
}
