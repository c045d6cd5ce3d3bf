package http

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/config"
)

// Modes (the mode key).
const (
	ModeBinary     = "binary"     // one event per request, attributes in ce-* headers
	ModeStructured = "structured" // one event per request, application/cloudevents+json
	ModeBatch      = "batch"      // application/cloudevents-batch+json arrays
)

// Bodies (the body key).
const (
	BodyEvent = "event" // the CloudEvent's own data (the change envelope)
	BodyRow   = "row"   // the route's mapped row
)

// Defaults for the optional configuration keys.
const (
	DefaultMode        = ModeBinary
	DefaultBody        = BodyEvent
	DefaultMaxBatch    = 100
	DefaultConcurrency = 4
	DefaultTimeout     = 10 * time.Second

	maxMaxBatch    = 10000
	maxConcurrency = 256
)

// Config is the configuration block of a target of type http
// (targets.<name> in the pipeline file). See docs/targets/http.md.
type Config struct {
	// URL receives the events (POST). http or https; it must not carry
	// credentials (use Auth). Errors name its scheme and host only, since
	// webhook URLs often hold a secret in their path or query.
	URL string `yaml:"url"`
	// Mode is binary (default), structured or batch.
	Mode string `yaml:"mode"`
	// Body is event (default: the CloudEvent's data, the change envelope)
	// or row (the route's Message.Row).
	Body string `yaml:"body"`
	// MaxBatch is the most events in one request in batch mode.
	MaxBatch int `yaml:"max_batch"`
	// Concurrency is the most requests in flight within a batch; two
	// requests for the same subject are never in flight together.
	Concurrency int `yaml:"concurrency"`
	// Timeout bounds one request, response body included, and one token
	// request.
	Timeout config.Duration `yaml:"timeout"`
	// Headers are added to every request. Their values are treated as
	// secrets: never printed or logged.
	Headers map[string]config.Secret `yaml:"headers"`
	// Auth selects at most one of bearer, basic and oauth2.
	Auth Auth `yaml:"auth"`
	// TLS configures TLS for https URLs (and the OAuth2 token endpoint).
	// Relative file names are resolved against the pipeline file's
	// directory.
	TLS config.TLS `yaml:"tls"`
}

// Auth is the auth block: at most one of its keys.
type Auth struct {
	// Bearer sends "Authorization: Bearer <token>".
	Bearer config.Secret `yaml:"bearer"`
	// Basic sends HTTP basic authentication.
	Basic *Basic `yaml:"basic"`
	// OAuth2 fetches tokens with the client credentials grant.
	OAuth2 *OAuth2 `yaml:"oauth2"`
}

// Basic is HTTP basic authentication.
type Basic struct {
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
}

// OAuth2 is the OAuth 2.0 client credentials grant (RFC 6749 section 4.4).
type OAuth2 struct {
	TokenURL     string        `yaml:"token_url"`
	ClientID     string        `yaml:"client_id"`
	ClientSecret config.Secret `yaml:"client_secret"`
	Scopes       []string      `yaml:"scopes"`
	// Params are extra form parameters of the token request, such as
	// audience or resource.
	Params map[string]string `yaml:"params"`
}

// DefaultConfig returns a Config with the defaults of the optional keys
// filled in; decode the YAML block into it.
func DefaultConfig() Config {
	return Config{
		Mode:        DefaultMode,
		Body:        DefaultBody,
		MaxBatch:    DefaultMaxBatch,
		Concurrency: DefaultConcurrency,
		Timeout:     config.Duration{Duration: DefaultTimeout},
	}
}

// settings is a validated Config.
type settings struct {
	url         *url.URL
	origin      string // scheme://host[:port], the only part of the URL errors show
	mode        string
	body        string
	maxBatch    int
	concurrency int
	timeout     time.Duration
	headers     [][2]string // canonical name, value
	auth        Auth
	tls         *tls.Config // nil: the default transport's
}

// reservedHeaders are set by the target itself.
var reservedHeaders = map[string]bool{
	"Content-Type":      true,
	"Content-Length":    true,
	"Content-Encoding":  true,
	"Transfer-Encoding": true,
	"Connection":        true,
	"Host":              true,
	"Idempotency-Key":   true,
	"Te":                true,
	"Trailer":           true,
	"Upgrade":           true,
}

// validate checks c and resolves the TLS files against dir. Errors are
// config errors about the target's keys, through errf.
func (c *Config) validate(dir string, errf func(top, key, format string, args ...any) error) (*settings, error) {
	var errs []error
	bad := func(top, key, format string, args ...any) {
		errs = append(errs, errf(top, key, format, args...))
	}
	s := &settings{auth: c.Auth}

	if strings.TrimSpace(c.URL) == "" {
		bad("url", "url", "is required")
	} else if u, err := parseHTTPURL(c.URL); err != nil {
		bad("url", "url", "%v", err)
	} else {
		s.url = u
		s.origin = u.Scheme + "://" + u.Host
	}

	switch m := strings.TrimSpace(c.Mode); m {
	case "":
		s.mode = DefaultMode
	case ModeBinary, ModeStructured, ModeBatch:
		s.mode = m
	default:
		bad("mode", "mode", "%q: want binary, structured or batch", c.Mode)
	}

	switch b := strings.TrimSpace(c.Body); b {
	case "":
		s.body = DefaultBody
	case BodyEvent, BodyRow:
		s.body = b
	default:
		bad("body", "body", "%q: want event or row", c.Body)
	}

	switch {
	case c.MaxBatch == 0:
		s.maxBatch = DefaultMaxBatch
	case c.MaxBatch < 0 || c.MaxBatch > maxMaxBatch:
		bad("max_batch", "max_batch", "%d is out of range 1..%d", c.MaxBatch, maxMaxBatch)
	default:
		s.maxBatch = c.MaxBatch
	}

	switch {
	case c.Concurrency == 0:
		s.concurrency = DefaultConcurrency
	case c.Concurrency < 0 || c.Concurrency > maxConcurrency:
		bad("concurrency", "concurrency", "%d is out of range 1..%d", c.Concurrency, maxConcurrency)
	default:
		s.concurrency = c.Concurrency
	}

	switch {
	case c.Timeout.Duration == 0:
		s.timeout = DefaultTimeout
	case c.Timeout.Duration < 0:
		bad("timeout", "timeout", "must be positive")
	default:
		s.timeout = c.Timeout.Duration
	}

	a := c.Auth
	n := 0
	if a.Bearer.IsSet() {
		n++
	}
	if a.Basic != nil {
		n++
		if a.Basic.Username == "" {
			bad("auth", "auth.basic.username", "is required")
		}
		if strings.Contains(a.Basic.Username, ":") {
			bad("auth", "auth.basic.username", "must not contain ':'")
		}
	}
	if a.OAuth2 != nil {
		n++
		o := a.OAuth2
		if strings.TrimSpace(o.TokenURL) == "" {
			bad("auth", "auth.oauth2.token_url", "is required")
		} else if _, err := parseHTTPURL(o.TokenURL); err != nil {
			bad("auth", "auth.oauth2.token_url", "%v", err)
		}
		if o.ClientID == "" {
			bad("auth", "auth.oauth2.client_id", "is required")
		}
		if !o.ClientSecret.IsSet() {
			bad("auth", "auth.oauth2.client_secret", "is required")
		}
		for _, sc := range o.Scopes {
			if sc == "" || strings.ContainsAny(sc, " \"\\") {
				bad("auth", "auth.oauth2.scopes", "invalid scope %q", sc)
			}
		}
		for k := range o.Params {
			switch k {
			case "grant_type", "scope", "client_id", "client_secret":
				bad("auth", "auth.oauth2.params", "%q is set by the target", k)
			}
		}
	}
	if n > 1 {
		bad("auth", "auth", "set only one of bearer, basic and oauth2")
	}

	for name, v := range c.Headers {
		canon := textproto.CanonicalMIMEHeaderKey(name)
		switch {
		case !validToken(name):
			bad("headers", "headers", "invalid header name %q", name)
		case reservedHeaders[canon] || strings.HasPrefix(canon, "Ce-"):
			bad("headers", "headers", "%s is set by the target", canon)
		case canon == "Authorization" && n > 0:
			bad("headers", "headers", "Authorization conflicts with auth")
		case !validHeaderValue(v.Reveal()):
			// The value is a secret: do not print it.
			bad("headers", "headers", "the value of %s contains control characters", canon)
		default:
			s.headers = append(s.headers, [2]string{canon, v.Reveal()})
		}
	}

	if !c.TLS.IsZero() {
		t := c.TLS
		for _, p := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
			if *p != "" && !filepath.IsAbs(*p) && dir != "" {
				*p = filepath.Join(dir, *p)
			}
		}
		if s.url != nil && s.url.Scheme != "https" {
			bad("tls", "tls", "is set but url is not https")
		}
		if tc, err := t.ClientConfig(); err != nil {
			bad("tls", "tls", "%v", err)
		} else {
			s.tls = tc
		}
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// parseHTTPURL accepts absolute http and https URLs without credentials.
// Its errors never quote the URL, which may hold a secret.
func parseHTTPURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, errors.New("not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme must be http or https")
	}
	if u.Host == "" {
		return nil, errors.New("has no host")
	}
	if u.User != nil {
		return nil, errors.New("must not hold credentials: use auth.basic")
	}
	if u.Fragment != "" {
		return nil, errors.New("must not have a fragment")
	}
	return u, nil
}

// validToken reports whether s is an RFC 9110 token (a header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue rejects control characters other than tab.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
