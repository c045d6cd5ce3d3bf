package kafka

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/expr-lang/expr/vm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// contentTypeJSON is the content-type of a row-valued record.
const contentTypeJSON = "application/json"

// recorder turns messages into output records. It is used by one goroutine.
type recorder struct {
	set *settings
	vm  vm.VM
	// checked caches the verdict on each topic topic_expr produced.
	checked map[string]error
}

// record builds the output record of m. An error rejects the message (it is
// dead-lettered): a topic_expr that fails or gives an unusable topic, a row
// that cannot be encoded.
func (r *recorder) record(m *target.Message) (*kgo.Record, error) {
	topic, err := r.topic(m)
	if err != nil {
		return nil, err
	}
	rec := &kgo.Record{Topic: topic}
	if r.set.keyed && m.Subject != "" {
		rec.Key = []byte(m.Subject)
	}
	if !r.set.row {
		// value: event. The CloudEvent exactly as it was read: value and
		// headers byte for byte, in their order.
		rec.Value = m.Value
		if len(m.Headers) > 0 {
			rec.Headers = make([]kgo.RecordHeader, len(m.Headers))
			for i, h := range m.Headers {
				rec.Headers[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
			}
		}
		return rec, nil
	}
	rec.Value, err = rowJSON(m.Row)
	if err != nil {
		return nil, fmt.Errorf("encode the row as JSON: %w", err)
	}
	rec.Headers = rowHeaders(m)
	return rec, nil
}

// topic returns the output topic of m.
func (r *recorder) topic(m *target.Message) (string, error) {
	if r.set.topicExpr == nil {
		return r.set.topic, nil
	}
	out, err := r.vm.Run(r.set.topicExpr, TopicEnv{
		Table: m.Table, Schema: m.Schema, Database: m.Database, Op: m.Op.String(), Route: m.Route,
	})
	if err != nil {
		return "", fmt.Errorf("topic_expr: %w", err)
	}
	topic, _ := out.(string)
	if topic == "" {
		return "", fmt.Errorf("topic_expr gave an empty topic for table %s", qualified(m))
	}
	if r.checked == nil {
		r.checked = map[string]error{}
	}
	verdict, ok := r.checked[topic]
	if !ok {
		verdict = r.set.checkTopic(topic)
		if verdict != nil {
			verdict = fmt.Errorf("topic_expr gave an unusable topic for table %s: %w", qualified(m), verdict)
		}
		r.checked[topic] = verdict
	}
	return topic, verdict
}

func qualified(m *target.Message) string {
	if m.Schema != "" {
		return m.Schema + "." + m.Table
	}
	return m.Database + "." + m.Table
}

// rowJSON encodes a row as compact JSON without HTML escaping. A nil row (a
// truncate has none) is JSON null.
func rowJSON(row map[string]any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(row); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// rowHeaders returns the headers of a row-valued record: binary-mode
// CloudEvents headers with content-type application/json. A binary-mode
// input keeps its headers as they were (content-type replaced); for a
// structured-mode input the attributes are moved from the value into ce_
// headers.
func rowHeaders(m *target.Message) []kgo.RecordHeader {
	binary := false
	for _, h := range m.Headers {
		if strings.HasPrefix(h.Key, "ce_") {
			binary = true
			break
		}
	}
	if binary {
		hs := make([]kgo.RecordHeader, 0, len(m.Headers)+1)
		replaced := false
		for _, h := range m.Headers {
			if strings.EqualFold(h.Key, "content-type") {
				if !replaced {
					hs = append(hs, kgo.RecordHeader{Key: "content-type", Value: []byte(contentTypeJSON)})
					replaced = true
				}
				continue
			}
			hs = append(hs, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		if !replaced {
			hs = append(hs, kgo.RecordHeader{Key: "content-type", Value: []byte(contentTypeJSON)})
		}
		return hs
	}

	// Structured mode (or no CloudEvent at all): take the attributes from
	// the value, falling back to the message's own fields.
	a := event.Received{ID: m.ID, Source: m.Source, Type: event.Type(m.Op), Subject: m.Subject}
	if !m.Time.IsZero() {
		a.Time = event.FormatTime(m.Time)
	}
	in := &kgo.Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Value: m.Value}
	for _, h := range m.Headers {
		in.Headers = append(in.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	if rx, err := event.Decode(in); err == nil && rx != nil && rx.ID != "" {
		a = *rx
	}
	hs := []kgo.RecordHeader{
		{Key: "ce_specversion", Value: []byte("1.0")},
		{Key: "ce_id", Value: []byte(a.ID)},
		{Key: "ce_source", Value: []byte(a.Source)},
		{Key: "ce_type", Value: []byte(a.Type)},
	}
	if a.Subject != "" {
		hs = append(hs, kgo.RecordHeader{Key: "ce_subject", Value: []byte(a.Subject)})
	}
	if a.Time != "" {
		hs = append(hs, kgo.RecordHeader{Key: "ce_time", Value: []byte(a.Time)})
	}
	hs = append(hs, kgo.RecordHeader{Key: "content-type", Value: []byte(contentTypeJSON)})
	// Extensions in Plume's write order, then any others by name.
	order := []string{event.ExtPartitionKey, event.ExtTxID, event.ExtPosition, event.ExtDatabase,
		event.ExtSchema, event.ExtTable, event.ExtTraceParent}
	var rest []string
	for name := range a.Extensions {
		if !slices.Contains(order, name) && name != "datacontenttype" && name != "dataschema" {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	for _, name := range append(order, rest...) {
		if v, ok := a.Extensions[name]; ok {
			hs = append(hs, kgo.RecordHeader{Key: "ce_" + name, Value: []byte(v)})
		}
	}
	return hs
}
