package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"

	"go.yaml.in/yaml/v3"
)

// Target is one entry of the targets mapping. Parse checks only its name
// and type; the connector for Type decodes its other keys with Decode.
//
// A Target prints (fmt, JSON, slog) as its name, type and position only: its
// options may hold secrets.
type Target struct {
	// Name is the target's key in the targets mapping.
	Name string
	// Type selects the connector, e.g. "sql" or "salesforce".
	Type string
	// Pos is the position of the target's key.
	Pos Pos

	path  string     // key path, "targets.<name>"
	node  *yaml.Node // the target's mapping, env-interpolated
	lines []string   // the file's lines, for expression positions
}

// Decode decodes the target's keys, except type, into the connector's own
// options (a pointer to a struct, or to a map with string keys), as
// strictly as Parse: an unknown key is an error such as
//
//	pipeline.yaml:23:5: targets.erp.tabel: unknown key (known: dsn, table, key); did you mean "table"?
//
// and so is a value of the wrong type. ${ENV} interpolation has already been
// applied. Struct fields follow the yaml tag conventions of yaml.v3 (name,
// "-", ",inline"); fields of type Secret, DSN, Duration, time.Duration,
// yaml.Node, types implementing yaml.Unmarshaler or encoding.TextUnmarshaler
// are supported, and a field of type Pos with tag `pos:"key"` receives the
// position of that key's value (an untagged Pos field, the target's).
// Fields keep their values for absent keys, so set defaults before calling.
// The error is a *Error or an ErrorList.
func (t Target) Decode(into any) error {
	rv := reflect.ValueOf(into)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("config: Target.Decode needs a non-nil pointer, got %T", into)
	}
	if t.node == nil {
		return nil // not from a file: nothing to decode
	}
	d := &decoder{file: t.Pos.File, lines: t.lines}
	path := t.path
	if path == "" {
		path = joinKey("targets", t.Name)
	}
	ev := rv.Elem()
	switch ev.Kind() {
	case reflect.Struct:
		if ev.Type() == targetType || ev.Type() == durationType {
			return errors.New("config: Target.Decode into an unsupported type")
		}
		d.decodeStruct(t.node, ev, path, map[string]bool{"type": true, "delivery": true})
	case reflect.Map:
		d.decodeMap(t.node, ev, path, map[string]bool{"type": true, "delivery": true})
	default:
		return fmt.Errorf("config: Target.Decode needs a pointer to a struct or map, got %T", into)
	}
	return d.result()
}

// Delivery holds the shared delivery layer's settings for one target: the
// optional `delivery` key that every target type accepts.
type Delivery struct {
	// BatchMaxEvents caps a batch's messages (default 1000).
	BatchMaxEvents int `yaml:"batch_max_events"`
	// BatchMaxBytes caps a batch's record bytes (default 4 MiB).
	BatchMaxBytes int `yaml:"batch_max_bytes"`
	// BatchLinger is how long a batch waits to fill (default 100ms).
	BatchLinger Duration `yaml:"batch_linger"`
	// Coalesce keeps only the last change of each key within a batch (nil:
	// the target type's default; on for salesforce).
	Coalesce *bool `yaml:"coalesce"`
}

// Delivery decodes the target's `delivery` block (zero values when absent)
// as strictly as Decode.
func (t Target) Delivery() (Delivery, error) {
	var out Delivery
	if t.node == nil || t.node.Kind != yaml.MappingNode {
		return out, nil
	}
	path := t.path
	if path == "" {
		path = joinKey("targets", t.Name)
	}
	for i := 0; i+1 < len(t.node.Content); i += 2 {
		if t.node.Content[i].Value != "delivery" {
			continue
		}
		d := &decoder{file: t.Pos.File, lines: t.lines}
		d.decodeStruct(t.node.Content[i+1], reflect.ValueOf(&out).Elem(), joinKey(path, "delivery"), nil)
		if err := d.result(); err != nil {
			return out, err
		}
		if out.BatchMaxEvents < 0 || out.BatchMaxBytes < 0 || out.BatchLinger.Duration < 0 {
			return out, t.Errorf("delivery", "batch limits must not be negative")
		}
	}
	return out, nil
}

// Key returns the key path of one of the target's keys, e.g.
// t.Key("table") == "targets.erp.table".
func (t Target) Key(key string) string {
	path := t.path
	if path == "" {
		path = joinKey("targets", t.Name)
	}
	return joinKey(path, key)
}

// Has reports whether the target sets key.
func (t Target) Has(key string) bool {
	_, ok := t.lookup(key)
	return ok
}

// PosOf returns the position of key's value in the target, or the target's
// position if it does not set key.
func (t Target) PosOf(key string) Pos {
	if n, ok := t.lookup(key); ok {
		return Pos{File: t.Pos.File, Line: n.Line, Column: n.Column}
	}
	return t.Pos
}

// Errorf returns a *Error about one of the target's keys, at the position of
// its value (or of the target if the key is absent), for connectors'
// semantic checks:
//
//	return t.Errorf("table", "must be schema-qualified")
//	// pipeline.yaml:24:12: targets.erp.table: must be schema-qualified
func (t Target) Errorf(key, format string, args ...any) error {
	return t.PosOf(key).Errorf(t.Key(key), format, args...)
}

func (t Target) lookup(key string) (*yaml.Node, bool) {
	if t.node == nil {
		return nil, false
	}
	d := &decoder{file: t.Pos.File}
	for _, p := range d.pairs(t.node, t.path, 0) {
		k := p.key
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind == yaml.ScalarNode && k.Value == key {
			v := p.val
			if v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			return v, true
		}
	}
	return nil, false
}

// String describes the target without its options.
func (t Target) String() string {
	return fmt.Sprintf("target %q (type %s) at %s", t.Name, t.Type, t.Pos)
}

// GoString describes the target without its options.
func (t Target) GoString() string {
	return fmt.Sprintf("config.Target{Name: %q, Type: %q, Pos: %q}", t.Name, t.Type, t.Pos.String())
}

// Format prints the target without its options, whatever the verb.
func (t Target) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, t.GoString())
		return
	}
	fmt.Fprint(f, t.String())
}

type targetJSON struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// MarshalJSON returns {"name": ..., "type": ...}: the options are left out.
func (t Target) MarshalJSON() ([]byte, error) {
	return json.Marshal(targetJSON{Name: t.Name, Type: t.Type})
}

// LogValue logs the name and type only.
func (t Target) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", t.Name), slog.String("type", t.Type))
}
