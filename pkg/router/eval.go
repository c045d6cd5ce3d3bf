package router

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/expr-lang/expr/vm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

// TargetRoutes evaluates the routes of one target. It reuses its expression
// VM, environment and buffers from record to record, so it is not safe for
// concurrent use: each goroutine gets its own from Router.ForTarget.
type TargetRoutes struct {
	target string
	routes []*Route

	vm  vm.VM
	env Env

	// Per-record state, reset by Eval.
	op        event.Op
	data      []byte
	have      needs // the parts of the event data decoded so far
	unchanged []string
	results   []result
	parser    envParser
}

// result is a matched route and the row it produced, before drop and mask.
type result struct {
	route *Route
	row   map[string]any
	// owned: row belongs to this result alone (a fresh map literal);
	// otherwise it is shared (the row image, or a map taken from the event)
	// and is copied before drop and mask touch it.
	owned bool
	image bool // row is the row image
}

// Target returns the target's name.
func (t *TargetRoutes) Target() string { return t.target }

// Routes returns the routes that send to the target, in configuration order.
func (t *TargetRoutes) Routes() []*Route { return append([]*Route(nil), t.routes...) }

// Eval routes one record for the target: it returns one message per route
// that matched, in route order.
//
//   - A tombstone (or any record when no route sends to the target) gives
//     nil, nil.
//   - A record that is not a readable Plume CloudEvent gives nil and a
//     *DecodeError; dead-letter it.
//   - A route whose `when` or `map` fails at run time gives an *EvalError
//     for that route (several are joined with errors.Join; see EvalErrors)
//     alongside the messages of the routes that worked; dead-letter the
//     record once per EvalError and deliver the messages.
//
// The messages' Row maps are their own: no two messages share one, and the
// router keeps no reference to them. Value and Headers are the record's (not
// copied, and not masked).
func (t *TargetRoutes) Eval(rec *kgo.Record) ([]target.Message, error) {
	return t.AppendEval(nil, rec)
}

// AppendEval is Eval appending the messages to dst and returning the
// extended slice (dst itself when there are none): the delivery layer
// appends to its batch without a slice per record.
func (t *TargetRoutes) AppendEval(dst []target.Message, rec *kgo.Record) ([]target.Message, error) {
	if len(t.routes) == 0 {
		return dst, nil
	}
	ev, err := event.Decode(rec)
	if err != nil {
		return dst, t.decodeError(rec, err)
	}
	if ev == nil {
		return dst, nil
	}
	op, ok := ev.Op()
	if !ok {
		return dst, t.decodeError(rec, fmt.Errorf("unknown CloudEvents type %q", ev.Type))
	}
	var ts time.Time
	if ev.Time != "" {
		if ts, err = time.Parse(time.RFC3339Nano, ev.Time); err != nil {
			return dst, t.decodeError(rec, fmt.Errorf("CloudEvents time: %w", err))
		}
	}
	t.begin(ev, op, ts)
	defer t.end()

	var errs []error
	for _, r := range t.routes {
		if r.when != nil {
			if r.whenNeeds != 0 {
				if err := t.decodeData(r.whenNeeds); err != nil {
					return dst, t.decodeError(rec, err)
				}
			}
			out, err := t.vm.Run(r.when, &t.env)
			if err == nil {
				if _, isBool := out.(bool); !isBool {
					err = fmt.Errorf("when: got %s, not a bool", typeName(out))
				}
			} else {
				err = fmt.Errorf("when: %w", err)
			}
			if err != nil {
				errs = append(errs, &EvalError{Route: r.Name, Target: t.target, Err: err})
				continue
			}
			if !out.(bool) {
				continue
			}
		}
		if n := r.mapNeeds; r.mapping == nil || n != 0 {
			if r.mapping == nil {
				n = needRow
			}
			if err := t.decodeData(n); err != nil {
				return dst, t.decodeError(rec, err)
			}
		}
		res := result{route: r}
		if r.mapping == nil {
			res.row, res.image = t.env.Row, true
		} else {
			if err := t.checkColumns(r); err != nil {
				errs = append(errs, &EvalError{Route: r.Name, Target: t.target, Err: fmt.Errorf("map: %w", err)})
				continue
			}
			out, err := t.vm.Run(r.mapping, &t.env)
			if err != nil {
				errs = append(errs, &EvalError{Route: r.Name, Target: t.target, Err: fmt.Errorf("map: %w", err)})
				continue
			}
			m, isMap := out.(map[string]any)
			if !isMap || m == nil {
				errs = append(errs, &EvalError{Route: r.Name, Target: t.target, Err: fmt.Errorf("map: got %s, not a map", typeName(out))})
				continue
			}
			res.row, res.owned = m, r.mapFresh
		}
		t.results = append(t.results, res)
	}

	msgs := dst
	if len(t.results) > 0 {
		msgs = t.messages(dst, rec, ev, op, ts)
	}
	switch len(errs) {
	case 0:
		return msgs, nil
	case 1:
		return msgs, errs[0]
	}
	return msgs, errors.Join(errs...)
}

func (t *TargetRoutes) decodeError(rec *kgo.Record, err error) error {
	return &DecodeError{Target: t.target, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Err: err}
}

// begin sets the environment's attribute fields for a record.
func (t *TargetRoutes) begin(ev *event.Received, op event.Op, ts time.Time) {
	t.op = op
	t.data = ev.Data
	e := &t.env
	e.Op = op.String()
	// Attributes that repeat from record to record keep the previous
	// record's string when equal, so that the messages of a batch share
	// one copy instead of each holding its own (about 130 bytes each).
	e.Database = same(e.Database, ev.Extensions[event.ExtDatabase])
	e.Schema = same(e.Schema, ev.Extensions[event.ExtSchema])
	e.Table = same(e.Table, ev.Extensions[event.ExtTable])
	e.TS = ts
	e.ID = ev.ID
	e.Source = same(e.Source, ev.Source)
	e.Type = same(e.Type, ev.Type)
	e.Subject = ev.Subject
	e.Position = same(e.Position, ev.Extensions[event.ExtPosition])
	e.TxID = same(e.TxID, ev.Extensions[event.ExtTxID])
}

// same returns prev if it equals s, else s.
func same(prev, s string) string {
	if prev == s {
		return prev
	}
	return s
}

// end drops the record's references so that the evaluator holds no event
// data between records.
func (t *TargetRoutes) end() {
	e := &t.env
	e.Before, e.After, e.Row, e.Key = nil, nil, nil, nil
	t.data = nil
	t.have = 0
	t.unchanged = nil
	clear(t.results)
	t.results = t.results[:0]
}

// envelope is the part of the Debezium envelope the router reads. The
// envParser decodes it as encoding/json's Decoder with UseNumber would,
// followed by convertNumbers.
type envelope struct {
	Before    map[string]any `json:"before"`
	After     map[string]any `json:"after"`
	Unchanged []string       `json:"unchanged"`
}

// decodeData makes the parts of the event data in n available in the
// environment, decoding from the envelope those not decoded yet for this
// record. Usually the envelope is parsed once per record; it is parsed again
// only for an image that an earlier route did not need.
func (t *TargetRoutes) decodeData(n needs) error {
	if n&needRow != 0 {
		if t.op == event.OpDelete {
			n |= needBefore
		} else {
			n |= needAfter
		}
	}
	e := &t.env
	if missing := n &^ t.have & needImages; missing != 0 {
		env, err := t.parser.envelope(t.data, missing)
		if err != nil {
			return fmt.Errorf("envelope: %w", err)
		}
		if missing&needBefore != 0 {
			e.Before = env.Before
		}
		if missing&needAfter != 0 {
			e.After = env.After
		}
		if missing&needUnchanged != 0 {
			t.unchanged = env.Unchanged
		}
		t.have |= missing
		if t.op == event.OpDelete {
			e.Row = e.Before
		} else {
			e.Row = e.After
		}
	}
	if n&needKey != 0 && t.have&needKey == 0 {
		e.Key = parseKey(e.Subject, e.Row)
		t.have |= needKey
	}
	return nil
}

// parseKey builds the key map from a subject "a=1,b=x" (values escaped as in
// event.Change.Subject). A key column present in the row image takes its
// typed value from there; otherwise its value is the subject's text.
func parseKey(subject string, row map[string]any) map[string]any {
	if subject == "" {
		return nil
	}
	key := make(map[string]any, 2)
	var val strings.Builder
	for i := 0; i < len(subject); {
		eq := strings.IndexByte(subject[i:], '=')
		if eq < 0 {
			break // not a rendered key
		}
		name := subject[i : i+eq]
		i += eq + 1
		val.Reset()
		for ; i < len(subject); i++ {
			c := subject[i]
			if c == '\\' && i+1 < len(subject) {
				i++
				val.WriteByte(subject[i])
				continue
			}
			if c == ',' {
				break
			}
			val.WriteByte(c)
		}
		i++ // the comma
		if v, ok := row[name]; ok {
			key[name] = v
		} else {
			key[name] = val.String()
		}
	}
	return key
}

// changed is the changed() expression function.
func (t *TargetRoutes) changed(col string) bool {
	e := &t.env
	switch t.op {
	case event.OpUpdate:
		for _, u := range t.unchanged {
			if u == col {
				return false // unchanged TOAST value
			}
		}
		b, inBefore := e.Before[col]
		a, inAfter := e.After[col]
		if inBefore && inAfter {
			return !equalValues(b, a)
		}
		// Without a before image (PostgreSQL without REPLICA IDENTITY
		// FULL) the change cannot be ruled out.
		return inBefore || inAfter
	case event.OpCreate, event.OpRead:
		_, ok := e.After[col]
		return ok
	case event.OpDelete:
		_, ok := e.Before[col]
		return ok
	}
	return false
}

func equalValues(a, b any) bool {
	switch a.(type) {
	case map[string]any, []any:
		return reflect.DeepEqual(a, b)
	}
	switch b.(type) {
	case map[string]any, []any:
		return false
	}
	return a == b
}

// messages builds one message per result: it gives each its own row map
// (copying shared maps before any is modified), then applies drop and mask.
func (t *TargetRoutes) messages(dst []target.Message, rec *kgo.Record, ev *event.Received, op event.Op, ts time.Time) []target.Message {
	// The last message that takes the row image takes the map itself,
	// unless a map expression that read the data may have nested it in its
	// result ({"full": row}), where that message's drop or mask would show.
	lastImage := -1
	for i := range t.results {
		res := &t.results[i]
		if res.image {
			lastImage = i
		} else if res.route.mapNeeds != 0 {
			lastImage = -1
			break
		}
	}
	start := len(dst)
	dst = slices.Grow(dst, len(t.results))[:start+len(t.results)]
	msgs := dst[start:]
	for i := range t.results {
		res := &t.results[i]
		row := res.row
		if row != nil && !res.owned && i != lastImage {
			row = copyMap(row)
		}
		msgs[i] = target.Message{
			Topic:     rec.Topic,
			Partition: rec.Partition,
			Offset:    rec.Offset,
			ID:        ev.ID,
			Source:    t.env.Source,
			Op:        op,
			Subject:   ev.Subject,
			Database:  t.env.Database,
			Schema:    t.env.Schema,
			Table:     t.env.Table,
			Time:      ts,
			Position:  t.env.Position,
			TxID:      t.env.TxID,
			Row:       row,
			Route:     res.route.Name,
			Value:     rec.Value,
			Headers:   rec.Headers, // shared, like Value (target.Header is kgo's type)
		}
	}
	// Every copy is taken; now the rows may be modified.
	for i := range msgs {
		applyDropMask(t.results[i].route, msgs[i].Row)
	}
	return dst
}

func copyMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func applyDropMask(r *Route, row map[string]any) {
	if row == nil {
		return
	}
	for col := range r.drop {
		delete(row, col)
	}
	for _, col := range r.hashCols {
		if v, ok := row[col]; ok && v != nil {
			row[col] = Hash(v)
		}
	}
	for _, col := range r.redactCols {
		if v, ok := row[col]; ok && v != nil {
			row[col] = Redacted
		}
	}
}

func typeName(v any) string {
	switch v.(type) {
	case nil, map[string]any:
		return "null" // a nil map: a map[string]any that is not nil is a map
	}
	return fmt.Sprintf("%T", v)
}

// checkColumns reports a column the route's map reads that its row image
// does not have (and that is not an unchanged TOAST value): the table's
// schema no longer matches the route.
func (t *TargetRoutes) checkColumns(r *Route) error {
	for _, ref := range r.mapColumns {
		var img map[string]any
		switch ref.image {
		case "row":
			img = t.env.Row
		case "after":
			img = t.env.After
		case "before":
			img = t.env.Before
		}
		if img == nil {
			continue
		}
		if _, ok := img[ref.column]; ok || slices.Contains(t.unchanged, ref.column) {
			continue
		}
		table := t.env.Table
		if t.env.Schema != "" {
			table = t.env.Schema + "." + table
		} else if t.env.Database != "" {
			table = t.env.Database + "." + table
		}
		return fmt.Errorf("%s.%s: table %s has no column %q (did its schema change?)", ref.image, ref.column, table, ref.column)
	}
	return nil
}
