package http

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	nethttp "net/http"
	"sort"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// Content types.
const (
	contentTypeJSON       = "application/json"
	contentTypeStructured = "application/cloudevents+json; charset=UTF-8"
	// No parameters: sdk-go recognises batches by the exact media type.
	contentTypeBatch = "application/cloudevents-batch+json"
)

// ce is one outgoing CloudEvent.
type ce struct {
	id, source, typ, subject, time string
	ext                            []extension // sorted by name
	data                           []byte      // the data, JSON unless dataBinary
	dataBinary                     bool        // data is not JSON: data_base64 in JSON forms
}

type extension struct{ name, value string }

// reservedAttrs are never written as extensions.
var reservedAttrs = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "subject": true, "time": true,
	"datacontenttype": true, "data": true, "data_base64": true,
}

// eventOf builds the CloudEvent to send for m: the record's own attributes
// (binary or structured Kafka mode) and, as data, either its data or the
// route's row. A message without a record (no value, no headers) is built
// from the message's fields.
func eventOf(m *target.Message, body string) (*ce, error) {
	var rec *event.Received
	if m.Value != nil || len(m.Headers) > 0 {
		// target.Header is kgo.RecordHeader: the headers are read, not copied.
		kr := &kgo.Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Value: m.Value, Headers: m.Headers}
		r, err := event.Decode(kr)
		if err != nil && m.ID == "" {
			return nil, fmt.Errorf("not a CloudEvent: %w", err)
		}
		if err == nil {
			rec = r
		}
	}
	e := &ce{}
	if rec != nil {
		e.id, e.source, e.typ, e.subject, e.time = rec.ID, rec.Source, rec.Type, rec.Subject, rec.Time
		for k, v := range rec.Extensions {
			if !reservedAttrs[k] {
				e.ext = append(e.ext, extension{k, v})
			}
		}
		sort.Slice(e.ext, func(i, j int) bool { return e.ext[i].name < e.ext[j].name })
		e.data = rec.Data
	} else {
		// No record: the message's own fields.
		e.id, e.source, e.subject = m.ID, m.Source, m.Subject
		if m.Op != 0 {
			e.typ = event.Type(m.Op)
		}
		if !m.Time.IsZero() {
			e.time = event.FormatTime(m.Time)
		}
		add := func(name, v string) {
			if v != "" {
				e.ext = append(e.ext, extension{name, v})
			}
		}
		add(event.ExtDatabase, m.Database)
		add(event.ExtPartitionKey, m.Subject)
		add(event.ExtPosition, m.Position)
		add(event.ExtSchema, m.Schema)
		add(event.ExtTable, m.Table)
		e.data = m.Value
	}
	// The message's id and source are the router's reading of the same
	// record; they fill gaps only.
	if e.id == "" {
		e.id = m.ID
	}
	if e.source == "" {
		e.source = m.Source
	}
	switch {
	case e.id == "":
		return nil, errors.New("not a valid CloudEvent: no id")
	case e.source == "":
		return nil, errors.New("not a valid CloudEvent: no source")
	case e.typ == "":
		return nil, errors.New("not a valid CloudEvent: no type")
	}
	for _, x := range e.ext {
		if !validExtName(x.name) {
			return nil, fmt.Errorf("not a valid CloudEvent: extension name %q", x.name)
		}
	}
	if body == BodyRow {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(m.Row); err != nil {
			return nil, fmt.Errorf("row is not JSON: %w", err)
		}
		e.data = bytes.TrimRight(buf.Bytes(), "\n")
	} else if e.data == nil {
		e.data = []byte("null")
	}
	e.dataBinary = !json.Valid(e.data)
	return e, nil
}

// validExtName: lowercase letters and digits, as CloudEvents requires (and
// so always a valid header name).
func validExtName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// binaryHeaders sets the HTTP binding's binary-mode headers of e on h.
func binaryHeaders(h nethttp.Header, e *ce) {
	h["Ce-Specversion"] = []string{"1.0"}
	h["Ce-Id"] = []string{headerValue(e.id)}
	h["Ce-Source"] = []string{headerValue(e.source)}
	h["Ce-Type"] = []string{headerValue(e.typ)}
	if e.subject != "" {
		h["Ce-Subject"] = []string{headerValue(e.subject)}
	}
	if e.time != "" {
		h["Ce-Time"] = []string{headerValue(e.time)}
	}
	for _, x := range e.ext {
		// The name is lowercase ASCII: its canonical header form is "Ce-"
		// and the name with its first letter upper-cased.
		c := x.name[0]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		h["Ce-"+string(rune(c))+x.name[1:]] = []string{headerValue(x.value)}
	}
	if e.dataBinary {
		h["Content-Type"] = []string{"application/octet-stream"}
	} else {
		h["Content-Type"] = []string{contentTypeJSON}
	}
}

// headerValue percent-encodes a binary-mode header value as the CloudEvents
// HTTP binding (1.0.2, section 3.1.3.2) requires: space, '"', '%' and every
// byte outside printable ASCII. Plume's usual values (ids, sources, simple
// keys) need no encoding and pass unchanged.
func headerValue(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if needsPct(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hexd = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsPct(c) {
			b = append(b, '%', hexd[c>>4], hexd[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func needsPct(c byte) bool { return c <= ' ' || c >= 0x7f || c == '"' || c == '%' }

// appendStructured appends e in the JSON event format.
func appendStructured(dst []byte, e *ce) []byte {
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = event.AppendJSONString(dst, e.id)
	dst = append(dst, `,"source":`...)
	dst = event.AppendJSONString(dst, e.source)
	dst = append(dst, `,"type":`...)
	dst = event.AppendJSONString(dst, e.typ)
	if e.subject != "" {
		dst = append(dst, `,"subject":`...)
		dst = event.AppendJSONString(dst, e.subject)
	}
	if e.time != "" {
		dst = append(dst, `,"time":`...)
		dst = event.AppendJSONString(dst, e.time)
	}
	for _, x := range e.ext {
		dst = append(dst, ',')
		dst = event.AppendJSONString(dst, x.name)
		dst = append(dst, ':')
		dst = event.AppendJSONString(dst, x.value)
	}
	if e.dataBinary {
		dst = append(dst, `,"datacontenttype":"application/octet-stream","data_base64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, e.data)
		return append(dst, `"}`...)
	}
	dst = append(dst, `,"datacontenttype":"application/json","data":`...)
	dst = append(dst, e.data...)
	return append(dst, '}')
}

// maxPlainKey is the longest Idempotency-Key sent as plain source/id.
const maxPlainKey = 255

// idempotencyKey is source + "/" + id when that is at most 255 bytes of
// printable ASCII without space, '"' or '\\'; otherwise "sha256:" and the
// hex SHA-256 of source + "/" + id. Either way it is a pure function of the
// event, so a replay carries the same key.
func idempotencyKey(source, id string) string {
	k := source + "/" + id
	if len(k) <= maxPlainKey && plainKey(k) {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func plainKey(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// batchIdempotencyKey derives a batch request's key from its first and last
// events and its size: "batch-sha256:" and the hex SHA-256 of
// "<first source>/<first id>\n<last source>/<last id>\n<count>".
func batchIdempotencyKey(first, last *ce, n int) string {
	h := sha256.New()
	h.Write([]byte(first.source + "/" + first.id + "\n" + last.source + "/" + last.id + "\n" + strconv.Itoa(n)))
	return "batch-sha256:" + hex.EncodeToString(h.Sum(nil))
}
