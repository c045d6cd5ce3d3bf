package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that it returns either a
// pipeline or an error, that every error is a *Error (or an ErrorList of
// them) naming the file, and that a pipeline it accepts satisfies the
// validation rules and can be printed and have its targets decoded.
//
//	go test ./pkg/config -run XXX -fuzz FuzzParse -fuzztime 30s
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(base))
	f.Add([]byte(pgBase))
	f.Add([]byte(targetsYAML))
	for _, cases := range [][]errCase{malformedCases, unknownKeyCases, wrongTypeCases, validationCases} {
		for _, c := range cases {
			f.Add([]byte(c.yaml))
		}
	}
	for _, s := range []string{
		"a: &a [*a]\nname: *a\n",
		"a: &a {<<: *a}\nsource: *a\n",
		"source: &s {type: mysql, <<: *s}\n",
		"name: ${X:-a}$$${Y:-}\n",
		"name: \"${\"\n",
		"? [a]\n: b\n",
		"name: !!binary aGk=\n",
		"%YAML 1.2\n---\nname: a\n...\n",
		"\xef\xbb\xbfname: a\n",
		"targets:\n  t: {type: x, <<: [{a: 1}, {b: 2}]}\n",
		"routes:\n- &r {name: a, to: [t]}\n- *r\n",
		"source: {keys: {a.b: [x, x]}, tables: ['a.*'], type: mysql, dsn: x}\nname: a\nstate_dir: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const file = "fuzz.yaml"
		p, err := Parse(file, data)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned both a pipeline and an error: %v", err)
			}
			checkFuzzError(t, file, err)
			return
		}
		if p == nil {
			t.Fatal("Parse returned neither a pipeline nor an error")
		}
		if !regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`).MatchString(p.Name) || p.StateDir == "" || len(p.Source.Tables) == 0 || p.Source.DSN == "" {
			t.Fatalf("accepted an invalid pipeline: %+v", p)
		}
		if p.Source.Type != SourceMySQL && p.Source.Type != SourcePostgres {
			t.Fatalf("accepted source type %q", p.Source.Type)
		}
		if p.Source.Type == SourceMySQL && p.Source.ServerID == 0 {
			t.Fatal("mysql source without a server id")
		}
		for _, r := range p.Routes {
			if len(r.To) == 0 || r.When == "" {
				t.Fatalf("accepted route %+v", r)
			}
			for _, to := range r.To {
				if _, ok := p.Targets[to]; !ok {
					t.Fatalf("route %q goes to unknown target %q", r.Name, to)
				}
			}
		}
		if p.Kafka.Topics.Partitions < 1 || p.Kafka.BatchMaxEvents < 1 || p.DLQTopic() == "" {
			t.Fatalf("accepted kafka %+v", p.Kafka)
		}
		_ = fmt.Sprintf("%v %+v %#v %s", p, p, p, p)
		if _, err := json.Marshal(p); err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		for _, name := range p.TargetNames() {
			var m map[string]any
			if err := p.Targets[name].Decode(&m); err != nil {
				checkFuzzError(t, file, err)
			}
			var s struct {
				DSN  DSN      `yaml:"dsn"`
				Keys []string `yaml:"key"`
				N    int      `yaml:"n"`
				D    Duration `yaml:"d"`
				Pos  Pos      `pos:"dsn"`
			}
			if err := p.Targets[name].Decode(&s); err != nil {
				checkFuzzError(t, file, err)
			}
		}
	})
}

func checkFuzzError(t *testing.T, file string, err error) {
	t.Helper()
	errs := Errors(err)
	if len(errs) == 0 {
		if !strings.Contains(err.Error(), file) {
			t.Fatalf("error %T does not name the file: %v", err, err)
		}
		return
	}
	var first *Error
	if !errors.As(err, &first) {
		t.Fatalf("errors.As(*Error) failed on %T", err)
	}
	for _, e := range errs {
		if e.File != file || !strings.HasPrefix(e.Error(), file+":") {
			t.Fatalf("error does not name the file: %q", e)
		}
		if e.Line < 0 || e.Column < 0 || e.Msg == "" {
			t.Fatalf("bad error %#v", e)
		}
	}
	if len(errs) > maxErrors {
		t.Fatalf("%d errors, more than the cap %d", len(errs), maxErrors)
	}
}
