package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// maxResponseBytes bounds a response body read into memory. A filtered bulk
// response takes ~40 bytes per item plus its errors.
const maxResponseBytes = 64 << 20

// client sends requests to the cluster, moving to the next URL when one
// cannot be reached.
type client struct {
	set  *settings
	http *nethttp.Client
	next int // index into set.urls of the URL to use
	ua   string
}

func newClient(set *settings) *client {
	tr := nethttp.DefaultTransport.(*nethttp.Transport).Clone()
	if set.tls != nil {
		tr.TLSClientConfig = set.tls
	}
	tr.MaxIdleConnsPerHost = 4
	return &client{set: set, http: &nethttp.Client{
		Transport: tr,
		// The cluster has no business redirecting a bulk POST.
		CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse },
	}, ua: "plume/" + event.Version}
}

// response is a complete HTTP response.
type response struct {
	status int
	body   []byte
	origin string
}

// do sends one request to the current URL. A transport error moves to the
// next URL (for the next attempt) and is returned; HTTP statuses are the
// caller's to judge.
func (c *client) do(ctx context.Context, method, path, query string, body []byte, contentType string) (*response, error) {
	u := *c.set.urls[c.next]
	origin := c.set.origins[c.next]
	u.Path += path
	u.RawQuery = query
	ctx, cancel := context.WithTimeout(ctx, c.set.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := nethttp.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, target.Permanent(fmt.Errorf("%s %s%s: %s", method, origin, path, c.scrub(err.Error())))
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	if c.set.authorization != "" {
		req.Header.Set("Authorization", c.set.authorization)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.next = (c.next + 1) % len(c.set.urls)
		return nil, fmt.Errorf("%s %s%s: %s", method, origin, path, c.scrub(transportError(err, c.set.timeout)))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		c.next = (c.next + 1) % len(c.set.urls)
		return nil, fmt.Errorf("%s %s%s: reading the response: %s", method, origin, path, c.scrub(transportError(err, c.set.timeout)))
	}
	if len(raw) > maxResponseBytes {
		return nil, fmt.Errorf("%s %s%s: the response is larger than %d bytes", method, origin, path, maxResponseBytes)
	}
	return &response{status: resp.StatusCode, body: raw, origin: origin}, nil
}

func transportError(err error, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no complete response within %v", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the caller names the method and URL
	}
	return err.Error()
}

// scrub replaces every configured secret in s.
func (c *client) scrub(s string) string {
	for _, x := range c.set.secrets {
		if len(x) >= 4 {
			s = strings.ReplaceAll(s, x, config.Redacted)
		}
	}
	return s
}

// snippet is the start of a response body for an error message, scrubbed.
func (c *client) snippet(body []byte) string {
	const max = 512
	s := strings.TrimSpace(c.scrub(string(body)))
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// httpError describes a response that is not a success.
func (c *client) httpError(what string, r *response) error {
	msg := fmt.Sprintf("%s: HTTP %d %s from %s", what, r.status, nethttp.StatusText(r.status), r.origin)
	if e := errorOf(r.body); e != nil {
		msg += ": " + c.scrub(e.String())
	} else if s := c.snippet(r.body); s != "" {
		msg += ": " + s
	}
	return errors.New(msg)
}

// itemError is the error of a bulk item or of a whole request, as both
// Elasticsearch and OpenSearch write it.
type itemError struct {
	Type     string     `json:"type"`
	Reason   string     `json:"reason"`
	CausedBy *itemError `json:"caused_by"`
}

func (e *itemError) String() string {
	s := e.Type
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.CausedBy != nil && (e.CausedBy.Type != "" || e.CausedBy.Reason != "") {
		s += " (caused by " + e.CausedBy.String() + ")"
	}
	return s
}

// errorOf reads {"error": {...}} from a response body (nil if absent).
func errorOf(body []byte) *itemError {
	var r struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &r) != nil || len(r.Error) == 0 {
		return nil
	}
	var e itemError
	if json.Unmarshal(r.Error, &e) == nil && e.Type != "" {
		return &e
	}
	var s string
	if json.Unmarshal(r.Error, &s) == nil && s != "" {
		return &itemError{Type: "error", Reason: s}
	}
	return nil
}

// bulkResponse is a (filtered) _bulk response.
type bulkResponse struct {
	Errors bool                          `json:"errors"`
	Items  []map[string]bulkItemResponse `json:"items"`
}

type bulkItemResponse struct {
	Status int        `json:"status"`
	Error  *itemError `json:"error"`
}

// verdict is what an item's outcome means for its operation.
type verdict int

const (
	vUnknown   verdict = iota // no outcome (never counted as done)
	vApplied                  // written, or already superseded: done
	vRetry                    // try again later (429, 5xx, a blocked index)
	vPoison                   // this document is rejected for good: dead-letter it
	vPermanent                // the cluster refuses the target itself (credentials)
)

// classify judges one bulk item.
//
//   - 2xx: applied.
//   - 409 version_conflict_engine_exception: the index already holds this
//     version or a newer one of the document (a replay, or an older write
//     arriving late): applied.
//   - delete answered 404: the document (or index) does not exist; with
//     external versioning the delete still records its version (a
//     tombstone), so it is applied.
//   - 408, 429, 5xx, and a cluster block (read-only index after a full disk,
//     whatever status the version uses): retried.
//   - 401, 403 otherwise: the credentials may not write this index: the
//     target stops (dead-lettering every document would be worse).
//   - any other 4xx (mapping and parse errors, a bad index name, a missing
//     index when auto-creation is off): dead-lettered with the reason.
//   - anything else: retried.
func classify(kind string, it bulkItemResponse) verdict {
	s := it.Status
	typ := ""
	if it.Error != nil {
		typ = it.Error.Type
	}
	switch {
	case s >= 200 && s < 300:
		return vApplied
	case s == 409 && strings.Contains(typ, "version_conflict"):
		return vApplied
	case s == 404 && kind == actDelete:
		return vApplied
	case typ == "cluster_block_exception" || s == 408 || s == 429 || s >= 500:
		return vRetry
	case s == 401 || s == 403:
		return vPermanent
	case s >= 400 && s < 500:
		return vPoison
	}
	return vRetry
}
