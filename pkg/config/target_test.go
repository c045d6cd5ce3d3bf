package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type sqlOptions struct {
	DSN       DSN               `yaml:"dsn"`
	Table     string            `yaml:"table"`
	Key       []string          `yaml:"key"`
	BatchSize int               `yaml:"batch_size"`
	Timeout   time.Duration     `yaml:"timeout"`
	Flush     Duration          `yaml:"flush"`
	Upsert    *bool             `yaml:"upsert"`
	Columns   map[string]string `yaml:"columns"`
	Password  Secret            `yaml:"password"`
	Extra     any               `yaml:"extra"`
	Pos       Pos               // the target's position
	TablePos  Pos               `pos:"table"`
	internal  int               //nolint:unused // unexported fields are ignored
}

const targetsYAML = base + `targets:
  erp:
    type: sql
    dsn: "postgres://erp:${PLUME_T_ERP_PW:-pw}@h/erp"
    table: erp.products
    key: [sku]
    batch_size: 100
    timeout: 3s
    flush: 1s
    upsert: true
    columns: { ProductCode: sku }
    password: hunter2
    extra:
      a: [1, 2]
      b: ${PLUME_T_PORT:-5432}
`

func TestTargetDecode(t *testing.T) {
	t.Setenv("PLUME_T_ERP_PW", "fromenv")
	p := mustParse(t, targetsYAML)
	tg := p.Targets["erp"]
	opts := sqlOptions{BatchSize: 10, Table: "default"}
	if err := tg.Decode(&opts); err != nil {
		t.Fatal(err)
	}
	if opts.DSN.Reveal() != "postgres://erp:fromenv@h/erp" || opts.Table != "erp.products" ||
		!reflect.DeepEqual(opts.Key, []string{"sku"}) || opts.BatchSize != 100 || opts.Timeout != 3*time.Second ||
		opts.Flush.Duration != time.Second || opts.Upsert == nil || !*opts.Upsert ||
		opts.Columns["ProductCode"] != "sku" || opts.Password.Reveal() != "hunter2" {
		t.Errorf("decoded %+v", opts)
	}
	// Interpolated plain scalars are typed as if written in place.
	if want := map[string]any{"a": []any{1, 2}, "b": 5432}; !reflect.DeepEqual(opts.Extra, want) {
		t.Errorf("extra = %#v", opts.Extra)
	}
	if opts.Pos != (Pos{"p.yaml", 9, 5}) || opts.TablePos != (Pos{"p.yaml", 11, 12}) || tg.Pos != (Pos{"p.yaml", 8, 3}) {
		t.Errorf("positions %v %v %v", opts.Pos, opts.TablePos, tg.Pos)
	}

	// Defaults set before Decode survive for absent keys.
	p2 := mustParse(t, base+"targets:\n  erp: { type: sql }\n")
	opts2 := sqlOptions{BatchSize: 10}
	if err := p2.Targets["erp"].Decode(&opts2); err != nil || opts2.BatchSize != 10 {
		t.Errorf("%v %+v", err, opts2)
	}

	// Decoding into a map works too and leaves out type.
	var m map[string]any
	if err := tg.Decode(&m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["type"]; ok || m["table"] != "erp.products" {
		t.Errorf("map %v", m)
	}

	// Helpers for connectors' own checks.
	if err := tg.Errorf("table", "must not contain a dot"); err.Error() != "p.yaml:11:12: targets.erp.table: must not contain a dot" {
		t.Errorf("Errorf = %q", err)
	}
	if err := tg.Errorf("missing", "required"); err.Error() != "p.yaml:8:3: targets.erp.missing: required" {
		t.Errorf("Errorf = %q", err)
	}
	if !tg.Has("table") || tg.Has("tabel") || tg.Key("dsn") != "targets.erp.dsn" {
		t.Error("Has/Key")
	}
}

func TestTargetDecodeErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		into       func() any
		want       []string
	}{
		{"unknown key", base + "targets:\n  erp:\n    type: sql\n    dsn: x\n    tabel: t\n",
			func() any {
				return &struct {
					DSN   string   `yaml:"dsn"`
					Table string   `yaml:"table"`
					Key   []string `yaml:"key"`
				}{}
			},
			[]string{`p.yaml:11:5: targets.erp.tabel: unknown key (known: dsn, table, key); did you mean "table"?`}},
		{"wrong types, all reported in order", base + "targets:\n  erp: { type: sql, key: sku, batch_size: lots, timeout: 5, upsert: maybe }\n",
			func() any { return &sqlOptions{} },
			[]string{
				`p.yaml:8:26: targets.erp.key: expected a list, got a string`,
				`p.yaml:8:43: targets.erp.batch_size: expected an integer, got "lots"`,
				`p.yaml:8:58: targets.erp.timeout: invalid duration "5": want a number with a unit`,
				`p.yaml:8:69: targets.erp.upsert: expected a boolean (true or false), got "maybe"`,
			}},
		{"nested unknown key", base + "targets:\n  erp:\n    type: sql\n    pool: { max: 3, mix: 1 }\n",
			func() any {
				return &struct {
					Pool struct {
						Max int `yaml:"max"`
						Min int `yaml:"min"`
					} `yaml:"pool"`
				}{}
			},
			[]string{`p.yaml:10:21: targets.erp.pool.mix: unknown key (known: max, min); did you mean "max"?`}},
		{"map value type", base + "targets:\n  erp: { type: sql, a: 1, b: [x] }\n",
			func() any { return &map[string]int{} },
			[]string{`p.yaml:8:30: targets.erp.b: expected an integer, got a list`}},
		{"duplicate key", base + "targets:\n  erp:\n    type: sql\n    dsn: a\n    dsn: b\n",
			func() any { return &sqlOptions{} },
			[]string{`p.yaml:11:5: targets.erp.dsn: duplicate key (first defined at line 10)`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mustParse(t, c.yaml)
			err := p.Targets["erp"].Decode(c.into())
			errs := Errors(err)
			if len(errs) != len(c.want) {
				t.Fatalf("got %d errors, want %d: %v", len(errs), len(c.want), err)
			}
			for i, w := range c.want {
				if !strings.HasPrefix(errs[i].Error(), w) {
					t.Errorf("error %d\n got: %s\nwant: %s...", i, errs[i], w)
				}
			}
		})
	}
}

type inlineOptions struct {
	Common `yaml:",inline"`
	Name   string         `yaml:"name"`
	Rest   map[string]any `yaml:",inline"`
}

type Common struct {
	URL string `yaml:"url"`
}

type level int

func (l *level) UnmarshalText(b []byte) error {
	switch string(b) {
	case "low":
		*l = 1
	case "high":
		*l = 2
	default:
		return errors.New("want low or high")
	}
	return nil
}

type custom struct{ v string }

func (c *custom) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("custom wants a scalar")
	}
	c.v = "custom:" + n.Value
	return nil
}

func TestTargetDecodeExtensions(t *testing.T) {
	p := mustParse(t, base+"targets:\n  x: { type: t, url: u, name: n, other: 1, more: [a] }\n  y: { type: t, level: medium, c: [1] }\n  z: { type: t, level: high, c: hello }\n")
	var in inlineOptions
	if err := p.Targets["x"].Decode(&in); err != nil {
		t.Fatal(err)
	}
	if in.URL != "u" || in.Name != "n" || !reflect.DeepEqual(in.Rest, map[string]any{"other": 1, "more": []any{"a"}}) {
		t.Errorf("inline %+v", in)
	}
	type lc struct {
		Level level  `yaml:"level"`
		C     custom `yaml:"c"`
	}
	var bad lc
	err := p.Targets["y"].Decode(&bad)
	want := "p.yaml:9:24: targets.y.level: invalid value \"medium\": want low or high\np.yaml:9:35: targets.y.c: custom wants a scalar"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	var good lc
	if err := p.Targets["z"].Decode(&good); err != nil || good.Level != 2 || good.C.v != "custom:hello" {
		t.Errorf("%v %+v", err, good)
	}
	if err := p.Targets["z"].Decode(good); err == nil {
		t.Error("Decode into a non-pointer succeeded")
	}
	var n int
	if err := p.Targets["z"].Decode(&n); err == nil {
		t.Error("Decode into *int succeeded")
	}
}

func TestTargetPrinting(t *testing.T) {
	p := mustParse(t, targetsYAML)
	tg := p.Targets["erp"]
	for _, s := range []string{fmt.Sprint(tg), fmt.Sprintf("%+v %#v %s", tg, tg, tg)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "erp.products") || !strings.Contains(s, `"erp"`) {
			t.Errorf("printed %q", s)
		}
	}
	b, _ := json.Marshal(tg)
	if string(b) != `{"name":"erp","type":"sql"}` {
		t.Errorf("json %s", b)
	}
	// A hand-made Target has nothing to decode.
	if err := (Target{Name: "x", Type: "t"}).Decode(&sqlOptions{}); err != nil {
		t.Error(err)
	}
}

func TestTargetExpressionPos(t *testing.T) {
	src := base + "targets:\r\n  sf:\r\n    type: salesforce\r\n    mapping: |\r\n\r\n      {\"Name\": after.name}\r\n    filter: 'op == \"insert\"'\r\n"
	p := mustParse(t, src)
	var o struct {
		Mapping    string `yaml:"mapping"`
		Filter     string `yaml:"filter"`
		MappingPos Pos    `pos:"mapping"`
		FilterPos  Pos    `pos:"filter"`
	}
	if err := p.Targets["sf"].Decode(&o); err != nil {
		t.Fatal(err)
	}
	if o.MappingPos != (Pos{"p.yaml", 12, 7}) || o.FilterPos != (Pos{"p.yaml", 13, 14}) {
		t.Errorf("positions %v %v", o.MappingPos, o.FilterPos)
	}
	if o.Mapping != "\n{\"Name\": after.name}\n" {
		t.Errorf("mapping %q", o.Mapping)
	}
}
