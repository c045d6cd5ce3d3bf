package sfdouble

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
)

// upsertResult is one entry of a Collections upsert response.
type upsertResult struct {
	ID      *string       `json:"id"`
	Success bool          `json:"success"`
	Errors  []recordError `json:"errors"`
	Created *bool         `json:"created,omitempty"`
}

func (s *Server) collectionsUpsert(w http.ResponseWriter, r *http.Request, object, extField string) {
	s.mu.Lock()
	st := s.objects[object]
	s.mu.Unlock()
	if st == nil {
		writeErr(w, http.StatusNotFound, "NOT_FOUND", "The requested resource does not exist")
		return
	}
	ef := st.field(extField)
	if ef == nil || !ef.ExternalID {
		writeErr(w, http.StatusBadRequest, "INVALID_FIELD", fmt.Sprintf("Field name provided, %s is not an External ID or indexed field for %s", extField, object))
		return
	}
	extField = ef.Name
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", "could not read the request")
		return
	}
	var req struct {
		AllOrNone *bool             `json:"allOrNone"`
		Records   []json.RawMessage `json:"records"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", "Unexpected character: "+err.Error())
		return
	}
	if req.Records == nil {
		writeErr(w, http.StatusBadRequest, "INVALID_FIELD", "No records provided")
		return
	}
	if len(req.Records) > 200 {
		writeErr(w, http.StatusBadRequest, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
		return
	}
	allOrNone := req.AllOrNone != nil && *req.AllOrNone
	// Deserialize every record first: an unknown field or a value of the
	// wrong type fails the whole request, as JSON deserialization does.
	recs := make([]map[string]any, len(req.Records))
	for i, raw := range req.Records {
		var m map[string]any
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", "Cannot deserialize instance of "+object+": "+err.Error())
			return
		}
		attrs, _ := m["attributes"].(map[string]any)
		if t, _ := attrs["type"].(string); t != object {
			writeErr(w, http.StatusBadRequest, "INVALID_TYPE", "Record "+fmt.Sprint(i)+" has attributes.type "+fmt.Sprintf("%q", t)+"; every record must be of type "+object)
			return
		}
		vals := map[string]any{}
		for k, v := range m {
			if k == "attributes" {
				continue
			}
			if strings.EqualFold(k, "Id") {
				writeErr(w, http.StatusBadRequest, "INVALID_FIELD", "Don't set the Id field for upsert by external ID")
				return
			}
			f := st.field(k)
			if f == nil {
				writeErr(w, http.StatusBadRequest, "INVALID_FIELD", fmt.Sprintf("No such column '%s' on sobject of type %s", k, object))
				return
			}
			cv, ok := convertJSON(f, v)
			if !ok {
				writeErr(w, http.StatusBadRequest, "JSON_PARSER_ERROR", fmt.Sprintf("Cannot deserialize instance of %s from %s value %s or request may be missing a required field", f.Type, jsonKind(v), truncate(fmt.Sprint(v), 60)))
				return
			}
			vals[f.Name] = cv
		}
		recs[i] = vals
	}
	results := make([]upsertResult, len(recs))
	s.mu.Lock()
	perKey := map[string]int{}
	for _, v := range recs {
		if x, ok := v[extField]; ok && x != nil {
			perKey[fmt.Sprint(x)]++
		}
	}
	for _, n := range perKey {
		s.stats.MaxKeyPerCall = max(s.stats.MaxKeyPerCall, n)
	}
	failed := false
	for i, v := range recs {
		if x, ok := v[extField]; ok && x != nil && perKey[fmt.Sprint(x)] > 1 {
			results[i] = upsertResult{Errors: []recordError{{StatusCode: "DUPLICATE_VALUE", Message: "Duplicate external id specified: " + fmt.Sprint(x), Fields: []string{extField}}}}
			failed = true
			continue
		}
		if allOrNone && failed {
			results[i] = upsertResult{Errors: []recordError{{StatusCode: "ALL_OR_NONE_OPERATION_ROLLED_BACK", Message: "Record rolled back because not all records were valid and the request was using AllOrNone header", Fields: []string{}}}}
			continue
		}
		id, created, rerr := s.upsertLocked(st, extField, v)
		if rerr != nil {
			results[i] = upsertResult{Errors: []recordError{*rerr}}
			failed = true
			continue
		}
		c := created
		results[i] = upsertResult{ID: &id, Success: true, Errors: []recordError{}, Created: &c}
	}
	for _, res := range results {
		for _, e := range res.Errors {
			s.stats.RecordErrors[e.StatusCode]++
		}
	}
	s.stats.CollectionsCalls++
	s.stats.CollectionsRecords += int64(len(recs))
	s.stats.RecordsPerCall[len(recs)]++
	failAfter := s.failAfter > 0 && s.rng.Float64() < s.failAfter
	if failAfter {
		s.stats.Injected5xx++
	}
	s.mu.Unlock()
	if failAfter {
		writeErr(w, http.StatusInternalServerError, "UNKNOWN_EXCEPTION", "An unexpected error occurred (injected after the records were written)")
		return
	}
	writeJSON(w, http.StatusOK, results)
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "VALUE_STRING"
	case json.Number:
		return "VALUE_NUMBER"
	case bool:
		return "VALUE_BOOLEAN"
	case map[string]any:
		return "START_OBJECT"
	case []any:
		return "START_ARRAY"
	}
	return "VALUE_NULL"
}

// deleteResult is one entry of a Collections delete response.
type deleteResult struct {
	ID      string        `json:"id"`
	Success bool          `json:"success"`
	Errors  []recordError `json:"errors"`
}

func (s *Server) collectionsDelete(w http.ResponseWriter, r *http.Request) {
	idsParam := r.URL.Query().Get("ids")
	if idsParam == "" {
		writeErr(w, http.StatusBadRequest, "MISSING_ARGUMENT", "ids parameter is required")
		return
	}
	ids := strings.Split(idsParam, ",")
	if len(ids) > 200 {
		writeErr(w, http.StatusBadRequest, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
		return
	}
	out := make([]deleteResult, len(ids))
	s.mu.Lock()
	for i, id := range ids {
		found := false
		for _, st := range s.objects {
			if rec := st.byID[id]; rec != nil {
				if s.lockErrors > 0 && s.rng.Float64() < s.lockErrors {
					out[i] = deleteResult{ID: id, Errors: []recordError{{StatusCode: "UNABLE_TO_LOCK_ROW", Message: "unable to obtain exclusive access to this record or 1 records", Fields: []string{}}}}
					found = true
					break
				}
				st.remove(rec)
				s.stats.Deletes++
				out[i] = deleteResult{ID: id, Success: true, Errors: []recordError{}}
				found = true
				break
			}
		}
		if !found {
			out[i] = deleteResult{ID: id, Errors: []recordError{{StatusCode: "ENTITY_IS_DELETED", Message: "entity is deleted", Fields: []string{}}}}
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// soqlRE is the one query shape the double understands.
var soqlRE = regexp.MustCompile(`(?is)^\s*SELECT\s+Id\s*,\s*(\w+)\s+FROM\s+(\w+)\s+WHERE\s+(\w+)\s+IN\s*\((.*)\)\s*$`)

func (s *Server) query(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	m := soqlRE.FindStringSubmatch(q)
	if m == nil {
		writeErr(w, http.StatusBadRequest, "MALFORMED_QUERY", "the double only understands SELECT Id, F FROM Object WHERE F IN (...)")
		return
	}
	field, object, where := m[1], m[2], m[3]
	if !strings.EqualFold(field, where) {
		writeErr(w, http.StatusBadRequest, "MALFORMED_QUERY", "select and where fields differ")
		return
	}
	values, ok := parseSOQLList(m[4])
	if !ok {
		writeErr(w, http.StatusBadRequest, "MALFORMED_QUERY", "unexpected token in IN list")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.objects[object]
	if st == nil {
		writeErrLocked(w, http.StatusBadRequest, "INVALID_TYPE", "sObject type '"+object+"' is not supported.")
		return
	}
	f := st.field(field)
	if f == nil {
		writeErrLocked(w, http.StatusBadRequest, "INVALID_FIELD", "No such column '"+field+"' on entity '"+object+"'.")
		return
	}
	type attrs struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	}
	recs := []map[string]any{}
	for _, v := range values {
		var rec *record
		if idx := st.index[f.Name]; idx != nil {
			rec = idx[v]
		}
		if rec == nil {
			continue
		}
		recs = append(recs, map[string]any{
			"attributes": attrs{Type: object, URL: "/services/data/v" + s.stats.LastAPIVersion + "/sobjects/" + object + "/" + rec.id},
			"Id":         rec.id, f.Name: rec.fields[f.Name],
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"totalSize": len(recs), "done": true, "records": recs})
}

func writeErrLocked(w http.ResponseWriter, status int, code, msg string) {
	writeErr(w, status, code, msg)
}

// parseSOQLList parses 'a', 'b\'c' (quoted strings with backslash escapes).
func parseSOQLList(s string) ([]string, bool) {
	var out []string
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n') {
			i++
		}
		if i >= len(s) || s[i] != '\'' {
			return nil, false
		}
		i++
		var b strings.Builder
		for {
			if i >= len(s) {
				return nil, false
			}
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				switch s[i+1] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				default:
					b.WriteByte(s[i+1])
				}
				i += 2
				continue
			}
			if c == '\'' {
				i++
				break
			}
			b.WriteByte(c)
			i++
		}
		out = append(out, b.String())
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n') {
			i++
		}
		if i >= len(s) {
			return out, true
		}
		if s[i] != ',' {
			return nil, false
		}
		i++
	}
}
