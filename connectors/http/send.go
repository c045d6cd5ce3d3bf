package http

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/plumecdc/plume/pkg/target"
)

// outcome classifies the result of one request.
type outcome int

const (
	delivered outcome = iota // 2xx
	poison                   // a 4xx about this request's content: dead-letter it
	retryable                // try the batch again later
	permanent                // stop the pipeline (refused credentials)
)

// result is the outcome of one request.
type result struct {
	kind       outcome
	err        error         // nil when delivered
	retryAfter time.Duration // from Retry-After on a 429 or 503
}

// request is one HTTP request to make.
type request struct {
	body   []byte
	header nethttp.Header // without Authorization
}

// maxSnippet is how much of an error response's body an error quotes.
const maxSnippet = 512

// snippetRead is how much of an error response's body is read: more than
// is quoted, so that a secret echoed across the cut is redacted whole
// before the text is cut.
const snippetRead = maxSnippet + 16<<10

// maxRetryAfter bounds how long a Retry-After header makes Apply wait.
const maxRetryAfter = 5 * time.Minute

// send makes one request (and, with OAuth2, at most one more after a token
// refresh) and classifies the response.
func (t *Target) send(ctx context.Context, rq *request) result {
	refreshed := false
	for {
		authz, err := t.auth.authorization(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return result{kind: retryable, err: ctx.Err()}
			}
			if target.IsPermanent(err) {
				return result{kind: permanent, err: err}
			}
			return result{kind: retryable, err: err}
		}
		code, hdr, body, err := t.do(ctx, rq, authz)
		if err != nil {
			return result{kind: retryable, err: err}
		}
		switch {
		case code >= 200 && code <= 299:
			return result{kind: delivered}
		case code == nethttp.StatusUnauthorized || code == nethttp.StatusForbidden:
			if t.auth.refreshable() && !refreshed {
				t.auth.invalidate(authz)
				refreshed = true
				continue
			}
			note := "the receiver refuses the credentials"
			if refreshed {
				note = "after refreshing the OAuth2 token, " + note
			}
			return result{kind: permanent, err: errors.New(t.statusError(code, note, body))}
		case retryableStatus(code):
			r := result{kind: retryable}
			note := ""
			if code == nethttp.StatusTooManyRequests || code == nethttp.StatusServiceUnavailable {
				if d, ok := parseRetryAfter(hdr.Get("Retry-After"), time.Now()); ok {
					r.retryAfter = min(d, maxRetryAfter)
					note = "Retry-After " + r.retryAfter.Round(time.Second).String()
				}
			}
			r.err = errors.New(t.statusError(code, note, body))
			return r
		case code >= 400 && code <= 499:
			return result{kind: poison, err: errors.New(t.statusError(code, "", body))}
		default:
			return result{kind: retryable, err: errors.New(t.statusError(code, "", body))}
		}
	}
}

// retryableStatus: statuses that say "later".
func retryableStatus(code int) bool {
	switch code {
	case nethttp.StatusRequestTimeout, nethttp.StatusTooEarly, nethttp.StatusTooManyRequests,
		nethttp.StatusInternalServerError, nethttp.StatusBadGateway, nethttp.StatusServiceUnavailable,
		nethttp.StatusGatewayTimeout:
		return true
	}
	return false
}

// do makes one HTTP request. It returns the status, headers and the first
// maxSnippet bytes of the body of a non-2xx response, or a transport error
// (already scrubbed of secrets).
func (t *Target) do(ctx context.Context, rq *request, authz string) (int, nethttp.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.set.timeout)
	defer cancel()
	req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodPost, t.set.url.String(), bytes.NewReader(rq.body))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("POST %s: %s", t.set.origin, t.red.scrub(err.Error()))
	}
	for k, v := range rq.header {
		req.Header[k] = v
	}
	if authz != "" {
		req.Header["Authorization"] = []string{authz}
	}
	resp, err := t.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return 0, nil, nil, ctx.Err() // the caller's context ended
		}
		return 0, nil, nil, fmt.Errorf("POST %s: %s", t.set.origin, t.red.scrub(transportError(err, t.set.timeout)))
	}
	defer resp.Body.Close()
	var snip []byte
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snip, _ = io.ReadAll(io.LimitReader(resp.Body, snippetRead))
	}
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, resp.Header, snip, nil
}

// statusError describes an error response: status, an optional note and
// the start of the body, secrets scrubbed.
func (t *Target) statusError(code int, note string, body []byte) string {
	msg := fmt.Sprintf("HTTP %d", code)
	if txt := nethttp.StatusText(code); txt != "" {
		msg += " " + txt
	}
	msg += " from " + t.set.origin
	if note != "" {
		msg += " (" + note + ")"
	}
	if s := snippet(t.red, body); s != "" {
		msg += ": " + s
	}
	return msg
}

// snippet is body as text, secrets redacted, cut to its first maxSnippet
// bytes.
func snippet(red *redactor, body []byte) string {
	s := red.scrub(strings.ToValidUTF8(string(body), "\uFFFD"))
	if len(s) > maxSnippet {
		s = s[:maxSnippet]
		// A multi-byte character cut at the end is dropped, not mangled.
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return strings.TrimSpace(s)
}

// transportError describes a failed round trip without the request URL
// (which may hold a secret): the cause only.
func transportError(err error, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no response within %s (timeout)", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	if at, err := nethttp.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}
