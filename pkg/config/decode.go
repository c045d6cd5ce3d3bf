package config

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// The decoder is a strict, reflection-based YAML-node-to-struct decoder:
// unknown keys, duplicate keys and values of the wrong type are errors that
// carry the file, line, column and key path. It understands the yaml struct
// tag like yaml.v3 does (name, "-", ",inline" for structs and maps; the
// default name is the lower-cased field name), plus config-specific types
// (Duration, Target, Pos).

const (
	maxErrors     = 50      // stop collecting after this many errors
	maxDepth      = 100     // nesting limit (aliases can make cycles)
	maxNodeVisits = 100_000 // alias expansion budget
)

var (
	durationType        = reflect.TypeOf(Duration{})
	stdDurationType     = reflect.TypeOf(time.Duration(0))
	posType             = reflect.TypeOf(Pos{})
	targetType          = reflect.TypeOf(Target{})
	nodeType            = reflect.TypeOf(yaml.Node{})
	unmarshalerType     = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	textUnmarshalerType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

type decoder struct {
	file       string
	lines      []string // source lines, for expression positions in block scalars; may be nil
	errs       []*Error
	meta       *meta               // where to record key positions; nil: don't
	env        map[*yaml.Node]bool // scalars whose value came from interpolation
	bad        map[*yaml.Node]bool // scalars whose interpolation failed (already reported)
	depth      int
	visits     int  // decoded nodes, a budget against alias bombs
	tooComplex bool // the budget was exceeded (reported once)
}

func (d *decoder) full() bool { return len(d.errs) >= maxErrors }

func (d *decoder) errorf(n *yaml.Node, key, format string, args ...any) {
	if d.full() {
		return
	}
	e := &Error{File: d.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

func (d *decoder) pos(n *yaml.Node) Pos {
	if n == nil {
		return Pos{File: d.file}
	}
	return Pos{File: d.file, Line: n.Line, Column: n.Column}
}

// exprPos is the position of the first character of a scalar's text.
func (d *decoder) exprPos(n *yaml.Node) Pos {
	p := d.pos(n)
	if n.Kind != yaml.ScalarNode {
		return p
	}
	switch {
	case n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) != 0:
		p.Column++
	case n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		// Content starts on the next non-blank line, at its indentation.
		for l := n.Line; l < len(d.lines); l++ { // d.lines[l] is line l+1
			s := strings.TrimRight(d.lines[l], "\r")
			if t := strings.TrimLeft(s, " "); t != "" {
				p.Line, p.Column = l+1, len(s)-len(t)+1
				break
			}
		}
	}
	return p
}

// result returns the collected errors as Parse returns them.
func (d *decoder) result() error { return sortErrors(d.errs) }

// resolve follows aliases. It returns nil (after reporting) on a dangling
// alias or an alias chain that is too long.
func (d *decoder) resolve(n *yaml.Node, path string) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if n.Alias == nil || i > maxDepth {
			d.errorf(n, path, "invalid alias")
			return nil
		}
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's type for messages: "a mapping", "a list", "a string"...
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		if n.Alias != nil && n.Alias.Kind != yaml.AliasNode {
			return describe(n.Alias)
		}
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!timestamp":
			return "a timestamp"
		case "!!str":
			return "a string"
		}
		return "a value tagged " + n.ShortTag()
	case yaml.DocumentNode:
		return "a document"
	}
	return "an unknown node"
}

// quoteValue quotes a scalar for an error message, unless the value came
// from the environment (it might be a secret).
func (d *decoder) quoteValue(n *yaml.Node) string {
	if d.env[n] {
		return "a value from the environment"
	}
	v := n.Value
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return strconv.Quote(v)
}

// scalar checks that n is a plain-data scalar and returns its value.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, path, "expected %s, got %s", want, describe(n))
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, true
	}
	d.errorf(n, path, "expected %s, got %s", want, describe(n))
	return "", false
}

// decodeValue decodes n into v. A null value leaves v unchanged.
func (d *decoder) decodeValue(n *yaml.Node, v reflect.Value, path string) {
	if d.full() {
		return
	}
	d.visits++
	if d.visits > maxNodeVisits {
		if !d.tooComplex {
			d.tooComplex = true
			d.errorf(n, path, "document too complex (excessive aliasing)")
		}
		return
	}
	if d.depth >= maxDepth {
		d.errorf(n, path, "nesting too deep")
		return
	}
	d.depth++
	defer func() { d.depth-- }()

	if n = d.resolve(n, path); n == nil || d.bad[n] || isNull(n) {
		return
	}
	t := v.Type()
	switch t {
	case durationType, stdDurationType:
		s, ok := d.scalar(n, path, "a duration")
		if !ok {
			return
		}
		dur, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			d.errorf(n, path, "invalid duration %s: want a number with a unit, e.g. \"10s\" or \"50ms\"", d.quoteValue(n))
			return
		}
		if t == durationType {
			v.Set(reflect.ValueOf(Duration{dur}))
		} else {
			v.SetInt(int64(dur))
		}
		return
	case targetType:
		d.decodeTarget(n, v, "", path, n)
		return
	case nodeType:
		v.Set(reflect.ValueOf(*n))
		return
	case posType:
		return
	}
	if v.CanAddr() {
		pt := reflect.PointerTo(t)
		if pt.Implements(unmarshalerType) {
			if err := n.Decode(v.Addr().Interface()); err != nil {
				d.errorf(n, path, "%s", cleanYAMLError(err))
			}
			return
		}
		if pt.Implements(textUnmarshalerType) && t.Kind() != reflect.Pointer {
			s, ok := d.scalar(n, path, "a string")
			if !ok {
				return
			}
			if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
				d.errorf(n, path, "invalid value %s: %v", d.quoteValue(n), err)
			}
			return
		}
	}

	switch t.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.decodeValue(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path, nil)
	case reflect.Map:
		d.decodeMap(n, v, path, nil)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, path, "a boolean (true or false)")
		if !ok {
			return
		}
		switch strings.ToLower(s) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.errorf(n, path, "expected a boolean (true or false), got %s", d.quoteValue(n))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s, ok := d.scalar(n, path, "an integer")
		if !ok {
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, 64)
		if err != nil {
			d.errorf(n, path, "expected an integer, got %s", d.quoteValue(n))
			return
		}
		if v.OverflowInt(i) {
			bits := t.Bits()
			d.errorf(n, path, "%d is out of range [%d, %d]", i, int64(-1)<<(bits-1), int64(1)<<(bits-1)-1)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		s, ok := d.scalar(n, path, "a non-negative integer")
		if !ok {
			return
		}
		s = strings.ReplaceAll(s, "_", "")
		u, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			if _, ierr := strconv.ParseInt(s, 0, 64); ierr == nil {
				d.errorf(n, path, "must not be negative")
			} else {
				d.errorf(n, path, "expected a non-negative integer, got %s", d.quoteValue(n))
			}
			return
		}
		if v.OverflowUint(u) {
			d.errorf(n, path, "%d is out of range [0, %d]", u, uint64(math.MaxUint64)>>(64-t.Bits()))
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		s, ok := d.scalar(n, path, "a number")
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), t.Bits())
		if err != nil {
			d.errorf(n, path, "expected a number, got %s", d.quoteValue(n))
			return
		}
		v.SetFloat(f)
	case reflect.Interface:
		if t.NumMethod() != 0 {
			d.errorf(n, path, "cannot decode into %s", t)
			return
		}
		var x any
		if err := n.Decode(&x); err != nil {
			d.errorf(n, path, "%s", cleanYAMLError(err))
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.errorf(n, path, "cannot decode into %s", t)
	}
}

// record notes the position of a key and its value for validation messages.
func (d *decoder) record(path string, key, val *yaml.Node) {
	if d.meta == nil {
		return
	}
	v := val
	if v != nil && v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	e := metaEntry{key: d.pos(key), val: d.pos(v)}
	e.null = v == nil || isNull(v)
	d.meta.entries[path] = e
}

type pair struct{ key, val *yaml.Node }

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// pairs returns the key/value pairs of a mapping, with YAML merge keys
// (<<: *anchor) expanded: the mapping's own keys come first, then merged
// keys it does not define itself (earlier merge sources win).
func (d *decoder) pairs(n *yaml.Node, path string, depth int) []pair {
	d.visits += len(n.Content) / 2
	if d.visits > maxNodeVisits {
		if !d.tooComplex {
			d.tooComplex = true
			d.errorf(n, path, "document too complex (excessive aliasing)")
		}
		return nil
	}
	var own, merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			merged = append(merged, d.mergeSources(v, path, depth)...)
			continue
		}
		own = append(own, pair{k, v})
	}
	if len(merged) == 0 {
		return own
	}
	seen := make(map[string]bool, len(own))
	for _, p := range own {
		if p.key.Kind == yaml.ScalarNode {
			seen[p.key.Value] = true
		}
	}
	out := own
	for _, p := range merged {
		k := p.key
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind == yaml.ScalarNode {
			if seen[k.Value] {
				continue
			}
			seen[k.Value] = true
		}
		out = append(out, p)
	}
	return out
}

func (d *decoder) mergeSources(v *yaml.Node, path string, depth int) []pair {
	if depth > 10 {
		d.errorf(v, path, "merge keys (<<) nested too deeply")
		return nil
	}
	src := d.resolve(v, path)
	if src == nil {
		return nil
	}
	switch src.Kind {
	case yaml.MappingNode:
		return d.pairs(src, path, depth+1)
	case yaml.SequenceNode:
		var out []pair
		for _, item := range src.Content {
			m := d.resolve(item, path)
			if m == nil {
				continue
			}
			if m.Kind != yaml.MappingNode {
				d.errorf(item, path, "merge key (<<) value must be a mapping or a list of mappings, got a list containing %s", describe(m))
				continue
			}
			out = append(out, d.pairs(m, path, depth+1)...)
		}
		return out
	}
	d.errorf(v, path, "merge key (<<) value must be a mapping or a list of mappings, got %s", describe(src))
	return nil
}

// keyName returns the string value of a mapping key.
func (d *decoder) keyName(k *yaml.Node, path string) (string, bool) {
	if k = d.resolve(k, path); k == nil {
		return "", false
	}
	if k.Kind != yaml.ScalarNode {
		d.errorf(k, path, "mapping keys must be strings, got %s", describe(k))
		return "", false
	}
	return k.Value, true
}

// decodeStruct decodes a mapping into a struct, rejecting unknown and
// duplicate keys. Keys in skip are accepted and ignored.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, skip map[string]bool) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	si := getStructInfo(v.Type())
	seen := make(map[string]pair)
	for _, p := range d.pairs(n, path, 0) {
		if d.full() {
			return
		}
		name, ok := d.keyName(p.key, path)
		if !ok {
			continue
		}
		kp := joinKey(path, name)
		if prev, dup := seen[name]; dup {
			d.errorf(p.key, kp, "duplicate key (first defined at line %d)", prev.key.Line)
			continue
		}
		seen[name] = p
		if skip[name] {
			continue
		}
		fi, ok := si.byName[name]
		if !ok {
			if si.inlineMap != nil {
				m := fieldByIndex(v, si.inlineMap)
				if m.IsNil() {
					m.Set(reflect.MakeMap(m.Type()))
				}
				d.record(kp, p.key, p.val)
				elem := reflect.New(m.Type().Elem()).Elem()
				d.decodeValue(p.val, elem, kp)
				m.SetMapIndex(reflect.ValueOf(name).Convert(m.Type().Key()), elem)
				continue
			}
			msg := "unknown key (known: " + strings.Join(si.names, ", ") + ")"
			if s := suggest(name, si.names); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			d.errorf(p.key, kp, "%s", msg)
			continue
		}
		d.record(kp, p.key, p.val)
		d.decodeValue(p.val, fieldByIndex(v, si.fields[fi].index), kp)
	}
	for _, pf := range si.pos {
		p := d.pos(n)
		if pf.key != "" {
			if kv, ok := seen[pf.key]; ok {
				if val := d.resolve(kv.val, path); val != nil {
					p = d.exprPos(val)
				}
			}
		}
		fieldByIndex(v, pf.index).Set(reflect.ValueOf(p))
	}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string, skip map[string]bool) {
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		d.errorf(n, path, "cannot decode into %s", t)
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	seen := make(map[string]*yaml.Node)
	for _, p := range d.pairs(n, path, 0) {
		if d.full() {
			return
		}
		name, ok := d.keyName(p.key, path)
		if !ok {
			continue
		}
		kp := joinKey(path, name)
		if prev, dup := seen[name]; dup {
			d.errorf(p.key, kp, "duplicate key (first defined at line %d)", prev.Line)
			continue
		}
		seen[name] = p.key
		if skip[name] {
			continue
		}
		d.record(kp, p.key, p.val)
		elem := reflect.New(t.Elem()).Elem()
		if t.Elem() == targetType {
			d.decodeTarget(p.val, elem, name, kp, p.key)
		} else {
			d.decodeValue(p.val, elem, kp)
		}
		v.SetMapIndex(reflect.ValueOf(name).Convert(t.Key()), elem)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		if d.full() {
			break
		}
		ip := joinIndex(path, i)
		d.record(ip, item, item)
		d.decodeValue(item, s.Index(i), ip)
	}
	v.Set(s)
}

// decodeTarget keeps a target's mapping for Target.Decode and extracts its type.
func (d *decoder) decodeTarget(n *yaml.Node, v reflect.Value, name, path string, key *yaml.Node) {
	n = d.resolve(n, path)
	if n == nil {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping with a type, got %s", describe(n))
		return
	}
	t := Target{Name: name, Pos: d.pos(key), path: path, node: n, lines: d.lines}
	for _, p := range d.pairs(n, path, 0) {
		if k, ok := d.keyName(p.key, path); ok && k == "type" {
			tp := joinKey(path, "type")
			d.record(tp, p.key, p.val)
			d.decodeValue(p.val, reflect.ValueOf(&t.Type).Elem(), tp)
			break
		}
	}
	v.Set(reflect.ValueOf(t))
}

// fieldByIndex is reflect.Value.FieldByIndex allocating nil embedded pointers.
func fieldByIndex(v reflect.Value, index []int) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

type fieldInfo struct {
	name  string
	index []int
}

type posField struct {
	key   string // key whose value position is recorded; "" for the struct itself
	index []int
}

type structInfo struct {
	fields    []fieldInfo // declaration order, inline fields flattened
	names     []string    // fields' names, declaration order
	byName    map[string]int
	pos       []posField
	inlineMap []int // index of a ",inline" map catching unknown keys, or nil
}

var structCache sync.Map // reflect.Type -> *structInfo

func getStructInfo(t reflect.Type) *structInfo {
	if si, ok := structCache.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{byName: make(map[string]int)}
	si.collect(t, nil, 0)
	for _, f := range si.fields {
		si.names = append(si.names, f.name)
	}
	structCache.Store(t, si)
	return si
}

func (si *structInfo) collect(t reflect.Type, prefix []int, depth int) {
	if depth > 10 {
		return
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		idx := append(append([]int(nil), prefix...), i)
		if f.Type == posType {
			if f.IsExported() {
				si.pos = append(si.pos, posField{key: f.Tag.Get("pos"), index: idx})
			}
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, flags, _ := strings.Cut(tag, ",")
		inline := false
		for _, fl := range strings.Split(flags, ",") {
			if fl == "inline" {
				inline = true
			}
		}
		if !f.IsExported() && !(f.Anonymous && inline) {
			continue
		}
		if inline {
			ft := f.Type
			switch {
			case ft.Kind() == reflect.Struct:
				si.collect(ft, idx, depth+1)
				continue
			case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct:
				si.collect(ft.Elem(), idx, depth+1)
				continue
			case ft.Kind() == reflect.Map && ft.Key().Kind() == reflect.String && si.inlineMap == nil:
				si.inlineMap = idx
				continue
			}
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if _, dup := si.byName[name]; dup {
			continue
		}
		si.byName[name] = len(si.fields)
		si.fields = append(si.fields, fieldInfo{name: name, index: idx})
	}
}

// suggest returns the known name closest to name, if it is close enough.
func suggest(name string, known []string) string {
	best, bestDist := "", 3
	lname := strings.ToLower(name)
	for _, k := range known {
		if strings.ToLower(k) == lname {
			return k
		}
		if dist := levenshtein(lname, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if bestDist > len(name)/2 {
		return ""
	}
	return best
}

func levenshtein(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			c = min(c, prev[j]+1, cur[j-1]+1)
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends a mapping key to a key path: a.b for plain keys,
// a["x.y"] for keys that are not [A-Za-z0-9_-]+.
func joinKey(parent, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	switch {
	case !plain:
		return parent + "[" + strconv.Quote(key) + "]"
	case parent == "":
		return key
	}
	return parent + "." + key
}

// joinIndex appends a list index to a key path: a[3].
func joinIndex(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

// parentPath returns the key path one level up ("" for a top-level key).
func parentPath(path string) string {
	cut := 0 // start of the last segment
	for i := 0; i < len(path); i++ {
		switch path[i] {
		case '.':
			cut = i
		case '[':
			cut = i
			if i+1 < len(path) && path[i+1] == '"' {
				// Skip the quoted key (strconv.Quote escaping).
				j := i + 2
				for j < len(path) && path[j] != '"' {
					if path[j] == '\\' {
						j++
					}
					j++
				}
				i = j
			}
		}
	}
	return path[:cut]
}

// meta records where keys were found, for validation messages.
type meta struct {
	root    Pos
	entries map[string]metaEntry
}

type metaEntry struct {
	key, val Pos
	null     bool
}

// has reports whether path was given a non-null value in the file.
func (m *meta) has(path string) bool {
	if m == nil {
		return false
	}
	e, ok := m.entries[path]
	return ok && !e.null
}

// at returns the position to report an error about path at: the value's
// position if the key is in the file, else the position of the nearest
// ancestor key that is.
func (m *meta) at(path string) Pos {
	if m == nil {
		return Pos{}
	}
	if e, ok := m.entries[path]; ok {
		return e.val
	}
	for path != "" {
		path = parentPath(path)
		if e, ok := m.entries[path]; ok {
			return e.key
		}
	}
	return m.root
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
