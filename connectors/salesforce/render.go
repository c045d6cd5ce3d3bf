package salesforce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// fieldInfo is what the target uses of a describe field result.
type fieldInfo struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	ExternalID bool   `json:"externalId"`
	IDLookup   bool   `json:"idLookup"`
}

// schema is the object's fields by lower-cased name.
type schema struct {
	fields map[string]*fieldInfo
	at     time.Time
}

func (s *schema) field(name string) *fieldInfo { return s.fields[strings.ToLower(name)] }

// describe reads the object's fields (GET sobjects/{Object}/describe).
func (t *Target) describe(ctx context.Context) (*schema, error) {
	_, _, body, err := t.c.call(ctx, http.MethodGet, "sobjects/"+t.set.object+"/describe", nil, "", true)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && (ae.status == http.StatusNotFound || ae.code == "NOT_FOUND" || ae.code == "INVALID_TYPE") {
			return nil, fmt.Errorf("salesforce target %q: object %s does not exist (or the user cannot see it): %w", t.name, t.set.object, errPermanent(err))
		}
		return nil, err
	}
	var d struct {
		Fields []*fieldInfo `json:"fields"`
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("salesforce: describe %s: %v", t.set.object, err)
	}
	s := &schema{fields: map[string]*fieldInfo{}, at: time.Now()}
	for _, f := range d.Fields {
		s.fields[strings.ToLower(f.Name)] = f
	}
	return s, nil
}

// rendered is one message turned into a Salesforce record.
type rendered struct {
	fields map[string]any // API names -> JSON values (json.Number for numbers)
	ext    string         // the external ID's text (its CSV cell)
}

var errUnknownField = errors.New("unknown field")

// render turns a row into a record for the object: each key is mapped to
// its field (case-insensitively) and each value rendered the way the
// field's type wants it. extra overrides fields (delete_fields).
func (t *Target) render(sch *schema, row map[string]any, extra map[string]any) (*rendered, error) {
	out := &rendered{fields: make(map[string]any, len(row)+len(extra))}
	put := func(k string, v any) error {
		f := sch.field(k)
		if f == nil {
			return fmt.Errorf("%w: %s has no field %q (map the row to its API names)", errUnknownField, t.set.object, k)
		}
		if strings.EqualFold(f.Name, "Id") {
			return fmt.Errorf("the row sets Id: upserts match on %s, remove Id from the route's map", t.set.externalID)
		}
		rv, err := renderValue(f, v)
		if err != nil {
			return fmt.Errorf("field %s (%s): %v", f.Name, f.Type, err)
		}
		out.fields[f.Name] = rv
		return nil
	}
	for k, v := range row {
		if k == "attributes" {
			return nil, errors.New(`the row has a key "attributes", which Salesforce reserves`)
		}
		if err := put(k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range extra {
		if err := put(k, v); err != nil {
			return nil, err
		}
	}
	ef := sch.field(t.set.externalID)
	ev, ok := out.fields[ef.Name]
	if !ok || ev == nil {
		return nil, fmt.Errorf("the row has no value for the external ID field %s", ef.Name)
	}
	out.ext = cell(ev)
	if out.ext == "" || out.ext == "#N/A" {
		return nil, fmt.Errorf("the row's external ID %s is empty", ef.Name)
	}
	return out, nil
}

var (
	jsonNumberRE = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)
	// Numbers as sources write them in strings: also "+1", "1.", ".5", "007".
	looseNumberRE = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
	clockRE       = regexp.MustCompile(`^([0-9]{2}):([0-9]{2})(?::([0-9]{2})(\.[0-9]+)?)?$`)
)

// renderValue converts a row value (nil, bool, int64, float64,
// json.Number, string, []any, map[string]any, time.Time) for a field of a
// describe type:
//
//	double, currency, percent, int, long -> a JSON number with the source's
//	                           exact digits (json.Number: no float rounding)
//	boolean                 -> true/false (also 1/0, "true"/"t"/"1", ...)
//	date                    -> "YYYY-MM-DD"
//	datetime                -> "YYYY-MM-DDTHH:MM:SS.sssZ" (UTC; no zone: UTC)
//	time                    -> "HH:MM:SS.sssZ"
//	text types              -> a string (numbers as their text, objects as JSON)
//	nil                     -> null, which clears the field
func renderValue(f *fieldInfo, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch f.Type {
	case "double", "currency", "percent", "int", "long":
		n, err := number(v)
		if err != nil {
			return nil, err
		}
		if f.Type == "int" || f.Type == "long" {
			return integral(n)
		}
		return n, nil
	case "boolean":
		return boolean(v)
	case "date":
		tm, dateOnly, err := timeOf(v)
		if err != nil {
			return nil, err
		}
		if dateOnly {
			return tm.Format("2006-01-02"), nil
		}
		return tm.UTC().Format("2006-01-02"), nil
	case "datetime":
		tm, _, err := timeOf(v)
		if err != nil {
			return nil, err
		}
		return tm.UTC().Format("2006-01-02T15:04:05.000Z"), nil
	case "time":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a time of day, got %T", v)
		}
		m := clockRE.FindStringSubmatch(strings.TrimSuffix(s, "Z"))
		if m == nil || m[1] > "23" || m[2] > "59" || (m[3] != "" && m[3] > "59") {
			return nil, fmt.Errorf("%q is not a time of day (HH:MM:SS)", s)
		}
		sec, frac := m[3], m[4]
		if sec == "" {
			sec = "00"
		}
		frac = (strings.TrimPrefix(frac, ".") + "000")[:3]
		return m[1] + ":" + m[2] + ":" + sec + "." + frac + "Z", nil
	case "base64", "address", "location", "anyType", "complexvalue":
		return v, nil
	}
	// Text types: string, textarea, picklist, multipicklist, email, phone,
	// url, reference, id, combobox, encryptedstring.
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case json.Number:
		return string(x), nil
	case time.Time:
		return x.UTC().Format("2006-01-02T15:04:05.000Z"), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// number returns v as a JSON number with its exact digits.
func number(v any) (json.Number, error) {
	switch x := v.(type) {
	case json.Number:
		if jsonNumberRE.MatchString(string(x)) {
			return x, nil
		}
		return canonicalNumber(string(x))
	case int64:
		return json.Number(strconv.FormatInt(x, 10)), nil
	case int:
		return json.Number(strconv.Itoa(x)), nil
	case uint64:
		return json.Number(strconv.FormatUint(x, 10)), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", fmt.Errorf("%v is not a number Salesforce can store", x)
		}
		b, _ := json.Marshal(x)
		return json.Number(b), nil
	case string:
		return canonicalNumber(strings.TrimSpace(x))
	case bool:
		return "", errors.New("want a number, got a boolean")
	}
	return "", fmt.Errorf("want a number, got %T", v)
}

// canonicalNumber turns numeric text such as "+1.", ".5", "007" into a
// valid JSON number without changing its value or digits.
func canonicalNumber(s string) (json.Number, error) {
	if !looseNumberRE.MatchString(s) {
		return "", fmt.Errorf("%q is not a number", s)
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimLeft(s, "+-")
	mant, exp, _ := strings.Cut(strings.ToLower(s), "e")
	ip, fp, _ := strings.Cut(mant, ".")
	ip = strings.TrimLeft(ip, "0")
	if ip == "" {
		ip = "0"
	}
	out := ip
	if fp != "" {
		out += "." + fp
	}
	if exp != "" {
		out += "e" + exp
	}
	if neg && strings.Trim(out, "0.e+-") != "" {
		out = "-" + out
	}
	return json.Number(out), nil
}

// integral drops a zero fraction ("42.00" -> "42") and refuses others.
func integral(n json.Number) (json.Number, error) {
	s := string(n)
	if strings.ContainsAny(s, "eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return "", fmt.Errorf("%s is not an integer", s)
		}
		return json.Number(strconv.FormatFloat(f, 'f', -1, 64)), nil
	}
	ip, fp, _ := strings.Cut(s, ".")
	if strings.Trim(fp, "0") != "" {
		return "", fmt.Errorf("%s is not an integer", s)
	}
	return json.Number(ip), nil
}

func boolean(v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case int64:
		if x == 0 || x == 1 {
			return x == 1, nil
		}
	case float64:
		if x == 0 || x == 1 {
			return x == 1, nil
		}
	case json.Number:
		if x == "0" || x == "1" {
			return x == "1", nil
		}
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "true", "t", "1", "yes", "y":
			return true, nil
		case "false", "f", "0", "no", "n":
			return false, nil
		}
	}
	return false, fmt.Errorf("%v is not a boolean", v)
}

var timeLayouts = []struct {
	layout string
	zone   bool
}{
	{time.RFC3339Nano, true},
	{"2006-01-02T15:04:05.999999999Z0700", true},
	{"2006-01-02 15:04:05.999999999Z07:00", true},
	{"2006-01-02T15:04:05.999999999", false},
	{"2006-01-02 15:04:05.999999999", false},
	{"2006-01-02T15:04", false},
}

// timeOf parses a date or timestamp. Text without a zone is read as UTC
// (MySQL datetime, PostgreSQL timestamp without time zone). dateOnly
// reports a plain YYYY-MM-DD.
func timeOf(v any) (tm time.Time, dateOnly bool, err error) {
	switch x := v.(type) {
	case time.Time:
		return x, false, nil
	case string:
		s := strings.TrimSpace(x)
		if len(s) == 10 {
			tm, err := time.Parse("2006-01-02", s)
			if err != nil {
				return tm, false, fmt.Errorf("%q is not a valid date", s)
			}
			return tm, true, nil
		}
		for _, l := range timeLayouts {
			if tm, err := time.Parse(l.layout, s); err == nil {
				return tm, false, nil
			}
		}
		return tm, false, fmt.Errorf("%q is not a valid date or timestamp", s)
	}
	return tm, false, fmt.Errorf("want a date or timestamp, got %T", v)
}

// cell renders a rendered value as a Bulk API CSV cell: null (and the
// empty string, which Salesforce stores as null) is #N/A, because an empty
// cell leaves the field unchanged.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "#N/A"
	case string:
		if x == "" {
			return "#N/A"
		}
		return x
	case json.Number:
		return string(x)
	case bool:
		return strconv.FormatBool(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// sortedKeys returns m's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
