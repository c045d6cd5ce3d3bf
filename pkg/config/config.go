// Package config loads Plume pipeline configuration files.
//
// One YAML file describes one pipeline. Parsing is strict: unknown keys,
// duplicate keys, values of the wrong type and invalid values are errors,
// and every error names the file, line, column and key path:
//
//	pipeline.yaml:12:5: routes[0].to[1]: unknown target "crmx" (defined: crm, erp)
//
// Errors are *Error values, or an ErrorList (sorted by position) when a file
// has several. Scalar values may reference environment variables as ${VAR}
// or ${VAR:-default}; $$ is a literal $.
//
// Defaults are applied by applyDefaults and checks made by validate, both
// run by Parse. docs/config.md is the reference for users.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses the pipeline file at path. See Parse.
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		return nil, &Error{File: path, Msg: "cannot read config file: " + msg, Err: err}
	}
	return Parse(path, data)
}

// Parse parses a pipeline file's contents; filename is used in error
// messages and to resolve relative paths (state_dir, TLS files), which are
// relative to filepath.Dir(filename).
//
// Environment variables are interpolated, defaults applied and the result
// validated. The returned error is a *Error or, if there are several
// errors, an ErrorList sorted by position; structural errors (malformed
// YAML, unknown keys, wrong types, unset variables) are reported without the
// semantic checks, which run only on a structurally valid file.
func Parse(filename string, data []byte) (*Pipeline, error) {
	root, err := parseYAML(filename, data)
	if err != nil {
		return nil, err
	}
	d := &decoder{file: filename, lines: strings.Split(string(data), "\n")}
	d.meta = &meta{root: d.pos(root), entries: make(map[string]metaEntry)}
	d.interpolate(root, "", 0)
	p := &Pipeline{File: filename, Dir: filepath.Dir(filename)}
	d.decodeStruct(root, reflect.ValueOf(p).Elem(), "", nil)
	if err := d.result(); err != nil {
		return nil, err
	}
	p.meta = d.meta
	for i := range p.Routes {
		p.Routes[i].Index = i
	}
	applyDefaults(p)
	if err := sortErrors(validate(p)); err != nil {
		return nil, err
	}
	resolvePaths(p)
	return p, nil
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// parseYAML parses data as exactly one YAML document whose root is a
// mapping.
func parseYAML(filename string, data []byte) (root *yaml.Node, err error) {
	// yaml.v3 reports errors by panicking internally and recovering; guard
	// against one escaping on hostile input.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &Error{File: filename, Line: 1, Msg: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{File: filename, Line: 1, Msg: "empty config file"}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, &Error{File: filename, Line: 1, Msg: "empty config file (only comments)"}
		}
		return nil, yamlError(filename, data, err)
	}
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, yamlError(filename, data, err)
		}
		if len(extra.Content) == 1 && isNull(extra.Content[0]) && extra.Content[0].Value == "" {
			continue // a trailing "---" with nothing after it
		}
		return nil, &Error{File: filename, Line: extra.Line, Column: extra.Column,
			Msg: "multiple YAML documents in one file: a pipeline file holds exactly one document (one pipeline per file)"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, &Error{File: filename, Line: 1, Msg: "empty config file"}
	}
	root = doc.Content[0]
	if root.Kind == yaml.AliasNode && root.Alias != nil {
		root = root.Alias
	}
	switch {
	case isNull(root):
		return nil, &Error{File: filename, Line: 1, Msg: "empty config file"}
	case root.Kind != yaml.MappingNode:
		return nil, &Error{File: filename, Line: root.Line, Column: root.Column,
			Msg: "expected a mapping of keys (name, state_dir, source, ...) at the top level, got " + describe(root)}
	}
	return root, nil
}

// yamlError turns a yaml.v3 parse error into an *Error with a line number.
func yamlError(filename string, data []byte, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else if name, ok := strings.CutPrefix(msg, "unknown anchor '"); ok {
		name = strings.TrimSuffix(name, "' referenced")
		line = lineOf(data, bytes.Index(data, []byte("*"+name)))
	} else if strings.Contains(msg, "UTF-8") || strings.Contains(msg, "control characters") {
		line = lineOf(data, badByteOffset(data))
	}
	if line <= 0 {
		// yaml.v3 leaves out the line number for errors on the first line.
		line = 1
	}
	return &Error{File: filename, Line: line, Msg: "invalid YAML: " + msg, Err: err}
}

// lineOf returns the 1-based line of a byte offset (0 for a negative one).
func lineOf(data []byte, off int) int {
	if off < 0 || off > len(data) {
		return 0
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// badByteOffset returns the offset of the first byte yaml rejects (invalid
// UTF-8 or a control character), or -1.
func badByteOffset(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f {
			return i
		}
		i += size
	}
	return -1
}

// cleanYAMLError strips yaml.v3's "yaml: " and "line N: " prefixes (the
// position is reported separately).
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	var msgs []string
	if errors.As(err, &te) {
		msgs = append([]string(nil), te.Errors...)
	} else {
		msgs = []string{err.Error()}
	}
	for i, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			m = sm[2]
		}
		msgs[i] = m
	}
	return strings.Join(msgs, "; ")
}

// resolvePaths makes relative file paths relative to the config file's
// directory.
func resolvePaths(p *Pipeline) {
	res := func(s *string) {
		if *s != "" && !filepath.IsAbs(*s) {
			*s = filepath.Join(p.Dir, *s)
		}
	}
	res(&p.StateDir)
	for _, t := range []*TLS{&p.Source.TLS, &p.Kafka.TLS.TLS} {
		res(&t.CAFile)
		res(&t.CertFile)
		res(&t.KeyFile)
	}
}
