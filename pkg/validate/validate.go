// Package validate states Plume's delivery guarantees once, as reusable
// validators that any test can run against what a target received (modelled
// on CockroachDB's cdctest validators):
//
//   - NoDuplicates: no event (source + id) was delivered twice;
//   - NoLoss and NoExtra: every expected event id arrived, and nothing else;
//   - PerKeyOrder: the changes of each key arrived in source order;
//   - DiffRows: a target table's final state equals the source table's,
//     with PostgresTable, MySQLTable and SQLTable to read either side in one
//     call.
//
// Events come from Kafka records (FromRecord, through pkg/event.Decode) or
// from the http target's test receiver (FromReceiver). Each validator returns
// nil or an error whose text is a readable report: counts first, then the
// first few offending ids, keys or rows.
package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/event"
)

// MaxExamples bounds the examples listed in a report.
const MaxExamples = 10

// Event is one delivered change, whatever carried it.
type Event struct {
	// ID and Source are the CloudEvents id and source: together the
	// event's identity (see Identity).
	ID, Source string
	// Table is the source table, "schema.table" (PostgreSQL) or
	// "database.table" (MySQL).
	Table string
	// Key is the rendered primary key (the CloudEvents subject).
	Key string
	// Op is insert, update, delete, read (snapshot) or truncate.
	Op string
	// Pos orders the changes of one key: the id of a streamed change (its
	// transaction's position, then its index in the transaction; compare
	// with PositionLess). Empty for snapshot reads, which have no stream
	// position; PerKeyOrder skips them.
	Pos string
	// Row is the row image (after, or before for a delete), JSON-decoded
	// with json.Number for numbers; nil when the carrier had no data.
	Row map[string]any
}

// Identity is the event's globally unique identity: source and id.
func (e Event) Identity() string { return e.Source + " " + e.ID }

// keyIdentity names the row an event changes.
func (e Event) keyIdentity() string { return e.Source + " " + e.Table + " " + e.Key }

// FromRecord builds an Event from a Kafka record of a Plume topic, or a
// re-routed copy of one, in either binding mode. ok is false for a
// tombstone (no event).
func FromRecord(rec *kgo.Record) (e Event, ok bool, err error) {
	r, err := event.Decode(rec)
	if err != nil || r == nil {
		return Event{}, false, err
	}
	e, err = FromReceived(r)
	return e, err == nil, err
}

// FromReceived builds an Event from a decoded CloudEvent whose data is a
// change envelope, or (a target's body: row) the row itself.
func FromReceived(r *event.Received) (Event, error) {
	return build(r.ID, r.Source, r.Type, r.Subject, r.Extensions, r.Data)
}

// FromReceiver builds an Event from what the http target's test receiver
// accepted. Table and Row need the receiver's Keep option.
func FromReceiver(re receiver.Event) (Event, error) {
	return build(re.ID, re.Source, re.Type, re.Subject, re.Extensions, re.Data)
}

func build(id, source, typ, subject string, ext map[string]string, data []byte) (Event, error) {
	if id == "" || source == "" {
		return Event{}, fmt.Errorf("event without id or source (id %q, source %q)", id, source)
	}
	e := Event{ID: id, Source: source, Key: subject, Op: strings.TrimPrefix(typ, event.TypePrefix)}
	table := ext["table"]
	if s := ext["schema"]; s != "" {
		table = s + "." + table
	} else if d := ext["database"]; d != "" && table != "" {
		table = d + "." + table
	}
	e.Table = table
	if e.Op != "read" && !strings.HasPrefix(id, "snapshot:") {
		e.Pos = id
	}
	if len(bytes.TrimSpace(data)) == 0 || string(bytes.TrimSpace(data)) == "null" {
		return e, nil
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return Event{}, fmt.Errorf("event %s: data is not a JSON object: %w", id, err)
	}
	// A change envelope has op and source; anything else is a row.
	if _, isEnv := m["op"]; isEnv && m["source"] != nil {
		img := m["after"]
		if e.Op == "delete" {
			img = m["before"]
		}
		e.Row, _ = img.(map[string]any)
	} else {
		e.Row = m
	}
	return e, nil
}

// IDs returns the identities of events, in order.
func IDs(events []Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Identity()
	}
	return out
}

// Dedup returns events without redeliveries: the first delivery of each
// identity, in order. For an at-least-once target, PerKeyOrder applies to
// the first deliveries (a replayed tail naturally goes back in position).
func Dedup(events []Event) []Event {
	seen := make(map[string]bool, len(events))
	out := make([]Event, 0, len(events))
	for _, e := range events {
		if id := e.Identity(); !seen[id] {
			seen[id] = true
			out = append(out, e)
		}
	}
	return out
}

// NoDuplicates fails if an event identity (source + id) occurs more than
// once. The report gives the number of duplicated identities, the number of
// extra deliveries, and the first duplicated identities in order.
func NoDuplicates(events []Event) error {
	count := make(map[string]int, len(events))
	var order []string
	for _, e := range events {
		id := e.Identity()
		if count[id] == 1 {
			order = append(order, id)
		}
		count[id]++
	}
	if len(order) == 0 {
		return nil
	}
	extra := 0
	for _, id := range order {
		extra += count[id] - 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d distinct events delivered more than once (%d extra deliveries in %d events):", len(order), len(count), extra, len(events))
	for i, id := range order {
		if i == MaxExamples {
			fmt.Fprintf(&b, "\n  ... and %d more", len(order)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %s ×%d", id, count[id])
	}
	return errors.New(b.String())
}

// NoLoss fails if an id of want is not in got. The report lists the first
// missing ids in want's order.
func NoLoss(want, got []string) error {
	return missingFrom("missing", want, got)
}

// NoExtra fails if got holds an id that want does not: a delivered event
// that never happened at the source.
func NoExtra(want, got []string) error {
	return missingFrom("unexpected", got, want)
}

func missingFrom(what string, from, in []string) error {
	set := make(map[string]bool, len(in))
	for _, id := range in {
		set[id] = true
	}
	var miss []string
	seen := map[string]bool{}
	distinct := 0
	for _, id := range from {
		if seen[id] {
			continue
		}
		seen[id] = true
		distinct++
		if !set[id] {
			miss = append(miss, id)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s event ids (of %d):", len(miss), what, distinct)
	writeList(&b, miss)
	return errors.New(b.String())
}

// PerKeyOrder fails if, for some key (source, table and key), an event
// arrives whose Pos is not after the previous one's by less. Events
// without Pos (snapshot reads) are skipped. Run it on Dedup(events) for an
// at-least-once target.
func PerKeyOrder(events []Event, less func(a, b string) bool) error {
	last := map[string]string{}
	var bad []string
	n := 0
	for _, e := range events {
		if e.Pos == "" {
			continue
		}
		k := e.keyIdentity()
		if prev, ok := last[k]; ok && !less(prev, e.Pos) {
			n++
			if len(bad) < MaxExamples {
				bad = append(bad, fmt.Sprintf("%s %s: %s after %s", e.Table, e.Key, e.Pos, prev))
			}
		}
		last[k] = e.Pos
	}
	if n == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d events arrived out of order for their key:", n)
	for _, s := range bad {
		b.WriteString("\n  " + s)
	}
	if n > len(bad) {
		fmt.Fprintf(&b, "\n  ... and %d more", n-len(bad))
	}
	return errors.New(b.String())
}

// PositionLess orders Plume's ids of streamed changes, "<position>/<row
// index>": PostgreSQL "lsn:X/Y/i" by LSN, MariaDB "gtid:D-S-N/i" by
// sequence number within a domain, "binlog:file:pos/i" by file and offset,
// then by row index. Ids of other forms compare as strings.
func PositionLess(a, b string) bool {
	pa, ia, oka := splitPos(a)
	pb, ib, okb := splitPos(b)
	if !oka || !okb {
		return a < b
	}
	if c := pa.cmp(pb); c != 0 {
		return c < 0
	}
	return ia < ib
}

// pos is a parsed position: a kind, a string part and a number.
type pos struct {
	kind string
	s    string // GTID domain, binlog file
	n    uint64 // LSN, GTID sequence, binlog offset
}

func (p pos) cmp(q pos) int {
	switch {
	case p.kind != q.kind:
		return strings.Compare(p.kind, q.kind)
	case p.s != q.s:
		return strings.Compare(p.s, q.s)
	case p.n < q.n:
		return -1
	case p.n > q.n:
		return 1
	}
	return 0
}

func splitPos(id string) (p pos, idx int64, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return p, 0, false
	}
	idx, err := strconv.ParseInt(id[i+1:], 10, 64)
	if err != nil {
		return p, 0, false
	}
	s := id[:i]
	switch {
	case strings.HasPrefix(s, "lsn:"):
		hi, lo, found := strings.Cut(strings.TrimPrefix(s, "lsn:"), "/")
		h, err1 := strconv.ParseUint(hi, 16, 32)
		l, err2 := strconv.ParseUint(lo, 16, 32)
		if !found || err1 != nil || err2 != nil {
			return p, 0, false
		}
		return pos{kind: "lsn", n: h<<32 | l}, idx, true
	case strings.HasPrefix(s, "gtid:"):
		parts := strings.Split(strings.TrimPrefix(s, "gtid:"), "-")
		if len(parts) != 3 {
			return p, 0, false
		}
		n, err := strconv.ParseUint(parts[2], 10, 64)
		if err != nil {
			return p, 0, false
		}
		return pos{kind: "gtid", s: parts[0], n: n}, idx, true
	case strings.HasPrefix(s, "binlog:"):
		j := strings.LastIndexByte(s, ':')
		n, err := strconv.ParseUint(s[j+1:], 10, 64)
		if err != nil || j <= len("binlog:") {
			return p, 0, false
		}
		return pos{kind: "binlog", s: s[len("binlog:"):j], n: n}, idx, true
	}
	return p, 0, false
}

// Rows is a table's state: key -> column -> value.
type Rows = map[string]map[string]any

// DiffRows compares a table's final state with the expected one and fails
// with a report of missing rows, extra rows and rows whose values differ
// (column by column). Values are compared by their canonical text (see
// Text): the string "12.50" equals []byte("12.50"), int64(3) equals "3"
// and json.Number("3"); nil equals only nil. A column absent from one side
// differs from any value, NULL included.
func DiffRows(want, got Rows) error {
	var missing, extra, diff []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			missing = append(missing, k)
			continue
		}
		if d := diffRow(w, g); d != "" {
			diff = append(diff, fmt.Sprintf("%s: %s", k, d))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra)+len(diff) == 0 {
		return nil
	}
	sortKeys(missing)
	sortKeys(extra)
	sort.Slice(diff, func(i, j int) bool { return keyLess(diff[i], diff[j]) })
	var b strings.Builder
	fmt.Fprintf(&b, "table differs: want %d rows, got %d: %d missing, %d extra, %d different", len(want), len(got), len(missing), len(extra), len(diff))
	if len(missing) > 0 {
		b.WriteString("\nmissing keys:")
		writeList(&b, missing)
	}
	if len(extra) > 0 {
		b.WriteString("\nextra keys:")
		writeList(&b, extra)
	}
	if len(diff) > 0 {
		b.WriteString("\ndifferent rows (column: got != want):")
		writeList(&b, diff)
	}
	return errors.New(b.String())
}

func diffRow(want, got map[string]any) string {
	cols := map[string]bool{}
	for c := range want {
		cols[c] = true
	}
	for c := range got {
		cols[c] = true
	}
	names := make([]string, 0, len(cols))
	for c := range cols {
		names = append(names, c)
	}
	sort.Strings(names)
	var parts []string
	for _, c := range names {
		w, wok := want[c]
		g, gok := got[c]
		switch {
		case !wok:
			parts = append(parts, fmt.Sprintf("%s: %s != (absent)", c, show(g)))
		case !gok:
			parts = append(parts, fmt.Sprintf("%s: (absent) != %s", c, show(w)))
		case !Equal(w, g):
			parts = append(parts, fmt.Sprintf("%s: %s != %s", c, show(g), show(w)))
		}
	}
	return strings.Join(parts, ", ")
}

func show(v any) string {
	s, ok := Text(v)
	if !ok {
		return "NULL"
	}
	return strconv.Quote(s)
}

// Equal reports whether two values are equal by their canonical text.
func Equal(a, b any) bool {
	sa, oka := Text(a)
	sb, okb := Text(b)
	return oka == okb && sa == sb
}

// Text returns a value's canonical text, ok false for nil (SQL NULL, JSON
// null): strings and []byte as they are, integers in decimal, floats in
// the shortest form that reads back (strconv 'g'), json.Number and
// *big.Int/*big.Rat/*big.Float as their text, bools as true/false, times
// as RFC 3339 with nanoseconds in UTC, maps and slices as JSON.
func Text(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return x, true
	case []byte:
		if x == nil {
			return "", false
		}
		return string(x), true
	case json.Number:
		return string(x), true
	case bool:
		return strconv.FormatBool(x), true
	case int:
		return strconv.FormatInt(int64(x), 10), true
	case int8:
		return strconv.FormatInt(int64(x), 10), true
	case int16:
		return strconv.FormatInt(int64(x), 10), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint:
		return strconv.FormatUint(uint64(x), 10), true
	case uint8:
		return strconv.FormatUint(uint64(x), 10), true
	case uint16:
		return strconv.FormatUint(uint64(x), 10), true
	case uint32:
		return strconv.FormatUint(uint64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case *big.Int:
		return x.String(), true
	case *big.Rat:
		return x.RatString(), true
	case *big.Float:
		return x.Text('g', -1), true
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano), true
	case fmt.Stringer:
		return x.String(), true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v), true
	}
	return string(b), true
}

// writeList appends up to MaxExamples items, one per line.
func writeList(b *strings.Builder, items []string) {
	for i, s := range items {
		if i == MaxExamples {
			fmt.Fprintf(b, "\n  ... and %d more", len(items)-i)
			return
		}
		b.WriteString("\n  " + s)
	}
}

// sortKeys sorts keys numerically when they are integers, else as text.
func sortKeys(keys []string) {
	sort.Slice(keys, func(i, j int) bool { return keyLess(keys[i], keys[j]) })
}

func keyLess(a, b string) bool {
	na, ea := leadingInt(a)
	nb, eb := leadingInt(b)
	if ea && eb && na != nb {
		return na < nb
	}
	return a < b
}

func leadingInt(s string) (int64, bool) {
	end := 0
	for end < len(s) && (s[end] >= '0' && s[end] <= '9' || end == 0 && s[end] == '-') {
		end++
	}
	n, err := strconv.ParseInt(s[:end], 10, 64)
	return n, err == nil
}
