// Package sfdouble is an in-process test double of the Salesforce REST API,
// built from Salesforce's documented request and response shapes (error
// bodies included), for the salesforce target's tests, the end-to-end tests
// and the benchmarks. It is an httptest server on 127.0.0.1.
//
// It implements:
//
//   - POST /services/oauth2/token: the client credentials grant and the JWT
//     bearer grant (RS256 assertions verified with the configured public
//     key; iss, sub, aud and exp checked);
//   - GET /services/data/vXX.X/limits and /sobjects/{Object}/describe;
//   - PATCH /services/data/vXX.X/composite/sobjects/{Object}/{ExtIdField}:
//     sObject Collections upsert by external ID, at most 200 records;
//   - GET /services/data/vXX.X/query (the SOQL subset
//     SELECT Id, F FROM Object WHERE F IN ('a', ...)) and
//     DELETE /services/data/vXX.X/composite/sobjects?ids=...;
//   - Bulk API 2.0 ingest upsert jobs: create, CSV upload, UploadComplete,
//     poll, successfulResults, failedResults, unprocessedrecords, list,
//     abort;
//   - the Sforce-Limit-Info header on every REST response, and the
//     documented error bodies: 401 INVALID_SESSION_ID, 403
//     REQUEST_LIMIT_EXCEEDED, 400 for malformed requests, per-record errors
//     with statusCode, message and fields.
//
// It rejects what an org would reject: more than 200 records in a call,
// fields the configured sObject schema does not have, a missing external
// ID, values of the wrong type, strings too long, missing required fields
// on create, and records a configured validation rule refuses.
//
// Faults can be injected: latency, random 5xx (before or after the records
// were written), per-record UNABLE_TO_LOCK_ROW, REQUEST_LIMIT_EXCEEDED,
// token expiry. Counters (API calls by kind, records per call, writes per
// key) let tests assert "no duplicate records" and "≥195 records per call".
package sfdouble

import (
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Field is one field of an sObject schema. Types are Salesforce's describe
// types: string, textarea, picklist, email, phone, url, id, reference,
// double, currency, percent, int, long, boolean, date, datetime, time.
type Field struct {
	Name string
	Type string
	// Length bounds string values (0: 255).
	Length int
	// Precision and Scale bound numbers (0: 18 and 2... see NumberFits).
	Precision, Scale int
	// ExternalID marks an external ID field (describe: externalId, idLookup).
	ExternalID bool
	// Required makes the field required on create (describe: nillable false).
	Required bool
}

// Object is an sObject type the org has.
type Object struct {
	Name string
	// KeyPrefix is the 3-character prefix of its record IDs ("01t").
	KeyPrefix string
	Fields    []Field
	// Validate is a validation rule: a non-empty result rejects the record
	// with FIELD_CUSTOM_VALIDATION_EXCEPTION and that message.
	Validate func(rec map[string]any) string
}

// Config configures a Server.
type Config struct {
	ClientID     string
	ClientSecret string
	// Username is the sub the JWT bearer grant accepts; PublicKey verifies
	// its assertions (nil: the grant is refused).
	Username  string
	PublicKey *rsa.PublicKey
	// Audience is the aud the JWT bearer grant accepts (default
	// https://login.salesforce.com).
	Audience string
	Objects  []Object
	// APILimit is the org's daily API request limit (default 100,000).
	APILimit int64
	// TokenTTL expires issued tokens after this long (0: they last).
	TokenTTL time.Duration
	// BulkDelay is how long a Bulk API job waits in UploadComplete before
	// it is processed (default 50ms).
	BulkDelay time.Duration
	// ShuffleResults returns Bulk result rows in random order (as Salesforce
	// may).
	ShuffleResults bool
}

// Stats are the server's counters.
type Stats struct {
	// Calls counts requests by kind: token, limits, describe,
	// collections_upsert, collections_delete, query, bulk_create,
	// bulk_upload, bulk_close, bulk_poll, bulk_results, bulk_list,
	// bulk_abort.
	Calls map[string]int64
	// APICalls counts the requests that count against the API limit
	// (everything but the token endpoint), refused ones included.
	APICalls int64
	// TokensIssued counts access tokens granted.
	TokensIssued int64
	// Unauthorized counts 401 INVALID_SESSION_ID answers; LimitExceeded 403
	// REQUEST_LIMIT_EXCEEDED answers; Injected5xx the injected 5xx answers.
	Unauthorized, LimitExceeded, Injected5xx int64
	// CollectionsCalls and CollectionsRecords count accepted Collections
	// upserts and their records; RecordsPerCall is their histogram.
	CollectionsCalls, CollectionsRecords int64
	RecordsPerCall                       map[int]int64
	// MaxKeyPerCall is the most records one external ID value had in one
	// Collections call or Bulk job.
	MaxKeyPerCall int
	// BulkJobs counts created ingest jobs, BulkRecords the rows uploaded
	// to them, BulkCompleted the jobs that reached JobComplete.
	BulkJobs, BulkRecords, BulkCompleted int64
	// RecordErrors counts per-record failures by statusCode.
	RecordErrors map[string]int64
	// Upserts counts applied record upserts (Collections and Bulk), Deletes
	// applied deletes, Created the records created.
	Upserts, Deletes, Created int64
	// LastAPIVersion is the version of the last REST request ("62.0").
	LastAPIVersion string
}

// Record is a stored record.
type Record struct {
	ID     string
	Fields map[string]any
	// Writes counts the upserts applied to the record.
	Writes int
}

type record struct {
	id     string
	fields map[string]any
	writes int
}

type objectStore struct {
	def   *Object
	byID  map[string]*record
	index map[string]map[string]*record // external ID field -> value -> record
	seq   int64
}

// Server is the double. Its methods are safe for concurrent use.
type Server struct {
	// URL is the server's base URL: the login URL and the instance URL.
	URL string
	srv *httptest.Server
	cfg Config

	mu      sync.Mutex
	objects map[string]*objectStore
	tokens  map[string]time.Time // token -> expiry (zero: none)
	jobs    map[string]*job
	jobSeq  int64
	used    int64
	stats   Stats
	writes  map[string]int64 // "Object/Field/value" -> upserts
	rng     *rand.Rand

	latency       time.Duration
	fail5xx       float64
	failAfter     float64
	lockErrors    float64
	limitExceeded bool
}

// New starts a server on 127.0.0.1. Close it when done.
func New(cfg Config) *Server {
	if cfg.APILimit <= 0 {
		cfg.APILimit = 100_000
	}
	if cfg.Audience == "" {
		cfg.Audience = "https://login.salesforce.com"
	}
	if cfg.BulkDelay <= 0 {
		cfg.BulkDelay = 50 * time.Millisecond
	}
	s := &Server{
		cfg:     cfg,
		objects: map[string]*objectStore{},
		tokens:  map[string]time.Time{},
		jobs:    map[string]*job{},
		writes:  map[string]int64{},
		rng:     rand.New(rand.NewPCG(1, 2)),
		stats:   Stats{Calls: map[string]int64{}, RecordsPerCall: map[int]int64{}, RecordErrors: map[string]int64{}},
	}
	for i := range cfg.Objects {
		o := &cfg.Objects[i]
		if o.KeyPrefix == "" {
			o.KeyPrefix = fmt.Sprintf("a%02d", i)
		}
		st := &objectStore{def: o, byID: map[string]*record{}, index: map[string]map[string]*record{}}
		for _, f := range o.Fields {
			if f.ExternalID {
				st.index[f.Name] = map[string]*record{}
			}
		}
		s.objects[o.Name] = st
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// ---- fault injection ----

// SetLatency delays every response by d.
func (s *Server) SetLatency(d time.Duration) { s.mu.Lock(); s.latency = d; s.mu.Unlock() }

// SetFail5xx answers a share p of REST requests with a 503 before doing
// anything.
func (s *Server) SetFail5xx(p float64) { s.mu.Lock(); s.fail5xx = p; s.mu.Unlock() }

// SetFailAfterApply answers a share p of Collections upserts with a 500
// after the records were written (the reply is lost).
func (s *Server) SetFailAfterApply(p float64) { s.mu.Lock(); s.failAfter = p; s.mu.Unlock() }

// SetLockErrors fails a share p of records with UNABLE_TO_LOCK_ROW.
func (s *Server) SetLockErrors(p float64) { s.mu.Lock(); s.lockErrors = p; s.mu.Unlock() }

// SetRequestLimitExceeded makes every REST request answer 403
// REQUEST_LIMIT_EXCEEDED while on (as when the daily limit is reached).
func (s *Server) SetRequestLimitExceeded(on bool) { s.mu.Lock(); s.limitExceeded = on; s.mu.Unlock() }

// SetAPIUsage sets the org's API requests used in the current 24 hours.
func (s *Server) SetAPIUsage(used int64) { s.mu.Lock(); s.used = used; s.mu.Unlock() }

// APIUsage returns the used and maximum API requests.
func (s *Server) APIUsage() (used, limit int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.cfg.APILimit
}

// ExpireTokens invalidates every issued access token.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t := range s.tokens {
		s.tokens[t] = time.Unix(1, 0)
	}
}

// ---- inspection ----

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Calls = cloneMap(s.stats.Calls)
	st.RecordsPerCall = cloneMap(s.stats.RecordsPerCall)
	st.RecordErrors = cloneMap(s.stats.RecordErrors)
	return st
}

// ResetStats zeroes the counters (not the records nor the API usage).
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = Stats{Calls: map[string]int64{}, RecordsPerCall: map[int]int64{}, RecordErrors: map[string]int64{}}
	s.writes = map[string]int64{}
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Records returns the records of an object by ID.
func (s *Server) Records(object string) map[string]Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Record{}
	st := s.objects[object]
	if st == nil {
		return out
	}
	for id, r := range st.byID {
		out[id] = Record{ID: id, Fields: cloneMap(r.fields), Writes: r.writes}
	}
	return out
}

// ByExternalID returns the records of an object keyed by the text of an
// external ID field, and the number of records per value (more than 1 is a
// duplicate; records without a value are not counted).
func (s *Server) ByExternalID(object, field string) (map[string]Record, map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, n := map[string]Record{}, map[string]int{}
	st := s.objects[object]
	if st == nil {
		return out, n
	}
	for id, r := range st.byID {
		v, ok := r.fields[field]
		if !ok || v == nil {
			continue
		}
		k := fmt.Sprint(v)
		n[k]++
		out[k] = Record{ID: id, Fields: cloneMap(r.fields), Writes: r.writes}
	}
	return out, n
}

// Writes returns the upserts applied per value of an object's external ID
// field, deleted records included, since the last ResetStats.
func (s *Server) Writes(object, field string) map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	prefix := object + "/" + field + "/"
	for k, v := range s.writes {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			out[rest] = v
		}
	}
	return out
}

// Put stores a record directly (test setup), without counting a call.
func (s *Server) Put(object string, fields map[string]any) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.objects[object]
	r := st.create(fields)
	return r.id
}

// ---- HTTP ----

// apiError is a top-level REST error entry.
type apiError struct {
	Message   string   `json:"message"`
	ErrorCode string   `json:"errorCode"`
	Fields    []string `json:"fields,omitempty"`
}

// recordError is a per-record error entry.
type recordError struct {
	StatusCode string   `json:"statusCode"`
	Message    string   `json:"message"`
	Fields     []string `json:"fields"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, []apiError{{Message: msg, ErrorCode: code}})
}

var dataPath = regexp.MustCompile(`^/services/data/v(\d+\.\d)(/.*)?$`)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	lat := s.latency
	s.mu.Unlock()
	if lat > 0 {
		time.Sleep(lat)
	}
	if r.URL.Path == "/services/oauth2/token" {
		s.token(w, r)
		return
	}
	m := dataPath.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	}
	version, rest := m[1], m[2]

	s.mu.Lock()
	s.stats.APICalls++
	s.used++
	s.stats.LastAPIVersion = version
	used, limit := s.used, s.cfg.APILimit
	w.Header().Set("Sforce-Limit-Info", fmt.Sprintf("api-usage=%d/%d", used, limit))
	authOK := s.authorizedLocked(r)
	limited := s.limitExceeded || used > limit
	fail := s.fail5xx > 0 && s.rng.Float64() < s.fail5xx
	switch {
	case !authOK:
		s.stats.Unauthorized++
	case limited:
		s.stats.LimitExceeded++
	case fail:
		s.stats.Injected5xx++
	}
	s.mu.Unlock()

	if !authOK {
		writeErr(w, http.StatusUnauthorized, "INVALID_SESSION_ID", "Session expired or invalid")
		return
	}
	if limited {
		writeErr(w, http.StatusForbidden, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
		return
	}
	if fail {
		writeErr(w, http.StatusServiceUnavailable, "SERVER_UNAVAILABLE", "Server is temporarily unavailable (injected)")
		return
	}
	v, _ := strconv.ParseFloat(version, 64)
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	switch {
	case rest == "/limits" && r.Method == http.MethodGet:
		s.count("limits")
		s.limits(w)
	case len(parts) == 3 && parts[0] == "sobjects" && parts[2] == "describe" && r.Method == http.MethodGet:
		s.count("describe")
		s.describe(w, parts[1])
	case len(parts) == 4 && parts[0] == "composite" && parts[1] == "sobjects" && r.Method == http.MethodPatch:
		if v < 46 {
			writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
			return
		}
		s.count("collections_upsert")
		s.collectionsUpsert(w, r, parts[2], parts[3])
	case len(parts) == 2 && parts[0] == "composite" && parts[1] == "sobjects" && r.Method == http.MethodDelete:
		s.count("collections_delete")
		s.collectionsDelete(w, r)
	case len(parts) == 1 && parts[0] == "query" && r.Method == http.MethodGet:
		s.count("query")
		s.query(w, r)
	case len(parts) >= 2 && parts[0] == "jobs" && parts[1] == "ingest":
		s.bulk(w, r, version, parts[2:])
	default:
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
	}
}

func (s *Server) count(kind string) {
	s.mu.Lock()
	s.stats.Calls[kind]++
	s.mu.Unlock()
}

func (s *Server) authorizedLocked(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	exp, ok := s.tokens[tok]
	return ok && (exp.IsZero() || time.Now().Before(exp))
}

func (s *Server) limits(w http.ResponseWriter) {
	s.mu.Lock()
	used, limit := s.used, s.cfg.APILimit
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"DailyApiRequests":     map[string]int64{"Max": limit, "Remaining": max(limit-used, 0)},
		"DailyBulkV2QueryJobs": map[string]int64{"Max": 10000, "Remaining": 10000},
	})
}

// describeField is the subset of a describe field result the double sends.
type describeField struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Length     int    `json:"length"`
	Precision  int    `json:"precision"`
	Scale      int    `json:"scale"`
	Nillable   bool   `json:"nillable"`
	Createable bool   `json:"createable"`
	Updateable bool   `json:"updateable"`
	ExternalID bool   `json:"externalId"`
	IDLookup   bool   `json:"idLookup"`
	Unique     bool   `json:"unique"`
}

func (s *Server) describe(w http.ResponseWriter, object string) {
	s.mu.Lock()
	st := s.objects[object]
	s.mu.Unlock()
	if st == nil {
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	}
	fields := []describeField{{Name: "Id", Type: "id", Length: 18, IDLookup: true}}
	for _, f := range st.def.Fields {
		fields = append(fields, describeField{
			Name: f.Name, Type: f.Type, Length: f.Length, Precision: f.Precision, Scale: f.Scale,
			Nillable: !f.Required, Createable: true, Updateable: true,
			ExternalID: f.ExternalID, IDLookup: f.ExternalID, Unique: f.ExternalID,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name": object, "keyPrefix": st.def.KeyPrefix, "createable": true, "updateable": true, "deletable": true,
		"fields": fields,
	})
}
