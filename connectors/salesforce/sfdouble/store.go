package sfdouble

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

func (st *objectStore) field(name string) *Field {
	for i := range st.def.Fields {
		if strings.EqualFold(st.def.Fields[i].Name, name) {
			return &st.def.Fields[i]
		}
	}
	return nil
}

func (st *objectStore) create(fields map[string]any) *record {
	st.seq++
	r := &record{id: newID(st.def.KeyPrefix, st.seq), fields: map[string]any{}}
	st.byID[r.id] = r
	st.apply(r, fields)
	return r
}

// apply writes fields into r and keeps the external ID indexes.
func (st *objectStore) apply(r *record, fields map[string]any) {
	for k, v := range fields {
		f := st.field(k)
		if f == nil {
			continue
		}
		if f.ExternalID {
			if old, ok := r.fields[f.Name]; ok && old != nil {
				delete(st.index[f.Name], fmt.Sprint(old))
			}
			if v != nil {
				st.index[f.Name][fmt.Sprint(v)] = r
			}
		}
		if v == nil {
			delete(r.fields, f.Name)
			r.fields[f.Name] = nil
			continue
		}
		r.fields[f.Name] = v
	}
}

func (st *objectStore) remove(r *record) {
	for name, idx := range st.index {
		if v, ok := r.fields[name]; ok && v != nil {
			delete(idx, fmt.Sprint(v))
		}
	}
	delete(st.byID, r.id)
}

// upsertLocked upserts one record whose values are already converted to
// their stored form. It returns the record ID, whether it was created, and
// a per-record error.
func (s *Server) upsertLocked(st *objectStore, extField string, vals map[string]any) (string, bool, *recordError) {
	ext, ok := vals[extField]
	if !ok || ext == nil || ext == "" {
		return "", false, &recordError{StatusCode: "MISSING_ARGUMENT", Message: extField + " not specified", Fields: []string{extField}}
	}
	if s.lockErrors > 0 && s.rng.Float64() < s.lockErrors {
		return "", false, &recordError{StatusCode: "UNABLE_TO_LOCK_ROW", Message: "unable to obtain exclusive access to this record or 1 records", Fields: []string{}}
	}
	existing := st.index[extField][fmt.Sprint(ext)]
	for k, v := range vals {
		f := st.field(k)
		if e := checkStored(f, v); e != nil {
			return "", false, e
		}
	}
	if existing == nil {
		var missing []string
		for _, f := range st.def.Fields {
			if f.Required {
				if v, ok := vals[f.Name]; !ok || v == nil {
					missing = append(missing, f.Name)
				}
			}
		}
		if len(missing) > 0 {
			return "", false, &recordError{StatusCode: "REQUIRED_FIELD_MISSING", Message: "Required fields are missing: [" + strings.Join(missing, ", ") + "]", Fields: missing}
		}
	} else {
		for _, f := range st.def.Fields {
			if v, ok := vals[f.Name]; ok && v == nil && f.Required {
				return "", false, &recordError{StatusCode: "REQUIRED_FIELD_MISSING", Message: "Required fields are missing: [" + f.Name + "]", Fields: []string{f.Name}}
			}
		}
	}
	if st.def.Validate != nil {
		merged := map[string]any{}
		if existing != nil {
			for k, v := range existing.fields {
				merged[k] = v
			}
		}
		for k, v := range vals {
			merged[k] = v
		}
		if msg := st.def.Validate(merged); msg != "" {
			return "", false, &recordError{StatusCode: "FIELD_CUSTOM_VALIDATION_EXCEPTION", Message: msg, Fields: []string{}}
		}
	}
	created := existing == nil
	r := existing
	if created {
		r = st.create(vals)
		s.stats.Created++
	} else {
		st.apply(r, vals)
	}
	r.writes++
	s.stats.Upserts++
	s.writes[st.def.Name+"/"+extField+"/"+fmt.Sprint(ext)]++
	return r.id, created, nil
}

// checkStored checks a converted value against the field's limits.
func checkStored(f *Field, v any) *recordError {
	if f == nil || v == nil {
		return nil
	}
	switch f.Type {
	case "string", "textarea", "picklist", "email", "phone", "url", "combobox", "encryptedstring":
		s, _ := v.(string)
		max := f.Length
		if max == 0 {
			max = 255
		}
		if n := len([]rune(s)); n > max {
			return &recordError{StatusCode: "STRING_TOO_LONG", Message: fmt.Sprintf("%s: data value too large: %s (max length=%d)", f.Name, truncate(s, 40), max), Fields: []string{f.Name}}
		}
	case "double", "currency", "percent":
		n, _ := v.(json.Number)
		if !numberFits(string(n), f.Precision, f.Scale) {
			return &recordError{StatusCode: "NUMBER_OUTSIDE_VALID_RANGE", Message: fmt.Sprintf("%s: value outside of valid range on numeric field: %s", f.Name, n), Fields: []string{f.Name}}
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// numberFits reports whether the decimal text has at most precision-scale
// integer digits (defaults 18 and 2).
func numberFits(n string, precision, scale int) bool {
	if precision == 0 {
		precision, scale = 18, 2
	}
	n = strings.TrimLeft(strings.TrimPrefix(n, "-"), "0")
	if i := strings.IndexAny(n, "eE"); i >= 0 {
		return true // exponent forms: not checked
	}
	intPart, _, _ := strings.Cut(n, ".")
	return len(intPart) <= precision-scale
}

var (
	numberRE   = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)
	csvNumRE   = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
	dateRE     = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)
	timeRE     = regexp.MustCompile(`^\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?Z?$`)
	datetimeLs = []string{"2006-01-02T15:04:05.000Z07:00", "2006-01-02T15:04:05Z07:00", "2006-01-02T15:04:05.000Z0700", "2006-01-02T15:04:05Z0700", time.RFC3339Nano}
)

// parseDatetime accepts Salesforce's dateTime forms and returns the stored
// form, 2006-01-02T15:04:05.000Z (UTC).
func parseDatetime(s string) (string, bool) {
	for _, l := range datetimeLs {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC().Format("2006-01-02T15:04:05.000Z"), true
		}
	}
	return "", false
}

// convertJSON converts a JSON-decoded value (numbers as json.Number) for a
// field into its stored form; ok false is a deserialization error.
func convertJSON(f *Field, v any) (any, bool) {
	if v == nil {
		return nil, true
	}
	switch f.Type {
	case "double", "currency", "percent", "int", "long":
		n, ok := v.(json.Number)
		if !ok {
			return nil, false
		}
		if (f.Type == "int" || f.Type == "long") && strings.ContainsAny(string(n), ".eE") {
			return nil, false
		}
		return n, true
	case "boolean":
		b, ok := v.(bool)
		return b, ok
	case "date":
		s, ok := v.(string)
		if !ok {
			return nil, false
		}
		if _, err := time.Parse("2006-01-02", s); err != nil || !dateRE.MatchString(s) {
			return nil, false
		}
		return s, true
	case "datetime":
		s, ok := v.(string)
		if !ok {
			return nil, false
		}
		return parseDatetime(s)
	case "time":
		s, ok := v.(string)
		if !ok || !timeRE.MatchString(s) {
			return nil, false
		}
		return s, true
	default: // text types
		s, ok := v.(string)
		if !ok {
			return nil, false
		}
		if s == "" {
			return nil, true // Salesforce stores empty text as null
		}
		return s, true
	}
}

// convertCSV converts a Bulk API CSV cell for a field: skip true for an
// empty cell (the field is left as it is), nil for #N/A.
func convertCSV(f *Field, cell string) (v any, skip bool, errMsg string) {
	if cell == "" {
		return nil, true, ""
	}
	if cell == "#N/A" {
		return nil, false, ""
	}
	bad := func(xsd string) (any, bool, string) {
		return nil, false, fmt.Sprintf("'%s' is not a valid value for the type xsd:%s", cell, xsd)
	}
	switch f.Type {
	case "double", "currency", "percent":
		if !csvNumRE.MatchString(cell) {
			return bad("double")
		}
		return json.Number(strings.TrimPrefix(cell, "+")), false, ""
	case "int", "long":
		if !regexp.MustCompile(`^[+-]?[0-9]+$`).MatchString(cell) {
			return bad("int")
		}
		return json.Number(strings.TrimPrefix(cell, "+")), false, ""
	case "boolean":
		switch strings.ToLower(cell) {
		case "true", "1":
			return true, false, ""
		case "false", "0":
			return false, false, ""
		}
		return bad("boolean")
	case "date":
		d := strings.TrimSuffix(cell, "Z")
		if _, err := time.Parse("2006-01-02", d); err != nil {
			return bad("date")
		}
		return d, false, ""
	case "datetime":
		t, ok := parseDatetime(cell)
		if !ok {
			return bad("dateTime")
		}
		return t, false, ""
	case "time":
		if !timeRE.MatchString(cell) {
			return bad("time")
		}
		return cell, false, ""
	}
	return cell, false, ""
}
