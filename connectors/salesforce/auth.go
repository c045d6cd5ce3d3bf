package salesforce

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/plumecdc/plume/pkg/target"
)

// session is an access token and the instance it is valid for.
type session struct {
	token    string
	instance string // https://MyDomain.my.salesforce.com, no trailing slash
}

// tokenSource gets and caches access tokens. Salesforce tokens carry no
// lifetime: a token is used until the API answers 401 INVALID_SESSION_ID,
// then dropped (invalidate) and a new one is fetched.
type tokenSource struct {
	set    *settings
	client *http.Client
	red    *redactor
	sem    chan struct{} // one token request at a time

	mu      sync.Mutex
	cur     *session
	fetches int64
}

func (ts *tokenSource) cached() *session {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.cur
}

// invalidate drops s if it is still the cached session.
func (ts *tokenSource) invalidate(s *session) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cur == s {
		ts.cur = nil
	}
}

// get returns the cached session or fetches one; concurrent callers share
// one fetch.
func (ts *tokenSource) get(ctx context.Context) (*session, error) {
	if s := ts.cached(); s != nil {
		return s, nil
	}
	select {
	case ts.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-ts.sem }()
	if s := ts.cached(); s != nil {
		return s, nil
	}
	s, err := ts.fetch(ctx)
	if err != nil {
		return nil, err
	}
	ts.red.add(s.token)
	ts.mu.Lock()
	ts.cur = s
	ts.fetches++
	ts.mu.Unlock()
	return s, nil
}

// fetch makes one token request. Refused credentials are Permanent.
func (ts *tokenSource) fetch(ctx context.Context) (*session, error) {
	form := url.Values{}
	flow := "client credentials"
	if ts.set.jwt != nil {
		flow = "JWT bearer"
		a, err := assertion(ts.set, time.Now())
		if err != nil {
			return nil, target.Permanent(err)
		}
		form.Set("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
		form.Set("assertion", a)
	} else {
		form.Set("grant_type", "client_credentials")
		form.Set("client_id", ts.set.clientID)
		form.Set("client_secret", ts.set.clientSecret.Reveal())
	}
	ctx, cancel := context.WithTimeout(ctx, ts.set.timeout)
	defer cancel()
	where := fmt.Sprintf("salesforce: %s token request to %s", flow, ts.set.loginOrigin)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.set.loginURL+"/services/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, target.Permanent(fmt.Errorf("%s: %s", where, ts.red.scrub(err.Error())))
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := ts.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", where, ts.red.scrub(transportError(err)))
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var tr struct {
		AccessToken string `json:"access_token"`
		InstanceURL string `json:"instance_url"`
		TokenType   string `json:"token_type"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(raw, &tr)
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Sprintf("%s: HTTP %d", where, resp.StatusCode)
		if tr.Error != "" {
			msg += ": " + ts.red.scrub(tr.Error)
			if tr.Description != "" {
				msg += ": " + ts.red.scrub(tr.Description)
			}
		}
		err := errors.New(msg)
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
			return nil, err
		}
		// invalid_client, invalid_grant, unsupported_grant_type: the
		// credentials or the connected app are wrong; retrying cannot help.
		return nil, target.Permanent(err)
	}
	if tr.AccessToken == "" || tr.InstanceURL == "" {
		return nil, target.Permanent(fmt.Errorf("%s: the response has no access_token or instance_url", where))
	}
	if tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer") {
		return nil, target.Permanent(fmt.Errorf("%s: token_type %q is not supported", where, tr.TokenType))
	}
	u, err := url.Parse(tr.InstanceURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, target.Permanent(fmt.Errorf("%s: instance_url is not a URL", where))
	}
	return &session{token: tr.AccessToken, instance: strings.TrimRight(tr.InstanceURL, "/")}, nil
}

// assertion builds the JWT bearer grant's RS256 assertion: iss is the
// connected app's consumer key, sub the username, aud the login server,
// exp three minutes from now (Salesforce accepts at most a few minutes).
func assertion(set *settings, now time.Time) (string, error) {
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256"}`))
	claims, err := json.Marshal(map[string]any{
		"iss": set.clientID,
		"sub": set.jwt.username,
		"aud": set.jwt.audience,
		"exp": now.Add(3 * time.Minute).Unix(),
	})
	if err != nil {
		return "", err
	}
	signing := hdr + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, set.jwt.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("salesforce: signing the JWT assertion: %v", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// redactor scrubs secrets (the client secret, issued tokens) out of text
// that ends up in errors and logs.
type redactor struct {
	mu   sync.RWMutex
	list []string
}

const maxRedacted = 16

func (r *redactor) add(s string) {
	if len(s) < 6 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, s)
	if len(r.list) > maxRedacted {
		// Keep the configured secrets (first) and the latest tokens.
		r.list = append(r.list[:2:2], r.list[len(r.list)-maxRedacted+2:]...)
	}
}

func (r *redactor) scrub(s string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, x := range r.list {
		if strings.Contains(s, x) {
			s = strings.ReplaceAll(s, x, "[redacted]")
		}
	}
	return s
}

// transportError describes a failed round trip without the URL.
func transportError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no response in time (timeout)"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}
