package http

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/plumecdc/plume/pkg/config"
)

const (
	bearerToken  = "s3cret-bearer-token"
	basicPass    = "pa55-w0rd-secret"
	clientSecret = "client-s3cret/+&="
)

// echo writes the request's headers and body into the response body, as a
// careless receiver might in its error messages.
func echo(w nethttp.ResponseWriter, r *nethttp.Request, code int) {
	body, _ := io.ReadAll(r.Body)
	w.WriteHeader(code)
	fmt.Fprintf(w, "rejected: headers=%v body=%s", r.Header, body)
}

func TestBearer(t *testing.T) {
	var mu sync.Mutex
	want := "Bearer " + bearerToken
	srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		mu.Lock()
		ok := r.Header.Get("Authorization") == want
		mu.Unlock()
		if !ok {
			echo(w, r, 401)
		}
	}))
	cfg := cfgFor(srv.URL)
	cfg.Auth.Bearer = bearerToken
	tg := newTestTarget(t, cfg)
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 3)...)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	want = "Bearer rotated"
	mu.Unlock()
	err := tg.Apply(context.Background(), batchOf(inserts(t, 3)...))
	if errClass(err) != "permanent" || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("want a permanent 401, got %v", err)
	}
	noSecret(t, err.Error())
}

func TestBasic(t *testing.T) {
	srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "plume" || p != basicPass {
			echo(w, r, 403)
		}
	}))
	cfg := cfgFor(srv.URL)
	cfg.Auth.Basic = &Basic{Username: "plume", Password: basicPass}
	if err := newTestTarget(t, cfg).Apply(context.Background(), batchOf(inserts(t, 2)...)); err != nil {
		t.Fatal(err)
	}
	cfg.Auth.Basic.Password = basicPass + "-wrong"
	err := newTestTarget(t, cfg).Apply(context.Background(), batchOf(inserts(t, 2)...))
	if errClass(err) != "permanent" || !strings.Contains(err.Error(), "HTTP 403") {
		t.Fatalf("want a permanent 403, got %v", err)
	}
	noSecret(t, err.Error(), basicPass+"-wrong")
}

// idp is a token endpoint double for the client credentials grant.
type idp struct {
	mu          sync.Mutex
	acceptBasic bool
	acceptBody  bool
	status      int // when set, every token request fails with it
	expiresIn   any
	n           int      // tokens issued
	current     string   // the latest token
	issued      []string // every token issued
	requests    int
	forms       []url.Values
}

func (p *idp) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	raw, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(raw))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	p.forms = append(p.forms, form)
	w.Header().Set("Content-Type", "application/json")
	if p.status != 0 {
		w.WriteHeader(p.status)
		fmt.Fprintf(w, `{"error":"temporarily_unavailable","error_description":%q}`, fmt.Sprint(r.Header, string(raw)))
		return
	}
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	}
	ok := form.Get("grant_type") == "client_credentials" &&
		((p.acceptBasic && basic && id == "plume-client" && secret == clientSecret) ||
			(p.acceptBody && !basic && form.Get("client_id") == "plume-client" && form.Get("client_secret") == clientSecret))
	if !ok {
		w.WriteHeader(401)
		// Echo everything back, secrets included, in the description.
		fmt.Fprintf(w, `{"error":"invalid_client","error_description":%q}`, fmt.Sprint(r.Header, " ", string(raw)))
		return
	}
	p.n++
	p.current = fmt.Sprintf("access-token-%d-xyz", p.n)
	p.issued = append(p.issued, p.current)
	json.NewEncoder(w).Encode(map[string]any{"access_token": p.current, "token_type": "Bearer", "expires_in": p.expiresIn})
}

func (p *idp) token() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

func (p *idp) stats() (tokens, requests int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.requests
}

// api accepts only the idp's current token, unless refuse is set.
type api struct {
	mu     sync.Mutex
	idp    *idp
	refuse map[string]bool // tokens refused although current
	all    bool            // refuse every token
	used   map[string]int
}

func (a *api) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	if a.used == nil {
		a.used = map[string]int{}
	}
	a.used[tok]++
	ok := !a.all && !a.refuse[tok] && tok == a.idp.token()
	a.mu.Unlock()
	if !ok {
		echo(w, r, 401)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func oauthConfig(apiURL, tokenURL string) Config {
	cfg := cfgFor(apiURL)
	cfg.Auth.OAuth2 = &OAuth2{TokenURL: tokenURL, ClientID: "plume-client", ClientSecret: clientSecret,
		Scopes: []string{"a", "b"}, Params: map[string]string{"audience": "erp"}}
	return cfg
}

// TestOAuth2ClientCredentials: the token is fetched once and cached until it
// expires; a 401 refreshes it once and retries; a 401 after the refresh is
// permanent.
func TestOAuth2ClientCredentials(t *testing.T) {
	p := &idp{acceptBasic: true, expiresIn: 60}
	tokenSrv := serve(t, p)
	a := &api{idp: p, refuse: map[string]bool{}}
	apiSrv := serve(t, a)
	tg := newTestTarget(t, oauthConfig(apiSrv.URL, tokenSrv.URL+"/oauth/token"))
	clock := &fakeClock{t: time.Now()}
	tg.auth.oauth.now = clock.now
	ctx := context.Background()

	if err := tg.Apply(ctx, batchOf(inserts(t, 5)...)); err != nil {
		t.Fatal(err)
	}
	if err := tg.Apply(ctx, batchOf(inserts(t, 5)...)); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.stats(); n != 1 {
		t.Fatalf("%d tokens fetched for two batches, want 1 (cached)", n)
	}
	f := p.forms[0]
	if f.Get("grant_type") != "client_credentials" || f.Get("scope") != "a b" || f.Get("audience") != "erp" || f.Has("client_secret") {
		t.Fatalf("token request form %v", f)
	}

	// Expiry (60s, renewed 10s early).
	clock.add(49 * time.Second)
	if err := tg.Apply(ctx, batchOf(inserts(t, 1)...)); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.stats(); n != 1 {
		t.Fatal("token renewed too early")
	}
	clock.add(2 * time.Second)
	if err := tg.Apply(ctx, batchOf(inserts(t, 1)...)); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.stats(); n != 2 {
		t.Fatalf("%d tokens, want a new one after expiry", n)
	}

	// The receiver revokes the current token: one refresh, then delivered,
	// even with several requests failing at once.
	a.mu.Lock()
	a.refuse[p.token()] = true
	a.mu.Unlock()
	if err := tg.Apply(ctx, batchOf(inserts(t, 8)...)); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.stats(); n != 3 {
		t.Fatalf("%d tokens, want exactly one refresh", n)
	}

	// Every token refused: one refresh, then permanent.
	a.mu.Lock()
	a.all = true
	a.mu.Unlock()
	err := tg.Apply(ctx, batchOf(inserts(t, 1)...))
	if errClass(err) != "permanent" || !strings.Contains(err.Error(), "HTTP 401") || !strings.Contains(err.Error(), "after refreshing") {
		t.Fatalf("want permanent after refresh, got %v", err)
	}
	if n, _ := p.stats(); n != 4 {
		t.Fatalf("%d tokens, want one refresh before giving up", n)
	}
	noSecret(t, err.Error(), p.issued...)
}

// TestOAuth2ShortLivedToken: expires_in as a string and a lifetime shorter
// than the margin (renewed at half its life).
func TestOAuth2ShortLivedToken(t *testing.T) {
	p := &idp{acceptBasic: true, expiresIn: "4"}
	tokenSrv := serve(t, p)
	apiSrv := serve(t, &api{idp: p})
	tg := newTestTarget(t, oauthConfig(apiSrv.URL, tokenSrv.URL))
	clock := &fakeClock{t: time.Now()}
	tg.auth.oauth.now = clock.now
	for i, step := range []time.Duration{0, time.Second, 1500 * time.Millisecond} {
		clock.add(step)
		if err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...)); err != nil {
			t.Fatal(err)
		}
		want := 1
		if i == 2 {
			want = 2 // 2.5s > 4s/2
		}
		if n, _ := p.stats(); n != want {
			t.Fatalf("step %d: %d tokens, want %d", i, n, want)
		}
	}
}

// TestOAuth2BodyCredentials: a token endpoint that refuses HTTP basic client
// authentication gets the credentials in the form, and the target sticks to
// that.
func TestOAuth2BodyCredentials(t *testing.T) {
	p := &idp{acceptBody: true}
	tokenSrv := serve(t, p)
	a := &api{idp: p, refuse: map[string]bool{}}
	apiSrv := serve(t, a)
	tg := newTestTarget(t, oauthConfig(apiSrv.URL, tokenSrv.URL))
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 2)...)); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.refuse[p.token()] = true
	a.mu.Unlock()
	if err := tg.Apply(context.Background(), batchOf(inserts(t, 2)...)); err != nil {
		t.Fatal(err)
	}
	if n, reqs := p.stats(); n != 2 || reqs != 3 {
		t.Fatalf("%d tokens in %d token requests, want 2 in 3", n, reqs)
	}
}

// TestOAuth2TokenErrors: refused client credentials are permanent, an
// unavailable token endpoint is retryable; neither error shows a secret
// although the endpoint echoes the request.
func TestOAuth2TokenErrors(t *testing.T) {
	apiSrv := serve(t, nethttp.NotFoundHandler())
	p := &idp{} // accepts nothing
	tokenSrv := serve(t, p)
	tg := newTestTarget(t, oauthConfig(apiSrv.URL, tokenSrv.URL))
	err := tg.Apply(context.Background(), batchOf(inserts(t, 1)...))
	if errClass(err) != "permanent" || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("want permanent invalid_client, got %v", err)
	}
	noSecret(t, err.Error())

	p.mu.Lock()
	p.status = 503
	p.mu.Unlock()
	err = tg.Apply(context.Background(), batchOf(inserts(t, 1)...))
	if errClass(err) != "retry" || !strings.Contains(err.Error(), "503") {
		t.Fatalf("want retryable 503, got %v", err)
	}
	noSecret(t, err.Error())

	// No access_token in a 200.
	empty := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token_type":"bearer"}`)
	}))
	err = newTestTarget(t, oauthConfig(apiSrv.URL, empty.URL)).Apply(context.Background(), batchOf(inserts(t, 1)...))
	if errClass(err) != "permanent" || !strings.Contains(err.Error(), "access_token") {
		t.Fatalf("got %v", err)
	}
}

// TestNoSecretInErrors drives every error path with a receiver that echoes
// the request (headers and body) into its error responses: no error
// string, record error reason or printed config holds a secret.
func TestNoSecretInErrors(t *testing.T) {
	const headerSecret = "hdr-secret-value-123"
	p := &idp{acceptBasic: true, expiresIn: 3600}
	tokenSrv := serve(t, p)
	var mu sync.Mutex
	code := 400
	srv := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		mu.Lock()
		c := code
		mu.Unlock()
		echo(w, r, c)
	}))
	auths := map[string]Auth{
		"bearer": {Bearer: bearerToken},
		"basic":  {Basic: &Basic{Username: "plume", Password: basicPass}},
		"oauth2": {OAuth2: &OAuth2{TokenURL: tokenSrv.URL, ClientID: "plume-client", ClientSecret: clientSecret}},
	}
	for name, auth := range auths {
		for _, c := range []int{400, 401, 403, 413, 429, 500, 503} {
			for _, mode := range []string{ModeBinary, ModeBatch} {
				mu.Lock()
				code = c
				mu.Unlock()
				cfg := cfgFor(srv.URL + "/hook/" + bearerToken + "?key=" + basicPass)
				cfg.Mode = mode
				cfg.Auth = auth
				cfg.Headers = map[string]config.Secret{"X-Api-Key": headerSecret}
				tg := newTestTarget(t, cfg)
				err := tg.Apply(context.Background(), batchOf(inserts(t, 2)...))
				if err == nil {
					t.Fatalf("%s %d: no error", name, c)
				}
				texts := []string{err.Error(), fmt.Sprintf("%v %+v %#v", err, err, err)}
				if re, ok := err.(*recordErrors); ok {
					for _, e := range re.Failed {
						texts = append(texts, e.Error())
					}
				}
				for _, s := range texts {
					noSecret(t, s, append(p.issued, headerSecret)...)
				}
				if !strings.Contains(strings.Join(texts, " "), config.Redacted) {
					t.Fatalf("%s %d: the echoed secret was not redacted: %s", name, c, texts[0])
				}
			}
		}
		// Printing the configuration shows no secret either.
		cfg := cfgFor(srv.URL)
		cfg.Auth = auth
		cfg.Headers = map[string]config.Secret{"X-Api-Key": headerSecret}
		js, _ := json.Marshal(cfg)
		noSecret(t, fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, js), headerSecret)
	}
	// A header value with a control character is rejected without quoting it.
	cfg := cfgFor(srv.URL)
	cfg.Headers = map[string]config.Secret{"X-Api-Key": headerSecret + "\n"}
	if _, err := New(cfg, "erp", "", nil); err == nil || strings.Contains(err.Error(), headerSecret) {
		t.Fatalf("got %v", err)
	}
}

// noSecret fails if s contains a configured secret (or one of extra).
func noSecret(t *testing.T, s string, extra ...string) {
	t.Helper()
	for _, sec := range append([]string{bearerToken, basicPass, clientSecret, url.QueryEscape(clientSecret),
		"cGx1bWU6cGE1NS13MHJkLXNlY3JldA=="}, extra...) { // base64("plume:" + basicPass)
		if strings.Contains(s, sec) {
			t.Fatalf("secret %q in %q", sec, s)
		}
	}
}

// TestSnippetRedactsBeforeCutting: a secret straddling the 512-byte cut is
// redacted whole, not left half visible.
func TestSnippetRedactsBeforeCutting(t *testing.T) {
	red := &redactor{}
	red.add("TOPSECRETVALUE", 4)
	body := strings.Repeat("a", maxSnippet-5) + "TOPSECRETVALUE and more"
	s := snippet(red, []byte(body))
	if strings.Contains(s, "TOPSE") || len(s) > maxSnippet {
		t.Fatalf("snippet %q", s[len(s)-20:])
	}
	red.add("ab", 4) // too short to be scrubbed
	if got := red.scrub("abc"); got != "abc" {
		t.Fatalf("short secret scrubbed: %q", got)
	}
	// A cut inside a multi-byte character drops it.
	s = snippet(red, []byte(strings.Repeat("a", maxSnippet-1)+"é"))
	if !utf8.ValidString(s) || len(s) != maxSnippet-1 {
		t.Fatalf("len %d", len(s))
	}
}
