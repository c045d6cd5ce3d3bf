package search

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"

	"github.com/plumecdc/plume/pkg/target"
)

// indexEnv is the environment of the index_expr expression. It has no
// methods on purpose (each would become an expression function).
type indexEnv struct {
	// Op is "insert", "update", "delete" or "read".
	Op string `expr:"op"`
	// Database, Schema and Table name the source table (Schema is "" for
	// MySQL); Topic is the Kafka topic the change was read from.
	Database string `expr:"database"`
	Schema   string `expr:"schema"`
	Table    string `expr:"table"`
	Topic    string `expr:"topic"`
	// Route names the route that produced the message.
	Route string `expr:"route"`
	// TS is the source commit time.
	TS time.Time `expr:"ts"`
	// Row is the document: the route's map output, or the row image.
	Row map[string]any `expr:"row"`
	// Subject is the rendered primary key ("id=42"), ID the CloudEvents id,
	// Position the source position of the transaction.
	Subject  string `expr:"subject"`
	ID       string `expr:"id"`
	Position string `expr:"position"`
}

// tableNames are the env names that depend only on the message's table and
// topic: an expression reading nothing else is evaluated once per table.
var tableNames = map[string]bool{"database": true, "schema": true, "table": true, "topic": true}

// indexer names the index of each message: a fixed name, or a compiled
// expression.
type indexer struct {
	fixed string
	prog  *vm.Program
	// perTable: the expression reads only tableNames, so its result is
	// cached per (topic, database, schema, table).
	perTable bool
	cache    map[tableKey]string
}

type tableKey struct{ topic, db, schema, table string }

// maxIndexCache bounds the per-table cache (it is cleared when full).
const maxIndexCache = 4096

// compileIndex type-checks and compiles an index expression once; it must
// produce a string.
func compileIndex(src string) (*indexer, error) {
	p, err := expr.Compile(src, expr.Env(indexEnv{}), expr.AsKind(reflect.String), expr.Optimize(true))
	if err != nil {
		return nil, err
	}
	ix := &indexer{prog: p, perTable: true}
	v := &nameVisitor{names: map[string]bool{}}
	node := p.Node()
	ast.Walk(&node, v)
	for name := range v.names {
		if !tableNames[name] {
			ix.perTable = false
		}
	}
	if ix.perTable {
		ix.cache = map[tableKey]string{}
	}
	return ix, nil
}

// nameVisitor collects the identifiers an expression reads.
type nameVisitor struct{ names map[string]bool }

func (v *nameVisitor) Visit(n *ast.Node) {
	if id, ok := (*n).(*ast.IdentifierNode); ok {
		v.names[id.Value] = true
	}
}

// name returns the index of m. Its errors are about this message only (a
// failing or non-string expression, an invalid name): it is dead-lettered.
func (ix *indexer) name(m *target.Message) (string, error) {
	if ix.prog == nil {
		return ix.fixed, nil
	}
	var tk tableKey
	if ix.perTable {
		tk = tableKey{m.Topic, m.Database, m.Schema, m.Table}
		if s, ok := ix.cache[tk]; ok {
			return s, nil
		}
	}
	out, err := expr.Run(ix.prog, indexEnv{
		Op: m.Op.String(), Database: m.Database, Schema: m.Schema, Table: m.Table, Topic: m.Topic,
		Route: m.Route, TS: m.Time, Row: m.Row, Subject: m.Subject, ID: m.ID, Position: m.Position,
	})
	if err != nil {
		return "", fmt.Errorf("index_expr: %w", err)
	}
	s, ok := out.(string)
	if !ok {
		return "", fmt.Errorf("index_expr: expected a string, got %T", out)
	}
	if err := checkIndexName(s); err != nil {
		return "", fmt.Errorf("index_expr gave %q: %w", s, err)
	}
	if ix.perTable {
		if len(ix.cache) >= maxIndexCache {
			clear(ix.cache)
		}
		ix.cache[tk] = s
	}
	return s, nil
}

// checkIndexName applies Elasticsearch's and OpenSearch's rules for index
// names, so that a bad name is rejected for its message rather than failing
// a whole bulk request.
func checkIndexName(s string) error {
	switch {
	case s == "":
		return errors.New("index name is empty")
	case s == "." || s == "..":
		return errors.New("index name must not be . or ..")
	case len(s) > 255:
		return fmt.Errorf("index name is %d bytes long (at most 255)", len(s))
	case strings.ContainsAny(s[:1], "-_+"):
		return errors.New("index name must not start with -, _ or +")
	case s != strings.ToLower(s):
		return errors.New("index name must be lowercase")
	}
	if i := strings.IndexAny(s, "\\/*?\"<>| ,#:"); i >= 0 {
		return fmt.Errorf("index name must not contain %q", s[i])
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return errors.New("index name must not contain control characters")
		}
	}
	return nil
}
