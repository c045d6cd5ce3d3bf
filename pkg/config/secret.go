package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
)

// Redacted is what a Secret prints as, in every format.
const Redacted = "[redacted]"

// DSNMask replaces the password inside a DSN printed with RedactDSN or DSN.String.
const DSNMask = "xxxxx"

// Secret is a string that must not show up in logs, error messages or dumps:
// String, GoString, Format (every fmt verb), MarshalJSON, MarshalText,
// MarshalYAML and LogValue all return "[redacted]". Use Reveal to get the
// value itself.
type Secret string

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

// IsSet reports whether the secret is non-empty.
func (s Secret) IsSet() bool { return s != "" }

// String returns "[redacted]".
func (Secret) String() string { return Redacted }

// GoString returns "[redacted]".
func (Secret) GoString() string { return Redacted }

// Format writes "[redacted]" whatever the verb and flags.
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, Redacted) }

// MarshalJSON returns "[redacted]" as a JSON string.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText returns "[redacted]".
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// MarshalYAML returns "[redacted]".
func (Secret) MarshalYAML() (any, error) { return Redacted, nil }

// LogValue returns "[redacted]" (log/slog.LogValuer).
func (Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// DSN is a data source name (connection string). It prints with its password
// masked (see RedactDSN) in every format: String, GoString, Format,
// MarshalJSON, MarshalText, MarshalYAML and LogValue. Use Reveal to get the
// value to connect with.
type DSN string

// Reveal returns the DSN itself, password included.
func (d DSN) Reveal() string { return string(d) }

// String returns the DSN with its password masked.
func (d DSN) String() string { return RedactDSN(string(d)) }

// GoString returns the DSN with its password masked.
func (d DSN) GoString() string { return RedactDSN(string(d)) }

// Format writes the DSN with its password masked, whatever the verb.
func (d DSN) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", RedactDSN(string(d)))
		return
	}
	_, _ = io.WriteString(f, RedactDSN(string(d)))
}

// MarshalJSON returns the masked DSN as a JSON string.
func (d DSN) MarshalJSON() ([]byte, error) { return json.Marshal(RedactDSN(string(d))) }

// MarshalText returns the masked DSN.
func (d DSN) MarshalText() ([]byte, error) { return []byte(RedactDSN(string(d))), nil }

// MarshalYAML returns the masked DSN.
func (d DSN) MarshalYAML() (any, error) { return RedactDSN(string(d)), nil }

// LogValue returns the masked DSN (log/slog.LogValuer).
func (d DSN) LogValue() slog.Value { return slog.StringValue(RedactDSN(string(d))) }

var (
	urlSchemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)
	kvDSNRE     = regexp.MustCompile(`^\s*[A-Za-z_]+\s*=`)
	kvPassRE    = regexp.MustCompile(`(?i)(\b(?:password|sslpassword|passwd|pwd)\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)`)
	queryPassRE = regexp.MustCompile(`(?i)([?&](?:password|sslpassword|passwd|pwd|pass)=)[^&#]*`)
)

// RedactDSN masks the password in a DSN with "xxxxx". It understands
//
//   - URL DSNs: postgres://user:pw@host:5432/db?sslpassword=pw (the user info
//     password and password-like query parameters are masked),
//   - go-sql-driver/mysql DSNs: user:pw@tcp(host:3306)/db,
//   - key=value DSNs: host=h user=u password=pw (also password='quoted pw').
//
// When in doubt it masks more rather than less. The empty string is returned
// unchanged.
func RedactDSN(dsn string) string {
	switch {
	case dsn == "":
		return ""
	case urlSchemeRE.MatchString(dsn):
		return redactQuery(redactUserinfo(dsn, strings.Index(dsn, "://")+3, len(dsn)))
	case kvDSNRE.MatchString(dsn):
		return kvPassRE.ReplaceAllString(dsn, "${1}"+DSNMask)
	default:
		// go-sql-driver: [user[:password]@][net[(addr)]]/dbname[?params]. The
		// driver splits at the last '/' and then at the last '@' before it,
		// so the password may itself contain '/' and '@'.
		end := len(dsn)
		if i := strings.LastIndex(dsn, "/"); i >= 0 {
			end = i
		}
		return redactQuery(redactUserinfo(dsn, 0, end))
	}
}

// redactUserinfo masks "pw" in s[start:end] = "user:pw@rest", splitting at
// the last '@' (so an unescaped '@' in the password is still masked) and the
// first ':' before it.
func redactUserinfo(s string, start, end int) string {
	at := strings.LastIndex(s[start:end], "@")
	if at < 0 {
		return s
	}
	at += start
	c := strings.Index(s[start:at], ":")
	if c < 0 {
		return s
	}
	c += start
	if c+1 == at { // empty password
		return s
	}
	return s[:c+1] + DSNMask + s[at:]
}

func redactQuery(s string) string {
	return queryPassRE.ReplaceAllString(s, "${1}"+DSNMask)
}
