package http

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	nethttp "net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/target"
)

// redactor scrubs secret values (configured credentials, issued access
// tokens, secret header values) out of text that ends up in an error, such
// as a receiver's response body that echoes a request header.
type redactor struct {
	mu     sync.RWMutex
	fixed  []string // configured secrets
	tokens []string // the latest issued access tokens
}

// add registers a configured secret if it is at least min bytes long
// (shorter values would mangle unrelated text and are no real secret).
func (r *redactor) add(s string, min int) {
	if len(s) < min {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fixed = append(r.fixed, s)
}

// maxTokens is how many issued tokens are remembered for scrubbing.
const maxTokens = 8

// addToken registers an issued access token.
func (r *redactor) addToken(s string) {
	if len(s) < 4 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokens = append(r.tokens, s)
	if len(r.tokens) > maxTokens {
		r.tokens = append(r.tokens[:0], r.tokens[len(r.tokens)-maxTokens:]...)
	}
}

func (r *redactor) scrub(s string) string {
	r.mu.RLock()
	all := make([]string, 0, len(r.fixed)+len(r.tokens))
	all = append(append(all, r.fixed...), r.tokens...)
	r.mu.RUnlock()
	// Longest first, so a secret containing another is replaced whole.
	sort.Slice(all, func(i, j int) bool { return len(all[i]) > len(all[j]) })
	for _, x := range all {
		if strings.Contains(s, x) {
			s = strings.ReplaceAll(s, x, config.Redacted)
		}
	}
	return s
}

// authenticator produces the Authorization header of requests.
type authenticator struct {
	static string       // bearer or basic: the whole header value
	oauth  *tokenSource // oauth2
}

func newAuthenticator(a Auth, client *nethttp.Client, timeout time.Duration, red *redactor) *authenticator {
	au := &authenticator{}
	switch {
	case a.Bearer.IsSet():
		au.static = "Bearer " + a.Bearer.Reveal()
		red.add(a.Bearer.Reveal(), 4)
	case a.Basic != nil:
		cred := base64.StdEncoding.EncodeToString([]byte(a.Basic.Username + ":" + a.Basic.Password.Reveal()))
		au.static = "Basic " + cred
		red.add(a.Basic.Password.Reveal(), 4)
		red.add(cred, 4)
	case a.OAuth2 != nil:
		o := a.OAuth2
		u, _ := parseHTTPURL(o.TokenURL) // validated
		au.oauth = &tokenSource{
			cfg: o, origin: u.Scheme + "://" + u.Host, client: client, timeout: timeout, red: red,
			now: time.Now, sem: make(chan struct{}, 1),
		}
		secret := o.ClientSecret.Reveal()
		red.add(secret, 4)
		red.add(url.QueryEscape(secret), 4)
		red.add(base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(o.ClientID)+":"+url.QueryEscape(secret))), 4)
	}
	return au
}

// authorization returns the Authorization header value ("" for none).
func (a *authenticator) authorization(ctx context.Context) (string, error) {
	if a.oauth != nil {
		tok, err := a.oauth.token(ctx)
		if err != nil {
			return "", err
		}
		return "Bearer " + tok, nil
	}
	return a.static, nil
}

// refreshable reports whether a 401 or 403 may be cured by a new token.
func (a *authenticator) refreshable() bool { return a.oauth != nil }

// invalidate drops the token of an Authorization value the server refused,
// unless it was already replaced.
func (a *authenticator) invalidate(authz string) {
	if a.oauth != nil {
		a.oauth.invalidate(strings.TrimPrefix(authz, "Bearer "))
	}
}

type authStyle int

const (
	styleUnknown authStyle = iota
	styleHeader            // client_id and client_secret in HTTP basic auth (RFC 6749 2.3.1)
	styleParams            // client_id and client_secret in the form
)

// expiryMargin: a token is renewed this long before it expires (at most
// half its lifetime).
const expiryMargin = 10 * time.Second

// tokenSource gets and caches client-credentials access tokens.
type tokenSource struct {
	cfg     *OAuth2
	origin  string
	client  *nethttp.Client
	timeout time.Duration
	red     *redactor
	now     func() time.Time
	sem     chan struct{} // one token request at a time

	mu     sync.Mutex
	tok    string
	expiry time.Time // zero: unknown, valid until refused
	style  authStyle
	// fetches counts token requests that returned a token (tests).
	fetches int
}

func (s *tokenSource) cached() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok != "" && (s.expiry.IsZero() || s.now().Before(s.expiry)) {
		return s.tok
	}
	return ""
}

func (s *tokenSource) invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == tok {
		s.tok = ""
	}
}

// token returns a valid token, fetching one if needed. Concurrent callers
// share one fetch.
func (s *tokenSource) token(ctx context.Context) (string, error) {
	if tok := s.cached(); tok != "" {
		return tok, nil
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-s.sem }()
	if tok := s.cached(); tok != "" {
		return tok, nil
	}
	s.mu.Lock()
	style := s.style
	s.mu.Unlock()
	styles := []authStyle{styleHeader, styleParams}
	if style != styleUnknown {
		styles = []authStyle{style}
	}
	var first error
	for _, st := range styles {
		tok, ttl, status, err := s.fetch(ctx, st)
		if err == nil {
			s.red.addToken(tok)
			s.mu.Lock()
			s.tok, s.style = tok, st
			s.expiry = time.Time{}
			if ttl > 0 {
				s.expiry = s.now().Add(ttl - min(expiryMargin, ttl/2))
			}
			s.fetches++
			s.mu.Unlock()
			return tok, nil
		}
		if first == nil {
			first = err
		}
		// Only a rejection of the client's authentication is worth trying
		// the other way of sending the credentials.
		if status != nethttp.StatusBadRequest && status != nethttp.StatusUnauthorized {
			break
		}
	}
	return "", first
}

// tokenResponse is RFC 6749 section 5.1 (and 5.2 for errors).
type tokenResponse struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"` // a number; some servers send a string
	Error       string          `json:"error"`
	ErrorDesc   string          `json:"error_description"`
}

// fetch makes one token request. Errors are marked Permanent when retrying
// cannot help (bad credentials, a wrong token_url); status is the HTTP
// status, 0 for a transport error.
func (s *tokenSource) fetch(ctx context.Context, style authStyle) (tok string, ttl time.Duration, status int, err error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(s.cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(s.cfg.Scopes, " "))
	}
	for k, v := range s.cfg.Params {
		form.Set(k, v)
	}
	if style == styleParams {
		form.Set("client_id", s.cfg.ClientID)
		form.Set("client_secret", s.cfg.ClientSecret.Reveal())
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodPost, s.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, 0, target.Permanent(fmt.Errorf("OAuth2 token request to %s: %s", s.origin, s.red.scrub(err.Error())))
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if style == styleHeader {
		req.SetBasicAuth(url.QueryEscape(s.cfg.ClientID), url.QueryEscape(s.cfg.ClientSecret.Reveal()))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return "", 0, 0, fmt.Errorf("OAuth2 token request to %s: %s", s.origin, s.red.scrub(transportError(err, s.timeout)))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", 0, resp.StatusCode, fmt.Errorf("OAuth2 token request to %s: reading the response: %s", s.origin, s.red.scrub(transportError(err, s.timeout)))
	}
	var tr tokenResponse
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct == "application/x-www-form-urlencoded" || ct == "text/plain" {
		v, _ := url.ParseQuery(string(raw))
		tr = tokenResponse{AccessToken: v.Get("access_token"), TokenType: v.Get("token_type"), Error: v.Get("error"), ErrorDesc: v.Get("error_description")}
		if e := v.Get("expires_in"); e != "" {
			tr.ExpiresIn = json.RawMessage(strconv.Quote(e))
		}
	} else {
		_ = json.Unmarshal(raw, &tr) // errors show below as a missing token
	}
	code := resp.StatusCode
	if code < 200 || code > 299 {
		msg := fmt.Sprintf("OAuth2 token request to %s: HTTP %d %s", s.origin, code, nethttp.StatusText(code))
		if tr.Error != "" {
			msg += ": " + snippet(s.red, []byte(tr.Error))
			if tr.ErrorDesc != "" {
				msg += ": " + snippet(s.red, []byte(tr.ErrorDesc))
			}
		} else if snip := snippet(s.red, raw); snip != "" {
			msg += ": " + snip
		}
		err := errors.New(msg)
		if retryableStatus(code) {
			return "", 0, code, err
		}
		return "", 0, code, target.Permanent(err)
	}
	if tr.AccessToken == "" {
		return "", 0, code, target.Permanent(fmt.Errorf("OAuth2 token request to %s: the response has no access_token", s.origin))
	}
	if tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer") {
		return "", 0, code, target.Permanent(fmt.Errorf("OAuth2 token request to %s: token_type %q is not supported (want bearer)", s.origin, tr.TokenType))
	}
	return tr.AccessToken, parseExpiresIn(tr.ExpiresIn), code, nil
}

// parseExpiresIn reads expires_in as a number of seconds or a string
// holding one; 0 when absent or invalid.
func parseExpiresIn(raw json.RawMessage) time.Duration {
	if len(raw) == 0 {
		return 0
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0
		}
		if f, err = strconv.ParseFloat(strings.TrimSpace(s), 64); err != nil {
			return 0
		}
	}
	if f <= 0 || f > 1e9 {
		return 0
	}
	return time.Duration(f * float64(time.Second))
}
