package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// lookupEnv looks up environment variables.
var lookupEnv = os.LookupEnv

// interpolate expands ${VAR}, ${VAR:-default} and $$ in every scalar value
// of the tree (not in mapping keys), in place, so positions stay those of
// the file. Alias nodes are skipped: their anchor is expanded where it is
// defined. A plain (unquoted, untagged) scalar that changed is re-typed as if
// its new text had been written in the file.
func (d *decoder) interpolate(n *yaml.Node, path string, depth int) {
	if n == nil || d.full() {
		return
	}
	if depth > maxDepth {
		d.errorf(n, path, "nesting too deep")
		return
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			d.interpolate(c, path, depth+1)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			d.interpolate(c, joinIndex(path, i), depth+1)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			kp := path
			if k.Kind == yaml.ScalarNode {
				kp = joinKey(path, k.Value)
			}
			d.interpolate(n.Content[i+1], kp, depth+1)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		out, fromEnv, err := expandEnv(n.Value, lookupEnv)
		if err != nil {
			if d.bad == nil {
				d.bad = make(map[*yaml.Node]bool)
			}
			d.bad[n] = true
			d.errorf(n, path, "%v", err)
			return
		}
		if out == n.Value {
			return
		}
		n.Value = out
		if n.Style == 0 {
			n.Tag = "" // re-resolve: ${PORT} -> 5432 is an integer
		}
		if fromEnv {
			if d.env == nil {
				d.env = make(map[*yaml.Node]bool)
			}
			d.env[n] = true
		}
	}
}

// expandEnv expands s:
//
//	$$               a literal $
//	${NAME}          the variable's value; an error if it is not set
//	${NAME:-default} the value, or default if the variable is unset or empty
//
// NAME is [A-Za-z_][A-Za-z0-9_]*. default is taken literally up to the first
// '}'. Any other '$' is kept as is. fromEnv reports whether a variable (or
// default) was substituted. Errors never contain variable values.
func expandEnv(s string, lookup func(string) (string, bool)) (out string, fromEnv bool, err error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' || i+1 >= len(s) || (s[i+1] != '$' && s[i+1] != '{') {
			b.WriteByte(c)
			i++
			continue
		}
		if s[i+1] == '$' {
			b.WriteByte('$')
			i += 2
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", false, errors.New(`unterminated "${" (write "$$" for a literal "$")`)
		}
		expr := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			return "", false, fmt.Errorf("invalid environment variable reference %q: want ${NAME} or ${NAME:-default} with NAME matching [A-Za-z_][A-Za-z0-9_]* (write \"$$\" for a literal \"$\")", truncate("${"+expr+"}", 80))
		}
		if strings.Contains(def, "${") {
			return "", false, errors.New(`nested "${" in a default value is not supported`)
		}
		val, ok := lookup(name)
		switch {
		case hasDef && (!ok || val == ""):
			val = def
		case !ok:
			return "", false, fmt.Errorf("environment variable %s is not set (use ${%s:-default} to give a default)", name, name)
		}
		b.WriteString(val)
		fromEnv = true
		i += 2 + end + 1
	}
	return b.String(), fromEnv, nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
