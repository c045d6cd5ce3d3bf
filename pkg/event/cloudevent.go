package event

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TypePrefix is the reverse-DNS prefix of every event type:
// io.plume.row.insert, .update, .delete, .read and .truncate.
const TypePrefix = "io.plume.row."

// ContentTypeStructured is the content-type of a structured-mode record.
const ContentTypeStructured = "application/cloudevents+json; charset=UTF-8"

// Extension attribute names. Each is lowercase alphanumeric and at most 20
// characters, as the CloudEvents spec requires.
const (
	ExtPartitionKey = "partitionkey" // the record key: the rendered primary key
	ExtTxID         = "txid"         // source transaction id
	ExtPosition     = "position"     // source position of the transaction
	ExtDatabase     = "database"
	ExtSchema       = "schema" // PostgreSQL only
	ExtTable        = "table"
	ExtTraceParent  = "traceparent" // W3C distributed tracing extension
)

// Type returns the CloudEvents type of an op.
func Type(o Op) string { return TypePrefix + o.String() }

// SourceURI is the CloudEvents source of a table's events:
// "/plume/<pipeline>/<connector>/<database>". It is stable for the life of the
// pipeline and, with the id, globally unique.
func SourceURI(pipeline string, t *Table) string {
	return "/plume/" + pipeline + "/" + t.Connector + "/" + t.Database
}

// Attributes is the CloudEvents context of a change, in the order Plume
// writes them.
type Attributes struct {
	ID, Source, Type, Subject string
	Time                      time.Time
	Extensions                []Field // string-valued, in write order
}

// AttributesOf computes the CloudEvents attributes of c.
func AttributesOf(pipeline string, c *Change) Attributes {
	a := Attributes{
		ID:      c.ID(),
		Source:  SourceURI(pipeline, c.Table),
		Type:    Type(c.Op),
		Subject: c.Subject(),
		Time:    c.Commit,
	}
	ext := make([]Field, 0, 7)
	if a.Subject != "" {
		ext = append(ext, Field{ExtPartitionKey, a.Subject})
	}
	if c.TxID != "" {
		ext = append(ext, Field{ExtTxID, c.TxID})
	}
	ext = append(ext, Field{ExtPosition, c.Pos}, Field{ExtDatabase, c.Table.Database})
	if c.Table.Schema != "" {
		ext = append(ext, Field{ExtSchema, c.Table.Schema})
	}
	ext = append(ext, Field{ExtTable, c.Table.Name})
	if c.TraceParent != "" {
		ext = append(ext, Field{ExtTraceParent, c.TraceParent})
	}
	a.Extensions = ext
	return a
}

// FormatTime renders a CloudEvents time attribute (RFC 3339, UTC, with
// fractional seconds when present), as sdk-go does.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// CloudEvent builds and validates the sdk-go event of c. It is the reference
// form: the Kafka encoder below writes the same attributes without going
// through sdk-go on the hot path, and tests check the two agree.
func CloudEvent(pipeline string, c *Change) (cloudevents.Event, error) {
	a := AttributesOf(pipeline, c)
	e := cloudevents.New()
	e.SetID(a.ID)
	e.SetSource(a.Source)
	e.SetType(a.Type)
	if a.Subject != "" {
		e.SetSubject(a.Subject)
	}
	e.SetTime(a.Time)
	for _, x := range a.Extensions {
		e.SetExtension(x.Name, x.Value)
	}
	if err := e.SetData("application/json", json.RawMessage(AppendEnvelope(nil, pipeline, c))); err != nil {
		return e, err
	}
	return e, e.Validate()
}

// Encoder turns changes into Kafka records per the CloudEvents Kafka
// protocol binding.
type Encoder struct {
	Pipeline string
	// Structured selects structured mode (the whole event as JSON in the
	// value). The default is binary mode: attributes in ce_ headers, the
	// data in the value.
	Structured bool
	// Context, when set, makes binary-mode records recyclable: each record
	// is produced with (a context wrapping) Context, and Recycle takes it
	// back once Kafka is done with it. Nil: every record is new. Set it
	// before the first Record and do not change it.
	Context context.Context

	sizeHint int        // buffer size for the next record (grows to fit)
	pool     *sync.Pool // of *pooledRecord, made with Context
	tables   map[*Table]*tableCache
}

// tableCache holds the parts of a binary-mode record that are the same for
// every change of one table (colKeys, source) or of one table and source
// transaction (the rest), rendered once instead of for every row.
//
// Invariant: every cached byte is what the uncached renderer would write
// for the change being encoded. It holds because
//   - the cache is per *Table, and a Table is never modified once a change
//     referencing it was emitted: connectors build a new Table on a schema
//     change (capture's topic cache relies on the same);
//   - the transaction parts are rendered from, and only reused while the
//     change matches, exactly the fields they depend on: commit instant,
//     TxID, Pos and the snapshot flag (see appendSourceHead, appendTail);
//   - the pipeline name is fixed for the Encoder's life.
//
// TestEnvelopeCacheMatchesUncached checks the bytes over changes that hit
// and miss the cache.
type tableCache struct {
	colKeys   [][]byte // per column, `"name":` JSON-escaped
	source    []byte   // ce_source, SourceURI
	fieldKeys []fieldKey

	txnValid bool
	commit   time.Time
	txID     string
	pos      string
	snapshot bool
	time     []byte // ce_time: the commit time in RFC 3339
	srcHead  []byte // appendSourceHead
	tail     []byte // appendTail
}

// fieldKey is a source field's rendered key (appendFieldKey). Connectors
// emit the same field names, in the same order, for every change of a
// table, so fieldKeys[i] is almost always the one for field i; the name is
// compared to make sure.
type fieldKey struct {
	name string
	key  []byte
}

func (tc *tableCache) fieldKey(i int, name string) []byte {
	if i < len(tc.fieldKeys) && tc.fieldKeys[i].name == name {
		return tc.fieldKeys[i].key
	}
	k := appendFieldKey(nil, name)
	if i <= len(tc.fieldKeys) && i < 32 {
		tc.fieldKeys = append(tc.fieldKeys[:i], fieldKey{name, k})
	}
	return k
}

// maxCachedTables bounds Encoder.tables: past it the cache starts over,
// so tables replaced by schema changes do not accumulate.
const maxCachedTables = 1024

// cacheFor returns the cache for c's table, prepared for c's transaction.
func (e *Encoder) cacheFor(c *Change) *tableCache {
	t := c.Table
	tc := e.tables[t]
	if tc == nil {
		if e.tables == nil || len(e.tables) >= maxCachedTables {
			e.tables = make(map[*Table]*tableCache)
		}
		tc = &tableCache{source: []byte(SourceURI(e.Pipeline, t))}
		tc.colKeys = make([][]byte, len(t.Columns))
		for i, col := range t.Columns {
			tc.colKeys[i] = append(AppendJSONString(nil, col.Name), ':')
		}
		e.tables[t] = tc
	}
	if tc.txnValid && c.Commit.Equal(tc.commit) && c.TxID == tc.txID && c.Pos == tc.pos && c.Snapshot == tc.snapshot {
		return tc
	}
	tc.txnValid, tc.commit, tc.txID, tc.pos, tc.snapshot = true, c.Commit, c.TxID, c.Pos, c.Snapshot
	tc.time = c.Commit.UTC().AppendFormat(tc.time[:0], time.RFC3339Nano)
	tc.srcHead = appendSourceHead(tc.srcHead[:0], e.Pipeline, c)
	tc.tail = appendTail(tc.tail[:0], c)
	return tc
}

// pooledRecord is a binary-mode record with its own header array and
// buffer, reused through its encoder's pool (Encoder.Context, Recycle).
// Its Record.Context is &ctx, which is how Recycle recognises it.
type pooledRecord struct {
	rec kgo.Record
	ctx recordContext
	hdr [14]kgo.RecordHeader
	buf []byte
}

// recordContext is the produce context of a pooled record: the encoder's
// Context (so cancelling that still cancels the record) plus the way back
// to the record's storage. It is never modified after the record is
// made: franz-go may read a record's context from its own goroutines
// (waiting for an unknown topic, for example) after the promise ran.
type recordContext struct {
	context.Context
	p    *pooledRecord
	pool *sync.Pool
}

// Recycle returns a record made by Record to its encoder's pool. Call it
// only once nothing references the record or its key, value or headers
// any more: in capture, from the record's produce promise after a
// successful produce (franz-go has then finished with it). Records that
// did not come from a pool are ignored. Safe to call concurrently with
// Record.
func (e *Encoder) Recycle(r *kgo.Record) {
	rc, ok := r.Context.(*recordContext)
	if !ok || &rc.p.rec != r {
		return
	}
	p := rc.p
	p.rec = kgo.Record{}
	clear(p.hdr[:])
	rc.pool.Put(p)
}

func (e *Encoder) newPool() *sync.Pool {
	pool := new(sync.Pool)
	ctx := e.Context
	pool.New = func() any {
		p := new(pooledRecord)
		p.ctx = recordContext{Context: ctx, p: p, pool: pool}
		return p
	}
	return pool
}

// Record encodes c as a Kafka record for topic. The key is the partitionkey
// (nil for a truncate, which has no key).
//
// Binary mode is the hot path of capture: the attribute values and the
// envelope are appended to one buffer that the key, the header values and
// the value slice into, so a record costs a handful of allocations. The
// output is the same as building it from AttributesOf (tests check).
func (e *Encoder) Record(topic string, c *Change) *kgo.Record {
	if e.Structured {
		a := AttributesOf(e.Pipeline, c)
		r := &kgo.Record{Topic: topic}
		if a.Subject != "" {
			r.Key = []byte(a.Subject)
		}
		data := AppendEnvelope(make([]byte, 0, 512), e.Pipeline, c)
		r.Headers = []kgo.RecordHeader{{Key: "content-type", Value: contentTypeStructured}}
		r.Value = appendStructured(make([]byte, 0, len(data)+256), a, data)
		return r
	}
	t := c.Table
	tc := e.cacheFor(c)
	var pr *pooledRecord
	var b []byte
	if e.Context != nil {
		if e.pool == nil {
			e.pool = e.newPool()
		}
		pr = e.pool.Get().(*pooledRecord)
		if cap(pr.buf) >= e.sizeHint {
			b = pr.buf[:0]
		}
	}
	if b == nil {
		b = make([]byte, 0, e.sizeHint)
	}
	var off [11]int // end offsets of the attribute values in b
	b = c.AppendSubject(b)
	off[0] = len(b)
	b = c.appendID(b, b[:off[0]])
	off[1] = len(b)
	b = append(b, tc.source...)
	off[2] = len(b)
	b = append(b, tc.time...)
	off[3] = len(b)
	b = append(b, c.TxID...)
	off[4] = len(b)
	b = append(b, c.Pos...)
	off[5] = len(b)
	b = append(b, t.Database...)
	off[6] = len(b)
	b = append(b, t.Schema...)
	off[7] = len(b)
	b = append(b, t.Name...)
	off[8] = len(b)
	b = append(b, c.TraceParent...)
	off[9] = len(b)
	b = appendEnvelope(b, e.Pipeline, c, tc)
	off[10] = len(b)
	if n := len(b) + len(b)/8; n > e.sizeHint {
		e.sizeHint = n // the next record of this shape fits without growing
	}
	at := func(i int) []byte {
		lo := 0
		if i > 0 {
			lo = off[i-1]
		}
		return b[lo:off[i]:off[i]]
	}
	subject := at(0)
	var r *kgo.Record
	var h []kgo.RecordHeader
	if pr != nil {
		pr.buf = b
		r = &pr.rec
		*r = kgo.Record{Topic: topic, Value: at(10), Context: &pr.ctx}
		h = pr.hdr[:0]
	} else {
		r = &kgo.Record{Topic: topic, Value: at(10)}
		h = make([]kgo.RecordHeader, 0, 14)
	}
	h = append(h,
		kgo.RecordHeader{Key: "ce_specversion", Value: specVersion},
		kgo.RecordHeader{Key: "ce_id", Value: at(1)},
		kgo.RecordHeader{Key: "ce_source", Value: at(2)},
		kgo.RecordHeader{Key: "ce_type", Value: typeBytes(c.Op)},
	)
	if len(subject) > 0 {
		r.Key = subject
		h = append(h, kgo.RecordHeader{Key: "ce_subject", Value: subject})
	}
	h = append(h,
		kgo.RecordHeader{Key: "ce_time", Value: at(3)},
		kgo.RecordHeader{Key: "content-type", Value: contentTypeJSON},
	)
	if len(subject) > 0 {
		h = append(h, kgo.RecordHeader{Key: "ce_" + ExtPartitionKey, Value: subject})
	}
	if c.TxID != "" {
		h = append(h, kgo.RecordHeader{Key: "ce_" + ExtTxID, Value: at(4)})
	}
	h = append(h, kgo.RecordHeader{Key: "ce_" + ExtPosition, Value: at(5)}, kgo.RecordHeader{Key: "ce_" + ExtDatabase, Value: at(6)})
	if t.Schema != "" {
		h = append(h, kgo.RecordHeader{Key: "ce_" + ExtSchema, Value: at(7)})
	}
	h = append(h, kgo.RecordHeader{Key: "ce_" + ExtTable, Value: at(8)})
	if c.TraceParent != "" {
		h = append(h, kgo.RecordHeader{Key: "ce_" + ExtTraceParent, Value: at(9)})
	}
	r.Headers = h
	return r
}

// Shared header values. Records are never modified after encoding, so
// they may share these.
var (
	specVersion           = []byte("1.0")
	contentTypeJSON       = []byte("application/json")
	contentTypeStructured = []byte(ContentTypeStructured)
	opTypes               [256][]byte // by Op (a byte): an index, not a map lookup, per record
)

func init() {
	for _, o := range []Op{OpCreate, OpUpdate, OpDelete, OpRead, OpTruncate} {
		opTypes[o] = []byte(Type(o))
	}
}

func typeBytes(o Op) []byte {
	if b := opTypes[o]; b != nil {
		return b
	}
	return []byte(Type(o))
}

// Tombstone returns the tombstone that follows a delete: same key, null
// value, no headers, so log compaction drops the key.
func Tombstone(topic string, key []byte) *kgo.Record {
	return &kgo.Record{Topic: topic, Key: key}
}

func appendStructured(dst []byte, a Attributes, data []byte) []byte {
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = AppendJSONString(dst, a.ID)
	dst = append(dst, `,"source":`...)
	dst = AppendJSONString(dst, a.Source)
	dst = append(dst, `,"type":`...)
	dst = AppendJSONString(dst, a.Type)
	if a.Subject != "" {
		dst = append(dst, `,"subject":`...)
		dst = AppendJSONString(dst, a.Subject)
	}
	dst = append(dst, `,"time":`...)
	dst = AppendJSONString(dst, FormatTime(a.Time))
	dst = append(dst, `,"datacontenttype":"application/json"`...)
	for _, x := range a.Extensions {
		dst = append(dst, ',')
		dst = AppendJSONString(dst, x.Name)
		dst = append(dst, ':')
		dst = AppendJSONString(dst, x.Value.(string))
	}
	dst = append(dst, `,"data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}

// Received is a change event read back from Kafka, in either binding mode.
type Received struct {
	ID, Source, Type, Subject, Time string
	Extensions                      map[string]string
	Data                            []byte // the envelope JSON
}

// Op returns the event's op from its type.
func (r *Received) Op() (Op, bool) {
	return ParseOp(strings.TrimPrefix(r.Type, TypePrefix))
}

// Decode reads a CloudEvent from a Kafka record. It returns (nil, nil) for a
// tombstone (null value, no CloudEvents headers).
func Decode(rec *kgo.Record) (*Received, error) {
	var ct string
	for _, h := range rec.Headers {
		if h.Key == "content-type" {
			ct = string(h.Value)
			break
		}
	}
	if strings.HasPrefix(ct, "application/cloudevents+json") {
		return decodeStructured(rec.Value)
	}
	r := &Received{Extensions: make(map[string]string, 8), Data: rec.Value}
	seen := false
	for _, h := range rec.Headers {
		name, ok := strings.CutPrefix(h.Key, "ce_")
		if !ok {
			continue
		}
		seen = true
		v := string(h.Value)
		switch name {
		case "id":
			r.ID = v
		case "source":
			r.Source = v
		case "type":
			r.Type = v
		case "subject":
			r.Subject = v
		case "time":
			r.Time = v
		case "specversion":
			if v != "1.0" {
				return nil, fmt.Errorf("unsupported CloudEvents specversion %q", v)
			}
		default:
			r.Extensions[name] = v
		}
	}
	if !seen {
		if rec.Value == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("record at %s/%d@%d has no CloudEvents headers", rec.Topic, rec.Partition, rec.Offset)
	}
	return r, nil
}

func decodeStructured(v []byte) (*Received, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("structured CloudEvent: %w", err)
	}
	r := &Received{Extensions: make(map[string]string, 8)}
	for k, raw := range m {
		if k == "data" {
			r.Data = raw
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("structured CloudEvent attribute %q: %w", k, err)
		}
		switch k {
		case "id":
			r.ID = s
		case "source":
			r.Source = s
		case "type":
			r.Type = s
		case "subject":
			r.Subject = s
		case "time":
			r.Time = s
		case "specversion", "datacontenttype":
		default:
			r.Extensions[k] = s
		}
	}
	return r, nil
}
