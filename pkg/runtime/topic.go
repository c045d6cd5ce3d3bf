package runtime

import (
	"fmt"
	"reflect"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
)

// TopicEnv is what a kafka.topic expression sees. It is deliberately small:
// the topic is computed for every captured change.
type TopicEnv struct {
	Op       string `expr:"op"`       // insert, update, delete, read, truncate
	Database string `expr:"database"` // database (MySQL) or database name (PostgreSQL)
	Schema   string `expr:"schema"`   // PostgreSQL schema; "" for MySQL
	Table    string `expr:"table"`
	Prefix   string `expr:"prefix"` // kafka.topic_prefix
}

// TopicFunc returns the function that maps a change to its topic: the
// compiled kafka.topic expression, or "<prefix>.<database>.<table>" (the
// schema in place of the database for PostgreSQL). A bad expression fails
// here, which `plume validate` runs, with the file, line and key.
func TopicFunc(p *config.Pipeline) (func(*event.Change) (string, error), error) {
	prefix := p.TopicPrefix()
	if p.Kafka.Topic == "" {
		return func(c *event.Change) (string, error) {
			db := c.Table.Database
			if c.Table.Schema != "" {
				db = c.Table.Schema
			}
			return p.TableTopic(db, c.Table.Name), nil
		}, nil
	}
	prog, err := expr.Compile(p.Kafka.Topic, expr.Env(TopicEnv{}), expr.AsKind(reflect.String))
	if err != nil {
		return nil, p.Kafka.TopicPos.Errorf("kafka.topic", "%v", err)
	}
	return func(c *event.Change) (string, error) {
		env := TopicEnv{Op: c.Op.String(), Database: c.Table.Database, Schema: c.Table.Schema, Table: c.Table.Name, Prefix: prefix}
		out, err := vm.Run(prog, env)
		if err != nil {
			return "", fmt.Errorf("kafka.topic: %w", err)
		}
		s := out.(string)
		if s == "" {
			return "", fmt.Errorf("kafka.topic gave an empty topic for %s", c.Table.QualifiedName())
		}
		return s, nil
	}, nil
}
