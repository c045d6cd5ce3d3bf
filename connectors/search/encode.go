package search

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/plumecdc/plume/pkg/event"
)

// Bulk action kinds.
const (
	actIndex  = "index"
	actDelete = "delete"
)

// appendAction appends one _bulk action line (with its newline):
//
//	{"index":{"_index":"products","_id":"42","version":1001,"version_type":"external"}}
func appendAction(dst []byte, kind, index, id string, version int64) []byte {
	dst = append(dst, `{"`...)
	dst = append(dst, kind...)
	dst = append(dst, `":{"_index":`...)
	dst = event.AppendJSONString(dst, index)
	dst = append(dst, `,"_id":`...)
	dst = event.AppendJSONString(dst, id)
	dst = append(dst, `,"version":`...)
	dst = strconv.AppendInt(dst, version, 10)
	dst = append(dst, `,"version_type":"external"}}`...)
	return append(dst, '\n')
}

// appendDocument appends a row as a JSON object (keys sorted, so the same
// row always gives the same bytes). Values are what the router produces:
// nil, bool, numbers (int64, float64, json.Number), strings, time.Time,
// []any and map[string]any; others go through encoding/json. A value JSON
// cannot hold (NaN, Inf) is an error for this message.
func appendDocument(dst []byte, row map[string]any) ([]byte, error) {
	return appendValue(dst, row)
}

func appendValue(dst []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case string:
		return event.AppendJSONString(dst, x), nil
	case bool, int64, int, int32, uint64:
		return event.AppendJSON(dst, x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return dst, fmt.Errorf("the value %v cannot be written as JSON", x)
		}
		return event.AppendJSON(dst, x), nil
	case json.Number:
		if !json.Valid([]byte(x)) {
			return dst, fmt.Errorf("invalid number %q", string(x))
		}
		return append(dst, x...), nil
	case time.Time:
		dst = append(dst, '"')
		dst = x.UTC().AppendFormat(dst, time.RFC3339Nano)
		return append(dst, '"'), nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		dst = append(dst, '{')
		var err error
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = event.AppendJSONString(dst, k)
			dst = append(dst, ':')
			if dst, err = appendValue(dst, x[k]); err != nil {
				return dst, err
			}
		}
		return append(dst, '}'), nil
	case []any:
		dst = append(dst, '[')
		var err error
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendValue(dst, e); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("cannot write a %T as JSON: %v", v, err)
	}
	return append(dst, b...), nil
}
