// Package router evaluates a pipeline's routes: it decides which targets an
// event goes to and what row each receives.
//
// Compile type-checks and compiles every route's `when` and `map` expression
// once (this is what `plume validate` runs), so a bad route fails before the
// first event. At run time each target's delivery loop asks
// ForTarget(name) for its routes and calls Eval per record; Eval decodes the
// CloudEvent and its envelope at most once per record, however many routes
// match. The expression language is expr (github.com/expr-lang/expr); the
// environment, functions and number semantics are in docs/routing.md.
package router

import (
	"errors"
	"fmt"
	"reflect"
	"sort"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"

	"github.com/plumecdc/plume/pkg/config"
)

// Router holds a pipeline's compiled routes. It is immutable and safe for
// concurrent use; the per-target evaluators it hands out are not.
type Router struct {
	routes  []*Route
	targets []string
}

// Route is one compiled route. Its exported fields are the configuration, for
// status output; treat them as read-only.
type Route struct {
	Name string
	When string // the `when` expression as written; "" means true
	Map  string // the `map` expression; "" means the row image
	To   []string
	Drop []string
	Mask map[string]string // column -> config.MaskHash or config.MaskRedact

	when    *vm.Program // nil when the route has no `when`
	mapping *vm.Program // nil when the route has no `map`
	// mapFresh: the map program's result is a map literal built anew by each
	// run, so the message can own it without a copy.
	mapFresh bool
	// whenNeeds / mapNeeds: the parts of the event data the expression
	// reads (before, after, row, key, changed), decoded before it runs.
	whenNeeds, mapNeeds needs
	// mapColumns are the columns the map reads as row.x, after.x or
	// before.x: one missing from its image (the table's schema changed)
	// is an evaluation error, so the event is dead-lettered instead of
	// writing a null.
	mapColumns []columnRef
	drop       map[string]bool
	hashCols   []string
	redactCols []string
}

// Compile compiles routes. Errors are *config.Error values (a
// config.ErrorList when there are several) positioned at the offending
// expression in the config file, for example
//
//	pipeline.yaml:12:11: routes[0].when: unknown name tabel (1:1)
//	 | tabel == "orders"
//	 | ^
//
// where the trailing position and marker are expr's, within the expression.
func Compile(routes []config.Route) (*Router, error) {
	r := &Router{routes: make([]*Route, 0, len(routes))}
	var errs config.ErrorList
	seen := map[string]bool{}
	for i := range routes {
		cr, rerrs := compileRoute(&routes[i])
		if len(rerrs) > 0 {
			errs = append(errs, rerrs...)
			continue
		}
		r.routes = append(r.routes, cr)
		for _, t := range cr.To {
			if !seen[t] {
				seen[t] = true
				r.targets = append(r.targets, t)
			}
		}
	}
	sort.Strings(r.targets)
	switch len(errs) {
	case 0:
		return r, nil
	case 1:
		return nil, errs[0]
	}
	return nil, errs
}

// Options shared by every expression: the typed environment, the Plume
// functions and expr's optimizer.
func baseOptions() []expr.Option {
	return append([]expr.Option{expr.Env(Env{}), expr.Optimize(true)}, functions()...)
}

func compileRoute(c *config.Route) (*Route, []*config.Error) {
	r := &Route{
		Name: c.Name,
		When: c.When,
		Map:  c.Map,
		To:   append([]string(nil), c.To...),
		Drop: append([]string(nil), c.Drop...),
		Mask: make(map[string]string, len(c.Mask)),
	}
	var errs []*config.Error
	add := func(err error) {
		var ce *config.Error
		if errors.As(err, &ce) {
			errs = append(errs, ce)
		}
	}
	if c.When != "" {
		p, err := expr.Compile(c.When, append(baseOptions(), expr.AsBool())...)
		if err != nil {
			add(c.WhenPos.Errorf(c.Key("when"), "%w", err))
		} else {
			r.when = p
			r.whenNeeds = usesData(p.Node())
		}
	}
	if c.Map != "" {
		p, err := expr.Compile(c.Map, append(baseOptions(), expr.AsKind(reflect.Map))...)
		if err == nil {
			if t := p.Node().Type(); t.Kind() == reflect.Map && t.Key().Kind() != reflect.String {
				err = fmt.Errorf("expected a map with string keys, but got %v", t)
			}
		}
		if err != nil {
			add(c.MapPos.Errorf(c.Key("map"), "%w", err))
		} else {
			r.mapping = p
			_, r.mapFresh = p.Node().(*ast.MapNode)
			r.mapNeeds = usesData(p.Node())
			if r.mapColumns = columnRefs(p.Node()); len(r.mapColumns) > 0 {
				r.mapNeeds |= needUnchanged
			}
		}
	}
	if len(c.Drop) > 0 {
		r.drop = make(map[string]bool, len(c.Drop))
		for _, col := range c.Drop {
			r.drop[col] = true
		}
	}
	cols := make([]string, 0, len(c.Mask))
	for col := range c.Mask {
		cols = append(cols, col)
	}
	sort.Strings(cols)
	for _, col := range cols {
		mode := c.Mask[col]
		r.Mask[col] = mode
		switch mode {
		case config.MaskHash:
			r.hashCols = append(r.hashCols, col)
		case config.MaskRedact:
			r.redactCols = append(r.redactCols, col)
		default:
			add(c.Pos.Errorf(c.Key("mask"), "column %q: unknown mask %q (want %q or %q)", col, mode, config.MaskHash, config.MaskRedact))
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return r, nil
}

// usesData returns the parts of the event data an expression reads. It
// looks at names only, so a variable named like an env field (let row = 1)
// errs on the side of decoding.
func usesData(n ast.Node) needs {
	v := &dataVisitor{}
	ast.Walk(&n, v)
	return v.needs
}

type dataVisitor struct{ needs needs }

func (v *dataVisitor) Visit(n *ast.Node) {
	if id, ok := (*n).(*ast.IdentifierNode); ok {
		v.needs |= dataNames[id.Value]
	}
}

// columnRef is a column read from a row image: image is "row", "after" or
// "before".
type columnRef struct{ image, column string }

// columnRefs finds the image.column accesses of an expression.
func columnRefs(n ast.Node) []columnRef {
	v := &columnVisitor{seen: map[columnRef]bool{}}
	ast.Walk(&n, v)
	return v.refs
}

type columnVisitor struct {
	refs []columnRef
	seen map[columnRef]bool
}

func (v *columnVisitor) Visit(n *ast.Node) {
	m, ok := (*n).(*ast.MemberNode)
	if !ok {
		return
	}
	id, ok := m.Node.(*ast.IdentifierNode)
	if !ok || (id.Value != "row" && id.Value != "after" && id.Value != "before") {
		return
	}
	prop, ok := m.Property.(*ast.StringNode)
	if !ok {
		return
	}
	ref := columnRef{id.Value, prop.Value}
	if !v.seen[ref] {
		v.seen[ref] = true
		v.refs = append(v.refs, ref)
	}
}

// Targets returns the names of the targets some route sends to, sorted.
func (r *Router) Targets() []string { return append([]string(nil), r.targets...) }

// Routes returns the compiled routes in configuration order.
func (r *Router) Routes() []*Route { return append([]*Route(nil), r.routes...) }

// ForTarget returns an evaluator of the routes that send to the named target,
// in configuration order. A target no route names gets an evaluator that
// matches nothing. Each call returns a new evaluator: it reuses its buffers
// between records and is not safe for concurrent use, so use one per
// goroutine.
func (r *Router) ForTarget(name string) *TargetRoutes {
	t := &TargetRoutes{target: name}
	for _, rt := range r.routes {
		for _, to := range rt.To {
			if to == name {
				t.routes = append(t.routes, rt)
				break
			}
		}
	}
	t.env.Changed = t.changed
	return t
}

// EvalError is a route that failed at run time for one record: its `when`
// or `map` raised an error (a comparison of null with a number, number() of
// a non-number, a `when` that produced no bool, a `map` that produced no
// map). The caller dead-letters the record with this error for this target
// and goes on; the other routes' messages are unaffected.
type EvalError struct {
	Route  string
	Target string
	Err    error
}

func (e *EvalError) Error() string {
	return fmt.Sprintf("route %q for target %q: %v", e.Route, e.Target, e.Err)
}

func (e *EvalError) Unwrap() error { return e.Err }

// DecodeError is a record that could not be decoded as a Plume CloudEvent
// (or whose envelope is not valid JSON). No route was evaluated; the caller
// dead-letters the record.
type DecodeError struct {
	Target    string
	Topic     string
	Partition int32
	Offset    int64
	Err       error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("record %s/%d@%d for target %q: %v", e.Topic, e.Partition, e.Offset, e.Target, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// EvalErrors returns the *EvalError values of an error returned by Eval
// (one, or several joined with errors.Join), in route order.
func EvalErrors(err error) []*EvalError {
	if err == nil {
		return nil
	}
	var e *EvalError
	if errors.As(err, &e) && error(e) == err {
		return []*EvalError{e}
	}
	var out []*EvalError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, x := range j.Unwrap() {
			if errors.As(x, &e) {
				out = append(out, e)
			}
		}
		return out
	}
	if errors.As(err, &e) {
		out = append(out, e)
	}
	return out
}
