package salesforce

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// apiError is a non-2xx answer of the REST API: the first entry of
// Salesforce's error array [{"message","errorCode","fields"}].
type apiError struct {
	status int
	code   string
	msg    string
	what   string // "PATCH composite/sobjects/Product2/Sku__c"
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("salesforce: %s: HTTP %d", e.what, e.status)
	if e.code != "" {
		s += " " + e.code
	}
	if e.msg != "" {
		s += ": " + e.msg
	}
	return s
}

// kind classifies an API error.
type kind int

const (
	kRetry     kind = iota // later: 5xx, limits, transport
	kPermanent             // the target cannot work: stop the pipeline
	kRequest               // the request's content was refused (400): split it
)

func classify(err error) kind {
	if target.IsPermanent(err) {
		return kPermanent
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		return kRetry
	}
	switch {
	case ae.code == "REQUEST_LIMIT_EXCEEDED" || ae.code == "SERVER_UNAVAILABLE" || ae.code == "UNABLE_TO_LOCK_ROW":
		return kRetry
	case ae.status == http.StatusUnauthorized:
		return kRetry // a fresh token was refused too: try again later
	case ae.status == http.StatusForbidden || ae.status == http.StatusNotFound:
		// INSUFFICIENT_ACCESS, API_DISABLED_FOR_ORG, an unknown object or
		// API version.
		return kPermanent
	case ae.status == http.StatusBadRequest && (ae.code == "INVALID_TYPE" || ae.code == "NOT_FOUND" || ae.code == "INVALIDJOB" || ae.code == "API_DISABLED_FOR_ORG"):
		return kPermanent
	case ae.status == http.StatusBadRequest:
		return kRequest
	}
	return kRetry
}

// client makes REST calls: authentication (one re-authentication and retry
// on 401 INVALID_SESSION_ID), the API budget and the limit header.
type client struct {
	set   *settings
	http  *http.Client
	ts    *tokenSource
	red   *redactor
	log   *slog.Logger
	name  string
	stats *Stats

	budgetMu    sync.Mutex
	used, limit int64
	lastProbe   time.Time
	holding     bool
}

// Stats are the target's counters (read with atomic loads).
type Stats struct {
	APICalls           atomic.Int64 // REST requests made (token requests excluded)
	Reauths            atomic.Int64 // 401 INVALID_SESSION_ID answers that led to a new token
	LimitExceeded      atomic.Int64 // 403 REQUEST_LIMIT_EXCEEDED answers
	BudgetHolds        atomic.Int64 // Apply calls held back by the API budget
	CollectionsCalls   atomic.Int64
	CollectionsRecords atomic.Int64
	BulkJobs           atomic.Int64
	BulkRecords        atomic.Int64
	Deleted            atomic.Int64
	Rejected           atomic.Int64 // records sent to the dead-letter queue
	APIUsed, APILimit  atomic.Int64 // the last Sforce-Limit-Info
}

var limitRE = regexp.MustCompile(`api-usage=(\d+)/(\d+)`)

// errOverBudget is returned while the org's API usage is above the budget.
type errOverBudget struct {
	used, limit int64
	budget      float64
}

func (e errOverBudget) Error() string {
	return fmt.Sprintf("salesforce: API usage %d/%d is above the target's budget of %.0f%% of the daily limit: deliveries are held (nothing is dropped) until the usage falls", e.used, e.limit, e.budget*100)
}

// checkBudget returns an errOverBudget while the last known usage is at or
// above the budget. At most every budget_check_interval it asks for the
// current usage (GET /limits, one API call) first.
func (c *client) checkBudget(ctx context.Context) error {
	if c.set.apiBudget >= 1 {
		return nil
	}
	c.budgetMu.Lock()
	over := c.limit > 0 && float64(c.used) >= c.set.apiBudget*float64(c.limit)
	probe := over && time.Since(c.lastProbe) >= c.set.budgetCheck
	if probe {
		c.lastProbe = time.Now()
	}
	c.budgetMu.Unlock()
	if probe {
		// The answer's Sforce-Limit-Info updates the usage.
		_, _, _, _ = c.call(ctx, http.MethodGet, "limits", nil, "", false)
	}
	c.budgetMu.Lock()
	defer c.budgetMu.Unlock()
	over = c.limit > 0 && float64(c.used) >= c.set.apiBudget*float64(c.limit)
	if over != c.holding {
		c.holding = over
		if over {
			c.log.Warn("salesforce API usage is above the budget: holding deliveries", "target", c.name,
				"used", c.used, "limit", c.limit, "budget", c.set.apiBudget, "check_every", c.set.budgetCheck)
		} else {
			c.log.Info("salesforce API usage is under the budget again: resuming deliveries", "target", c.name, "used", c.used, "limit", c.limit)
		}
	}
	if over {
		c.stats.BudgetHolds.Add(1)
		return errOverBudget{c.used, c.limit, c.set.apiBudget}
	}
	return nil
}

func (c *client) noteLimit(h http.Header) {
	m := limitRE.FindStringSubmatch(h.Get("Sforce-Limit-Info"))
	if m == nil {
		return
	}
	used, _ := strconv.ParseInt(m[1], 10, 64)
	limit, _ := strconv.ParseInt(m[2], 10, 64)
	c.budgetMu.Lock()
	c.used, c.limit = used, limit
	c.budgetMu.Unlock()
	c.stats.APIUsed.Store(used)
	c.stats.APILimit.Store(limit)
}

// dataPath is the REST path of a resource below /services/data/vXX.X/.
func (c *client) dataPath(rel string) string {
	return "/services/data/v" + c.set.apiVersion + "/" + strings.TrimLeft(rel, "/")
}

// call makes a REST request to rel (below /services/data/vXX.X/, or an
// absolute path starting with "/services/") and returns the status,
// headers and body of a 2xx answer, or an error: *apiError for other
// answers. budget false skips the budget check (for the probe itself).
func (c *client) call(ctx context.Context, method, rel string, body []byte, contentType string, budget bool) (int, http.Header, []byte, error) {
	if budget {
		if err := c.checkBudget(ctx); err != nil {
			return 0, nil, nil, err
		}
	}
	path := rel
	if !strings.HasPrefix(rel, "/services/") {
		path = c.dataPath(rel)
	}
	what := method + " " + strings.TrimPrefix(path, "/services/data/v"+c.set.apiVersion+"/")
	if i := strings.IndexByte(what, '?'); i >= 0 {
		what = what[:i]
	}
	reauthed := false
	for {
		s, err := c.ts.get(ctx)
		if err != nil {
			return 0, nil, nil, err
		}
		status, hdr, resp, err := c.do(ctx, s, method, path, body, contentType)
		if err != nil {
			return 0, nil, nil, fmt.Errorf("salesforce: %s: %s", what, c.red.scrub(transportError(err)))
		}
		if status >= 200 && status <= 299 {
			return status, hdr, resp, nil
		}
		ae := c.parseError(status, what, resp)
		if status == http.StatusUnauthorized && !reauthed {
			// INVALID_SESSION_ID: the session expired or was revoked.
			// Re-authenticate once and retry the request.
			c.ts.invalidate(s)
			c.stats.Reauths.Add(1)
			reauthed = true
			c.log.Info("salesforce session expired or invalid: re-authenticating", "target", c.name)
			continue
		}
		if ae.code == "REQUEST_LIMIT_EXCEEDED" {
			c.stats.LimitExceeded.Add(1)
		}
		return status, hdr, nil, ae
	}
}

func (c *client) do(ctx context.Context, s *session, method, path string, body []byte, contentType string) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.set.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.instance+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "plume/"+event.Version)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c.stats.APICalls.Add(1)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	c.noteLimit(resp.Header)
	out, err := io.ReadAll(io.LimitReader(resp.Body, 512<<20))
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, out, nil
}

func (c *client) parseError(status int, what string, body []byte) *apiError {
	ae := &apiError{status: status, what: what}
	var arr []struct {
		Message   string `json:"message"`
		ErrorCode string `json:"errorCode"`
	}
	if json.Unmarshal(body, &arr) == nil && len(arr) > 0 {
		ae.code, ae.msg = arr[0].ErrorCode, c.red.scrub(arr[0].Message)
		return ae
	}
	var one struct {
		Message   string `json:"message"`
		ErrorCode string `json:"errorCode"`
	}
	if json.Unmarshal(body, &one) == nil && one.ErrorCode != "" {
		ae.code, ae.msg = one.ErrorCode, c.red.scrub(one.Message)
		return ae
	}
	txt := strings.TrimSpace(c.red.scrub(string(body)))
	if len(txt) > 300 {
		txt = txt[:300]
	}
	ae.msg = txt
	return ae
}
