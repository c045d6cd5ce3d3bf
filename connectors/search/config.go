package search

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/config"
)

// Defaults for the optional configuration keys.
const (
	DefaultTimeout        = 60 * time.Second
	DefaultMaxBulkBytes   = 5 << 20
	DefaultMaxBulkActions = 1000
	// DefaultIndexExpr names each index after the record's topic, as the
	// Kafka Connect Elasticsearch sink does.
	DefaultIndexExpr = "lower(topic)"

	maxMaxBulkBytes   = 100 << 20 // Elasticsearch's default http.max_content_length
	maxMaxBulkActions = 100000
)

// Config is the configuration block of a target of type search
// (targets.<name> in the pipeline file). See docs/targets/search.md.
type Config struct {
	// URLs are the cluster's HTTP endpoints (http or https, no path other
	// than a proxy prefix, no credentials). A request that cannot reach one
	// is retried on the next. URL is a shorthand for a single one.
	URLs []string `yaml:"urls"`
	URL  string   `yaml:"url"`
	// Index is a fixed index (or alias) name. IndexExpr is an expression
	// computing it per message; at most one of the two. Without either,
	// DefaultIndexExpr.
	Index        string     `yaml:"index"`
	IndexExpr    string     `yaml:"index_expr"`
	IndexExprPos config.Pos `yaml:"-" pos:"index_expr"`
	// CreateIndex, when set, creates a missing index with these settings
	// and mappings before the first write to it.
	CreateIndex *CreateIndex `yaml:"create_index"`
	// Auth selects at most one of basic, api_key and bearer.
	Auth Auth `yaml:"auth"`
	// TLS configures TLS for https URLs. Relative file names are resolved
	// against the pipeline file's directory.
	TLS config.TLS `yaml:"tls"`
	// Timeout bounds one HTTP request, response included.
	Timeout config.Duration `yaml:"timeout"`
	// MaxBulkBytes and MaxBulkActions bound one _bulk request; a batch
	// larger than that is sent as several requests.
	MaxBulkBytes   int `yaml:"max_bulk_bytes"`
	MaxBulkActions int `yaml:"max_bulk_actions"`
	// Refresh is the _bulk refresh parameter: "" or "false" (default),
	// "true" or "wait_for".
	Refresh string `yaml:"refresh"`
	// Pipeline is an ingest pipeline every document goes through.
	Pipeline string `yaml:"pipeline"`
}

// CreateIndex is the body of the create-index request: settings and
// mappings, each a mapping in the pipeline file or a string holding a JSON
// object.
type CreateIndex struct {
	Settings any `yaml:"settings"`
	Mappings any `yaml:"mappings"`
}

// Auth is the auth block: at most one of its keys.
type Auth struct {
	// Basic sends HTTP basic authentication.
	Basic *Basic `yaml:"basic"`
	// APIKey sends "Authorization: ApiKey <key>": the key is the "encoded"
	// value Elasticsearch returns when it creates an API key (base64 of
	// id:api_key); "id:api_key" is encoded by the target.
	APIKey config.Secret `yaml:"api_key"`
	// Bearer sends "Authorization: Bearer <token>" (Elasticsearch service
	// account and OAuth tokens).
	Bearer config.Secret `yaml:"bearer"`
}

// Basic is HTTP basic authentication.
type Basic struct {
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
}

// DefaultConfig returns a Config with the defaults of the optional keys
// filled in; decode the YAML block into it.
func DefaultConfig() Config {
	return Config{
		Timeout:        config.Duration{Duration: DefaultTimeout},
		MaxBulkBytes:   DefaultMaxBulkBytes,
		MaxBulkActions: DefaultMaxBulkActions,
	}
}

// settings is a validated Config.
type settings struct {
	urls           []*url.URL
	origins        []string // scheme://host[:port] of each URL, for errors
	index          *indexer
	createBody     []byte // nil: do not create indexes
	authorization  string // the Authorization header value, "" for none
	secrets        []string
	tls            *tls.Config
	timeout        time.Duration
	maxBulkBytes   int
	maxBulkActions int
	query          string // the _bulk query string
}

// errFunc reports a configuration error about key (top is the target's key
// under which it sits, for its position).
type errFunc func(top, key, format string, args ...any) error

// validate checks c, compiles the index expression and resolves the TLS
// files against dir.
func (c *Config) validate(dir string, errf errFunc, exprErr func(err error) error) (*settings, error) {
	var errs []error
	bad := func(top, key, format string, args ...any) {
		errs = append(errs, errf(top, key, format, args...))
	}
	s := &settings{}

	raw := c.URLs
	top := "urls"
	if strings.TrimSpace(c.URL) != "" {
		if len(c.URLs) > 0 {
			bad("url", "url", "set url or urls, not both")
		}
		raw, top = []string{c.URL}, "url"
	}
	if len(raw) == 0 {
		bad("urls", "urls", "is required (or url)")
	}
	for _, r := range raw {
		u, err := parseURL(r)
		if err != nil {
			bad(top, top, "%v", err)
			continue
		}
		s.urls = append(s.urls, u)
		s.origins = append(s.origins, u.Scheme+"://"+u.Host)
	}

	switch {
	case c.Index != "" && c.IndexExpr != "":
		bad("index", "index", "set index or index_expr, not both")
	case c.Index != "":
		if err := checkIndexName(c.Index); err != nil {
			bad("index", "index", "%v", err)
		} else {
			s.index = &indexer{fixed: c.Index}
		}
	default:
		src := c.IndexExpr
		if strings.TrimSpace(src) == "" {
			src = DefaultIndexExpr
		}
		ix, err := compileIndex(src)
		if err != nil {
			errs = append(errs, exprErr(err))
		} else {
			s.index = ix
		}
	}

	if ci := c.CreateIndex; ci != nil {
		body := map[string]json.RawMessage{}
		for _, part := range []struct {
			name string
			v    any
		}{{"settings", ci.Settings}, {"mappings", ci.Mappings}} {
			if part.v == nil {
				continue
			}
			raw, err := jsonObject(part.v)
			if err != nil {
				bad("create_index", "create_index."+part.name, "%v", err)
				continue
			}
			body[part.name] = raw
		}
		if b, err := json.Marshal(body); err == nil {
			s.createBody = b
		}
	}

	a := c.Auth
	n := 0
	if a.Basic != nil {
		n++
		if a.Basic.Username == "" {
			bad("auth", "auth.basic.username", "is required")
		}
		if strings.Contains(a.Basic.Username, ":") {
			bad("auth", "auth.basic.username", "must not contain ':'")
		}
		cred := base64.StdEncoding.EncodeToString([]byte(a.Basic.Username + ":" + a.Basic.Password.Reveal()))
		s.authorization = "Basic " + cred
		s.secrets = append(s.secrets, a.Basic.Password.Reveal(), cred)
	}
	if a.APIKey.IsSet() {
		n++
		key := strings.TrimSpace(a.APIKey.Reveal())
		if strings.Contains(key, ":") {
			key = base64.StdEncoding.EncodeToString([]byte(key))
		}
		if !validHeaderValue(key) || strings.ContainsAny(key, " \t") {
			bad("auth", "auth.api_key", "contains spaces or control characters")
		}
		s.authorization = "ApiKey " + key
		s.secrets = append(s.secrets, a.APIKey.Reveal(), key)
	}
	if a.Bearer.IsSet() {
		n++
		if !validHeaderValue(a.Bearer.Reveal()) {
			bad("auth", "auth.bearer", "contains control characters")
		}
		s.authorization = "Bearer " + a.Bearer.Reveal()
		s.secrets = append(s.secrets, a.Bearer.Reveal())
	}
	if n > 1 {
		bad("auth", "auth", "set only one of basic, api_key and bearer")
	}

	if !c.TLS.IsZero() {
		t := c.TLS
		for _, p := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
			if *p != "" && !filepath.IsAbs(*p) && dir != "" {
				*p = filepath.Join(dir, *p)
			}
		}
		for _, u := range s.urls {
			if u.Scheme != "https" {
				bad("tls", "tls", "is set but %s is not https", u.Scheme+"://"+u.Host)
				break
			}
		}
		if tc, err := t.ClientConfig(); err != nil {
			bad("tls", "tls", "%v", err)
		} else {
			s.tls = tc
		}
	}

	switch {
	case c.Timeout.Duration == 0:
		s.timeout = DefaultTimeout
	case c.Timeout.Duration < 0:
		bad("timeout", "timeout", "must be positive")
	default:
		s.timeout = c.Timeout.Duration
	}
	switch {
	case c.MaxBulkBytes == 0:
		s.maxBulkBytes = DefaultMaxBulkBytes
	case c.MaxBulkBytes < 1024 || c.MaxBulkBytes > maxMaxBulkBytes:
		bad("max_bulk_bytes", "max_bulk_bytes", "%d is out of range 1024..%d", c.MaxBulkBytes, maxMaxBulkBytes)
	default:
		s.maxBulkBytes = c.MaxBulkBytes
	}
	switch {
	case c.MaxBulkActions == 0:
		s.maxBulkActions = DefaultMaxBulkActions
	case c.MaxBulkActions < 0 || c.MaxBulkActions > maxMaxBulkActions:
		bad("max_bulk_actions", "max_bulk_actions", "%d is out of range 1..%d", c.MaxBulkActions, maxMaxBulkActions)
	default:
		s.maxBulkActions = c.MaxBulkActions
	}

	q := url.Values{}
	// The response is cut to what the target reads: per item, its status
	// and error (a 1,000-item response shrinks ~5x).
	q.Set("filter_path", "errors,items.*.status,items.*.error")
	switch r := strings.TrimSpace(c.Refresh); r {
	case "", "false":
	case "true", "wait_for":
		q.Set("refresh", r)
	default:
		bad("refresh", "refresh", "%q: want false, true or wait_for", c.Refresh)
	}
	if p := strings.TrimSpace(c.Pipeline); p != "" {
		q.Set("pipeline", p)
	}
	s.query = q.Encode()

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// jsonObject turns a create_index part (a mapping from the pipeline file or
// a string holding a JSON object) into JSON.
func jsonObject(v any) (json.RawMessage, error) {
	if s, ok := v.(string); ok {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return nil, fmt.Errorf("not a JSON object: %v", err)
		}
		v = m
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("expected a mapping or a JSON object string, got %T", v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// parseURL accepts absolute http and https URLs without credentials, query
// or fragment. Its errors never quote the URL.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, errors.New("not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errors.New("scheme must be http or https")
	}
	if u.Host == "" {
		return nil, errors.New("has no host")
	}
	if u.User != nil {
		return nil, errors.New("must not hold credentials: use auth.basic")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("must not have a query or fragment")
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
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
