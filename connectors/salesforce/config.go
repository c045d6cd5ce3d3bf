package salesforce

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/config"
)

// Delete behaviours (the delete key).
const (
	DeleteDelete = "delete" // look the record up by external ID and delete it
	DeleteUpsert = "upsert" // upsert the row with delete_fields (IsActive: false)
	DeleteIgnore = "ignore" // leave the record
)

// Defaults for the optional keys.
const (
	DefaultLoginURL         = "https://login.salesforce.com"
	DefaultAPIVersion       = "62.0"
	DefaultBulkThreshold    = 2000
	DefaultAPIBudget        = 0.8
	DefaultBudgetCheck      = 60 * time.Second
	DefaultConcurrency      = 4
	DefaultTimeout          = 60 * time.Second
	DefaultBulkPollInterval = 10 * time.Second

	// The delivery layer's defaults for this target type (a delivery block
	// overrides them): large batches so that a backlog goes through Bulk
	// API jobs and Collections calls carry 200 records, and a linger that
	// keeps a trickle of changes to about one call per 2 seconds.
	DefaultBatchMaxEvents = 10000
	DefaultBatchMaxBytes  = 16 << 20
	DefaultBatchLinger    = 2 * time.Second

	maxConcurrency = 25 // Salesforce's concurrent long-running request limit
	collectionsMax = 200
)

// Config is the configuration block of a target of type salesforce. See
// docs/targets/salesforce.md.
type Config struct {
	// LoginURL is where tokens are requested: https://login.salesforce.com
	// (default), https://test.salesforce.com for sandboxes, or the org's My
	// Domain URL (required by the client credentials flow).
	LoginURL string `yaml:"login_url"`
	// APIVersion is the REST API version, "62.0" (46.0 or later).
	APIVersion string `yaml:"api_version"`
	Auth       Auth   `yaml:"auth"`
	// Object is the sObject type, e.g. Product2.
	Object string `yaml:"object"`
	// ExternalID is the external ID field upserts match on; each row must
	// carry a value for it.
	ExternalID string `yaml:"external_id"`
	// Delete is delete (default), upsert or ignore.
	Delete string `yaml:"delete"`
	// DeleteFields are written over the row when Delete is upsert.
	DeleteFields map[string]any `yaml:"delete_fields"`
	// BulkThreshold: a batch with at least this many upserts (after
	// coalescing) goes through a Bulk API 2.0 job; 0 never uses Bulk API.
	BulkThreshold *int `yaml:"bulk_threshold"`
	// APIBudget is the share of the org's daily API limit the target may
	// use up to (default 0.8); above it, deliveries pause.
	APIBudget *float64 `yaml:"api_budget"`
	// BudgetCheckInterval is how often a paused target asks for the usage.
	BudgetCheckInterval config.Duration `yaml:"budget_check_interval"`
	// Concurrency is the most Collections calls in flight.
	Concurrency int `yaml:"concurrency"`
	// Timeout bounds one HTTP request.
	Timeout config.Duration `yaml:"timeout"`
	// BulkPollInterval is the longest wait between two polls of a job.
	BulkPollInterval config.Duration `yaml:"bulk_poll_interval"`
}

// Auth selects one OAuth 2.0 flow.
type Auth struct {
	ClientCredentials *ClientCredentials `yaml:"client_credentials"`
	JWT               *JWT               `yaml:"jwt"`
}

// ClientCredentials is the OAuth 2.0 client credentials flow of a
// connected app (a run-as user is set on the app).
type ClientCredentials struct {
	ClientID     string        `yaml:"client_id"`
	ClientSecret config.Secret `yaml:"client_secret"`
}

// JWT is the OAuth 2.0 JWT bearer flow: an RS256 assertion signed with the
// connected app's private key.
type JWT struct {
	ClientID string `yaml:"client_id"`
	Username string `yaml:"username"`
	// PrivateKeyFile is a PEM file (PKCS#1 or PKCS#8), relative to the
	// pipeline file; or PrivateKey holds the PEM itself (use
	// "${ENV_VAR}"). Exactly one of them.
	PrivateKeyFile string        `yaml:"private_key_file"`
	PrivateKey     config.Secret `yaml:"private_key"`
	// Audience is the assertion's aud (default https://test.salesforce.com
	// when login_url is a sandbox login, else https://login.salesforce.com).
	Audience string `yaml:"audience"`
}

// settings is a validated Config.
type settings struct {
	loginURL      string // no trailing slash
	loginOrigin   string
	apiVersion    string
	object        string
	externalID    string
	delete        string
	deleteFields  map[string]any
	bulkThreshold int
	apiBudget     float64
	budgetCheck   time.Duration
	concurrency   int
	timeout       time.Duration
	bulkPoll      time.Duration

	clientID     string
	clientSecret config.Secret
	jwt          *jwtSettings
}

type jwtSettings struct {
	username string
	audience string
	key      *rsa.PrivateKey
}

var (
	apiVersionRE = regexp.MustCompile(`^[0-9]{2,3}\.0$`)
	nameRE       = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
)

// validate checks c; errf makes config errors about a key (top is the
// target's key, key the full path below the target).
func (c *Config) validate(dir string, errf func(top, key, format string, args ...any) error) (*settings, error) {
	var errs []error
	bad := func(top, key, format string, args ...any) { errs = append(errs, errf(top, key, format, args...)) }
	s := &settings{}

	login := strings.TrimSpace(c.LoginURL)
	if login == "" {
		login = DefaultLoginURL
	}
	if u, err := url.Parse(login); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		bad("login_url", "login_url", "want an https URL such as https://login.salesforce.com")
	} else {
		s.loginURL = strings.TrimRight(login, "/")
		s.loginOrigin = u.Scheme + "://" + u.Host
	}

	s.apiVersion = strings.TrimPrefix(strings.TrimSpace(c.APIVersion), "v")
	if s.apiVersion == "" {
		s.apiVersion = DefaultAPIVersion
	}
	if !apiVersionRE.MatchString(s.apiVersion) {
		bad("api_version", "api_version", "%q: want a version such as %q", c.APIVersion, DefaultAPIVersion)
	} else if v := s.apiVersion; len(v) == 4 && v < "46.0" {
		bad("api_version", "api_version", "%s is too old: sObject Collections upsert needs 46.0 or later", v)
	}

	if !nameRE.MatchString(c.Object) {
		bad("object", "object", "is required: the sObject API name, e.g. Product2")
	}
	s.object = c.Object
	if !nameRE.MatchString(c.ExternalID) {
		bad("external_id", "external_id", "is required: the external ID field's API name, e.g. Sku__c")
	}
	s.externalID = c.ExternalID

	switch d := strings.TrimSpace(c.Delete); d {
	case "", DeleteDelete:
		s.delete = DeleteDelete
	case DeleteUpsert, DeleteIgnore:
		s.delete = d
	default:
		bad("delete", "delete", "%q: want delete, upsert or ignore", c.Delete)
	}
	if s.delete == DeleteUpsert && len(c.DeleteFields) == 0 {
		bad("delete_fields", "delete_fields", "is required with delete: upsert, e.g. { IsActive: false }")
	}
	if s.delete != DeleteUpsert && len(c.DeleteFields) > 0 {
		bad("delete_fields", "delete_fields", "is only used with delete: upsert")
	}
	for k, v := range c.DeleteFields {
		if !nameRE.MatchString(k) {
			bad("delete_fields", "delete_fields", "invalid field name %q", k)
		}
		switch v.(type) {
		case nil, bool, string, int, int64, float64:
		default:
			bad("delete_fields", "delete_fields."+k, "want a scalar value")
		}
	}
	s.deleteFields = c.DeleteFields

	s.bulkThreshold = DefaultBulkThreshold
	if c.BulkThreshold != nil {
		if *c.BulkThreshold < 0 {
			bad("bulk_threshold", "bulk_threshold", "must not be negative (0 turns Bulk API off)")
		}
		s.bulkThreshold = *c.BulkThreshold
	}
	s.apiBudget = DefaultAPIBudget
	if c.APIBudget != nil {
		if *c.APIBudget <= 0 || *c.APIBudget > 1 {
			bad("api_budget", "api_budget", "%v is out of range: want a share of the daily limit in (0, 1]", *c.APIBudget)
		}
		s.apiBudget = *c.APIBudget
	}
	s.budgetCheck = durationOr(c.BudgetCheckInterval, DefaultBudgetCheck, "budget_check_interval", bad)
	s.timeout = durationOr(c.Timeout, DefaultTimeout, "timeout", bad)
	s.bulkPoll = durationOr(c.BulkPollInterval, DefaultBulkPollInterval, "bulk_poll_interval", bad)
	switch {
	case c.Concurrency == 0:
		s.concurrency = DefaultConcurrency
	case c.Concurrency < 0 || c.Concurrency > maxConcurrency:
		bad("concurrency", "concurrency", "%d is out of range 1..%d", c.Concurrency, maxConcurrency)
	default:
		s.concurrency = c.Concurrency
	}

	a := c.Auth
	switch {
	case a.ClientCredentials != nil && a.JWT != nil:
		bad("auth", "auth", "set only one of client_credentials and jwt")
	case a.ClientCredentials != nil:
		cc := a.ClientCredentials
		if cc.ClientID == "" {
			bad("auth", "auth.client_credentials.client_id", "is required")
		}
		if !cc.ClientSecret.IsSet() {
			bad("auth", "auth.client_credentials.client_secret", "is required")
		}
		s.clientID, s.clientSecret = cc.ClientID, cc.ClientSecret
	case a.JWT != nil:
		j := a.JWT
		if j.ClientID == "" {
			bad("auth", "auth.jwt.client_id", "is required")
		}
		if j.Username == "" {
			bad("auth", "auth.jwt.username", "is required")
		}
		js := &jwtSettings{username: j.Username, audience: j.Audience}
		if js.audience == "" {
			js.audience = "https://login.salesforce.com"
			if strings.Contains(s.loginURL, "test.salesforce.com") || strings.Contains(s.loginURL, ".sandbox.my.salesforce.com") {
				js.audience = "https://test.salesforce.com"
			}
		}
		var pemData []byte
		switch {
		case j.PrivateKeyFile != "" && j.PrivateKey.IsSet():
			bad("auth", "auth.jwt", "set only one of private_key_file and private_key")
		case j.PrivateKeyFile != "":
			p := j.PrivateKeyFile
			if !filepath.IsAbs(p) && dir != "" {
				p = filepath.Join(dir, p)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				bad("auth", "auth.jwt.private_key_file", "%v", err)
			}
			pemData = b
		case j.PrivateKey.IsSet():
			k := j.PrivateKey.Reveal()
			// A PEM passed through a one-line environment variable often
			// has its newlines written as \n.
			if !strings.Contains(k, "\n") && strings.Contains(k, `\n`) {
				k = strings.ReplaceAll(k, `\n`, "\n")
			}
			pemData = []byte(k)
		default:
			bad("auth", "auth.jwt", "private_key_file or private_key is required")
		}
		if pemData != nil {
			key, err := parseRSAKey(pemData)
			if err != nil {
				// Never quote the key.
				bad("auth", "auth.jwt.private_key", "%v", err)
			}
			js.key = key
		}
		s.clientID, s.jwt = j.ClientID, js
	default:
		bad("auth", "auth", "is required: client_credentials or jwt")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func durationOr(d config.Duration, def time.Duration, key string, bad func(top, key, format string, args ...any)) time.Duration {
	switch {
	case d.Duration == 0:
		return def
	case d.Duration < 0:
		bad(key, key, "must be positive")
		return def
	}
	return d.Duration
}

// parseRSAKey reads an RSA private key from PEM (PKCS#1 or PKCS#8).
func parseRSAKey(data []byte) (*rsa.PrivateKey, error) {
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil, errors.New("no PEM block found (want an RSA PRIVATE KEY or PRIVATE KEY)")
	}
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("not a valid PKCS#1 RSA key")
		}
		return k, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("not a valid PKCS#8 key")
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("the key is not an RSA key (RS256 needs one)")
		}
		return rk, nil
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("encrypted keys are not supported: decrypt it (openssl pkcs8 -nocrypt)")
	}
	return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
}
