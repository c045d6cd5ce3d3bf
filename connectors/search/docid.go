package search

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// maxIDBytes is the longest _id Elasticsearch and OpenSearch accept; a
// longer one fails the whole bulk request, so it is checked beforehand.
const maxIDBytes = 512

// keyPart is one column of a rendered key: its name and unescaped value.
type keyPart struct{ name, value string }

// parseSubject splits a rendered key ("id=42", "a=1,b=x\,y") into its
// columns, undoing the escapes of event.Change.Subject.
func parseSubject(subject string) ([]keyPart, error) {
	var parts []keyPart
	var cur strings.Builder
	var name string
	inValue := false
	for i := 0; i < len(subject); i++ {
		c := subject[i]
		switch {
		case c == '\\' && i+1 < len(subject):
			i++
			cur.WriteByte(subject[i])
		case c == '=' && !inValue:
			name, inValue = cur.String(), true
			cur.Reset()
		case c == ',' && inValue:
			parts = append(parts, keyPart{name, cur.String()})
			cur.Reset()
			inValue = false
		default:
			cur.WriteByte(c)
		}
	}
	if !inValue {
		return nil, fmt.Errorf("not a rendered key: %q", subject)
	}
	return append(parts, keyPart{name, cur.String()}), nil
}

// docID renders the document _id of a message from its subject (the
// rendered primary key): a single-column key gives the value's text
// ("id=42" -> "42"), a composite key the subject itself ("a=1,b=x").
func docID(subject string) (string, error) {
	if subject == "" {
		return "", errors.New("the message has no key (subject)")
	}
	parts, err := parseSubject(subject)
	if err != nil {
		return "", err
	}
	id := subject
	if len(parts) == 1 {
		id = parts[0].value
	}
	if id == "" {
		return "", errors.New("the key renders as an empty _id")
	}
	if len(id) > maxIDBytes {
		return "", fmt.Errorf("the _id is %d bytes long (Elasticsearch and OpenSearch accept at most %d)", len(id), maxIDBytes)
	}
	if !utf8.ValidString(id) {
		return "", errors.New("the _id is not valid UTF-8")
	}
	return id, nil
}

// renderSubject renders key columns the way event.Change.Subject does.
func renderSubject(parts []keyPart) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.name)
		b.WriteByte('=')
		for j := 0; j < len(p.value); j++ {
			switch p.value[j] {
			case ',', '=', '\\':
				b.WriteByte('\\')
			}
			b.WriteByte(p.value[j])
		}
	}
	return b.String()
}

// oldSubject returns the subject the row had before an update that changed
// its primary key, or "" when the key did not change (or the event carries
// no before image with the key columns). The before image is read from the
// record's change envelope: the row has moved, and the document under the
// old _id must go.
func oldSubject(m *target.Message) (string, error) {
	if m.Op != event.OpUpdate || m.Subject == "" || len(m.Value) == 0 {
		return "", nil
	}
	structured := isStructured(m)
	if !structured && bytes.HasPrefix(m.Value, []byte(`{"before":null`)) {
		return "", nil // the common case without a before image: no parsing
	}
	data := m.Value
	if structured {
		rec := &kgo.Record{Value: m.Value}
		for _, h := range m.Headers {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		ev, err := event.Decode(rec)
		if err != nil || ev == nil {
			return "", fmt.Errorf("reading the before image: %v", err)
		}
		data = ev.Data
	}
	before, err := beforeImage(data)
	if err != nil {
		return "", fmt.Errorf("reading the before image: %w", err)
	}
	if before == nil {
		return "", nil
	}
	parts, err := parseSubject(m.Subject)
	if err != nil {
		return "", err
	}
	changed := false
	for i, p := range parts {
		raw, ok := before[p.name]
		if !ok {
			return "", nil // a before image without the key columns
		}
		v := keyText(raw)
		if v != p.value {
			changed = true
		}
		parts[i].value = v
	}
	if !changed {
		return "", nil
	}
	return renderSubject(parts), nil
}

// beforeImage reads the envelope's "before" member (its first, as Plume
// writes it) and stops there.
func beforeImage(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("the change envelope is not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if tok == "before" {
			var before map[string]json.RawMessage
			if err := dec.Decode(&before); err != nil {
				return nil, err
			}
			return before, nil
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// keyText is event.KeyText of a value given as its JSON form in the
// envelope: a string's text, anything else its JSON text.
func keyText(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(raw)
}

func isStructured(m *target.Message) bool {
	for _, h := range m.Headers {
		if h.Key == "content-type" {
			return strings.HasPrefix(string(h.Value), "application/cloudevents+json")
		}
	}
	return false
}
