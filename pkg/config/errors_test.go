package config

import (
	"errors"
	"strings"
	"testing"
)

// base is a valid minimal pipeline; test cases append to it from line 7.
const base = `name: shop
state_dir: ./data
source:
  type: mysql
  dsn: "root@tcp(127.0.0.1:3306)/"
  tables: [shop.products]
`

// pgBase is base for a postgres source.
const pgBase = `name: shop
state_dir: ./data
source:
  type: postgres
  dsn: "postgres://postgres@127.0.0.1:5432/shop"
  tables: [public.products]
`

// twoTargets is appended to base (lines 7-9).
const twoTargets = `targets:
  crm: { type: salesforce }
  erp: { type: sql }
`

type errCase struct {
	name string
	yaml string
	// want is the exact beginning of the first error's message:
	// "p.yaml:LINE:COL: key: message-prefix".
	want string
}

func runErrCases(t *testing.T, cases []errCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want error %q", p, tc.want)
			}
			if p != nil {
				t.Errorf("Parse returned a pipeline along with an error")
			}
			errs := Errors(err)
			if len(errs) == 0 {
				t.Fatalf("error %T %q carries no *config.Error", err, err)
			}
			var first *Error
			if !errors.As(err, &first) || first != errs[0] {
				t.Fatalf("errors.As did not find the first *Error")
			}
			if got := errs[0].Error(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("first error\n got: %s\nwant: %s...\n(all: %v)", got, tc.want, err)
			}
			for _, e := range errs {
				if e.File != "p.yaml" {
					t.Errorf("error %q has File %q", e, e.File)
				}
			}
		})
	}
}

var malformedCases = []errCase{
	{"empty", "", "p.yaml:1: empty config file"},
	{"blank", "\n  \n\t\n", "p.yaml:1: empty config file"},
	{"only comments", "# nothing\n# here\n", "p.yaml:1: empty config file"},
	{"only document marker", "---\n", "p.yaml:1: empty config file"},
	{"unclosed flow list", base + "routes: [\n", "p.yaml:7: invalid YAML: did not find expected node content"},
	{"unclosed flow on line 1", "name: [unclosed\n", "p.yaml:1: invalid YAML: did not find expected ',' or ']'"},
	{"tab indentation", "name: a\nsource:\n\ttype: x\n", "p.yaml:3: invalid YAML: found character that cannot start any token"},
	{"bad indentation", "name: a\nstate_dir: b\n  x: y\n", "p.yaml:3: invalid YAML: mapping values are not allowed in this context"},
	{"unknown anchor", base + "log: *nope\n", "p.yaml:7: invalid YAML: unknown anchor 'nope' referenced"},
	{"control character", base + "log: {level: \"a\x01\"}\n", "p.yaml:7: invalid YAML: control characters are not allowed"},
	{"multiple documents", base + "---\nname: other\n", "p.yaml:7:1: multiple YAML documents in one file"},
	{"top-level list", "- name: a\n", "p.yaml:1:1: expected a mapping of keys (name, state_dir, source, ...) at the top level, got a list"},
	{"top-level scalar", "hello\n", "p.yaml:1:1: expected a mapping of keys (name, state_dir, source, ...) at the top level, got a string"},
}

func TestMalformedYAML(t *testing.T) { runErrCases(t, malformedCases) }

var unknownKeyCases = []errCase{
	{"top level", base + "nmae: x\n",
		`p.yaml:7:1: nmae: unknown key (known: name, state_dir, log, source, kafka, routes, targets, dlq, admin, metrics, tracing); did you mean "name"?`},
	{"in source", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tabels: [a.b]\n",
		`p.yaml:6:3: source.tabels: unknown key (known: type, dsn, tables, snapshot,`},
	{"case matters", base + "Log: {level: info}\n", `p.yaml:7:1: Log: unknown key (known: `},
	{"in flow mapping", base + "log: { level: info, colour: true }\n", `p.yaml:7:21: log.colour: unknown key (known: level, format)`},
	{"in kafka tls (inline struct)", base + "kafka:\n  brokers: [h:9092]\n  tls:\n    enabeld: true\n",
		`p.yaml:10:5: kafka.tls.enabeld: unknown key (known: enabled, ca_file, cert_file, key_file, server_name, insecure_skip_verify); did you mean "enabled"?`},
	{"in route", base + twoTargets + "routes:\n  - name: r\n    too: [crm]\n",
		`p.yaml:12:5: routes[0].too: unknown key (known: name, when, to, map, drop, mask); did you mean "to"?`},
	{"in second route", base + twoTargets + "routes:\n  - name: a\n    to: [crm]\n  - name: b\n    to: [crm]\n    wen: x\n",
		`p.yaml:15:5: routes[1].wen: unknown key`},
	{"in kafka topics", base + "kafka:\n  topics: { partitions: 1, config: {} }\n",
		`p.yaml:8:28: kafka.topics.config: unknown key (known: partitions, replication_factor, configs); did you mean "configs"?`},
	{"in admin", base + "admin: { listen: \"127.0.0.1:1\", tokn: x }\n", `p.yaml:7:33: admin.tokn: unknown key (known: listen, token)`},
	{"in dlq", base + "dlq:\n  name: x\n", `p.yaml:8:3: dlq.name: unknown key (known: topic)`},
	{"duplicate key", base + "log: {level: info}\nname: again\n", `p.yaml:8:1: name: duplicate key (first defined at line 1)`},
	{"duplicate nested key", base + "kafka:\n  mode: binary\n  mode: structured\n", `p.yaml:9:3: kafka.mode: duplicate key (first defined at line 8)`},
	{"duplicate map key", base + "targets:\n  crm: {type: x}\n  crm: {type: y}\n", `p.yaml:9:3: targets.crm: duplicate key (first defined at line 8)`},
	{"merge keys from nowhere", base + "kafka: { <<: [1] }\n", `p.yaml:7:15: kafka: merge key (<<) value must be a mapping or a list of mappings`},
	{"non-string key", base + "log: { [a]: b }\n", `p.yaml:7:8: log: mapping keys must be strings, got a list`},
}

func TestUnknownKeys(t *testing.T) { runErrCases(t, unknownKeyCases) }

var wrongTypeCases = []errCase{
	{"string for list", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: shop.products\n",
		`p.yaml:6:11: source.tables: expected a list, got a string`},
	{"list for string", "name: [a, b]\n", `p.yaml:1:7: name: expected a string, got a list`},
	{"mapping for string", base + "state_dir: {a: b}\n", `p.yaml:7:1: state_dir: duplicate key`},
	{"mapping for string 2", "name: {a: b}\n", `p.yaml:1:7: name: expected a string, got a mapping`},
	{"string for mapping", base + "kafka: yes\n", `p.yaml:7:8: kafka: expected a mapping, got a string`},
	{"list for mapping", base + "log: [info]\n", `p.yaml:7:6: log: expected a mapping, got a list`},
	{"mapping for list", base + "routes: {a: b}\n", `p.yaml:7:9: routes: expected a list, got a mapping`},
	{"string for route to", base + twoTargets + "routes:\n  - name: r\n    to: crm\n",
		`p.yaml:12:9: routes[0].to: expected a list, got a string`},
	{"not an integer", base + "kafka:\n  batch_max_events: many\n", `p.yaml:8:21: kafka.batch_max_events: expected an integer, got "many"`},
	{"float for integer", base + "kafka:\n  batch_max_events: 1.5\n", `p.yaml:8:21: kafka.batch_max_events: expected an integer, got "1.5"`},
	{"integer out of range", base + "kafka:\n  topics: { replication_factor: 70000 }\n",
		`p.yaml:8:33: kafka.topics.replication_factor: 70000 is out of range [-32768, 32767]`},
	{"negative uint", base + "  server_id: -1\n", `p.yaml:7:14: source.server_id: must not be negative`},
	{"uint out of range", base + "  server_id: 4294967296\n", `p.yaml:7:14: source.server_id: 4294967296 is out of range [0, 4294967295]`},
	{"not a boolean", base + "kafka:\n  tombstones: yes\n", `p.yaml:8:15: kafka.tombstones: expected a boolean (true or false), got "yes"`},
	{"list for boolean", base + "kafka:\n  tombstones: [true]\n", `p.yaml:8:15: kafka.tombstones: expected a boolean (true or false), got a list`},
	{"duration without unit", base + "  heartbeat_interval: 10\n",
		`p.yaml:7:23: source.heartbeat_interval: invalid duration "10": want a number with a unit, e.g. "10s" or "50ms"`},
	{"bad duration", base + "kafka:\n  batch_linger: soon\n", `p.yaml:8:17: kafka.batch_linger: invalid duration "soon"`},
	{"list in keys", base + "  keys: { shop.products: id }\n", `p.yaml:7:26: source.keys["shop.products"]: expected a list, got a string`},
	{"mapping in mask", base + twoTargets + "routes:\n  - name: r\n    to: [crm]\n    mask: { email: [hash] }\n",
		`p.yaml:13:20: routes[0].mask.email: expected a string, got a list`},
	{"target not a mapping", base + "targets:\n  crm: salesforce\n", `p.yaml:8:8: targets.crm: expected a mapping with a type, got a string`},
	{"target type not a string", base + "targets:\n  crm: { type: [a] }\n", `p.yaml:8:16: targets.crm.type: expected a string, got a list`},
	{"binary tag", "name: !!binary aGVsbG8=\n", `p.yaml:1:7: name: expected a string, got a value tagged !!binary`},
	{"custom tag", "name: !env NAME\n", `p.yaml:1:7: name: expected a string, got a value tagged !env`},
}

func TestWrongTypes(t *testing.T) { runErrCases(t, wrongTypeCases) }

var validationCases = []errCase{
	{"name required", "state_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: [a.b]\n", `p.yaml:1:1: name: required`},
	{"name empty", "name: ''\n" + base[len("name: shop\n"):], `p.yaml:1:7: name: required`},
	{"name invalid", "name: Shop Sync\n" + base[len("name: shop\n"):], `p.yaml:1:7: name: invalid name "Shop Sync": want 1-63 characters`},
	{"name too long", "name: " + strings.Repeat("a", 64) + "\n" + base[len("name: shop\n"):], `p.yaml:1:7: name: invalid name`},
	{"name leading dash", "name: -shop\n" + base[len("name: shop\n"):], `p.yaml:1:7: name: invalid name`},
	{"state_dir required", "name: shop\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: [a.b]\n", `p.yaml:1:1: state_dir: required`},
	{"source required", "name: shop\nstate_dir: d\n", `p.yaml:1:1: source: required`},
	{"source type required", "name: shop\nstate_dir: d\nsource:\n  dsn: x@tcp(h:1)/\n  tables: [a.b]\n", `p.yaml:3:1: source.type: required`},
	{"source type invalid", "name: shop\nstate_dir: d\nsource:\n  type: oracle\n  dsn: x@tcp(h:1)/\n  tables: [a.b]\n",
		`p.yaml:4:9: source.type: invalid value "oracle" (want mysql or postgres)`},
	{"dsn required", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  tables: [a.b]\n", `p.yaml:3:1: source.dsn: required`},
	{"dsn of the wrong kind", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: postgres://h/db\n  tables: [a.b]\n",
		`p.yaml:5:8: source.dsn: a postgres:// DSN for a mysql source`},
	{"tables required", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n", `p.yaml:3:1: source.tables: required`},
	{"tables empty", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: []\n", `p.yaml:6:11: source.tables: required`},
	{"table without db", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: [shop.a, products]\n",
		`p.yaml:6:20: source.tables[1]: invalid table "products": want "db.table"`},
	{"table with two dots", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables:\n    - a.b.c\n",
		`p.yaml:7:7: source.tables[0]: invalid table "a.b.c": want exactly one '.'`},
	{"duplicate table", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: [a.b, a.b]\n",
		`p.yaml:6:17: source.tables[1]: duplicate table "a.b" (also source.tables[0])`},
	{"snapshot", base + "  snapshot: sometimes\n", `p.yaml:7:13: source.snapshot: invalid value "sometimes" (want initial or never)`},
	{"snapshot workers zero", base + "  snapshot_workers: 0\n", `p.yaml:7:21: source.snapshot_workers: must be at least 1, got 0`},
	{"chunk size negative", base + "  snapshot_chunk_size: -5\n", `p.yaml:7:24: source.snapshot_chunk_size: must be at least 1, got -5`},
	{"negative heartbeat", base + "  heartbeat_interval: -1s\n", `p.yaml:7:23: source.heartbeat_interval: must not be negative`},
	{"keys for excluded table", base + "  keys: { \"shop.events\": [tenant, id] }\n",
		`p.yaml:7:11: source.keys["shop.events"]: table "shop.events" is not included by source.tables`},
	{"keys with glob", base + "  keys: { \"shop.*\": [id] }\n", `p.yaml:7:11: source.keys["shop.*"]: invalid table "shop.*": must name one table`},
	{"keys without columns", base + "  keys: { shop.products: [] }\n", `p.yaml:7:26: source.keys["shop.products"]: list at least one key column`},
	{"slot for mysql", base + "  slot: myslot\n", `p.yaml:7:9: source.slot: only valid for postgres sources (source.type is mysql)`},
	{"publication for mysql", base + "  publication: pub\n", `p.yaml:7:16: source.publication: only valid for postgres sources (source.type is mysql)`},
	{"server_id for postgres", pgBase + "  server_id: 1234\n", `p.yaml:7:14: source.server_id: only valid for mysql sources (source.type is postgres)`},
	{"bad slot name", pgBase + "  slot: My-Slot\n", `p.yaml:7:9: source.slot: invalid replication slot name "My-Slot"`},
	{"cert without key", base + "  tls: { cert_file: c.pem }\n", `p.yaml:7:3: source.tls.key_file: required when cert_file is set`},
	{"log level", base + "log: { level: verbose }\n", `p.yaml:7:15: log.level: invalid value "verbose" (want debug, info, warn or error)`},
	{"log format", base + "log:\n  format: xml\n", `p.yaml:8:11: log.format: invalid value "xml" (want text or json)`},
	{"kafka mode", base + "kafka:\n  mode: avro\n", `p.yaml:8:9: kafka.mode: invalid value "avro" (want binary or structured)`},
	{"kafka compression", base + "kafka:\n  compression: brotli\n", `p.yaml:8:16: kafka.compression: invalid value "brotli" (want none, gzip, snappy, lz4 or zstd)`},
	{"kafka oversize", base + "kafka:\n  oversize: drop\n", `p.yaml:8:13: kafka.oversize: invalid value "drop" (want fail or dlq)`},
	{"sasl mechanism", base + "kafka:\n  brokers: [\"k:9092\"]\n  sasl: { mechanism: GSSAPI, username: u, password: p }\n",
		`p.yaml:9:22: kafka.sasl.mechanism: invalid value "GSSAPI" (want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)`},
	{"sasl password required", base + "kafka:\n  brokers: [\"k:9092\"]\n  sasl: { mechanism: PLAIN, username: u }\n",
		`p.yaml:9:3: kafka.sasl.password: required`},
	{"sasl without brokers", base + "kafka:\n  sasl: { mechanism: PLAIN, username: u, password: p }\n",
		`p.yaml:8:9: kafka.sasl: only valid with kafka.brokers`},
	{"embedded with brokers", base + "kafka:\n  brokers: [\"k:9092\"]\n  embedded: { listen: \"127.0.0.1:9000\" }\n",
		`p.yaml:9:13: kafka.embedded: only valid without kafka.brokers`},
	{"bad broker", base + "kafka:\n  brokers: [\"k:9092\", kafka]\n", `p.yaml:8:23: kafka.brokers[1]: invalid broker address "kafka": want host:port`},
	{"bad embedded listen", base + "kafka:\n  embedded: { listen: \"localhost\" }\n", `p.yaml:8:23: kafka.embedded.listen: invalid address "localhost"`},
	{"partitions", base + "kafka:\n  topics: { partitions: 0 }\n", `p.yaml:8:25: kafka.topics.partitions: must be at least 1, got 0`},
	{"replication factor", base + "kafka:\n  topics: { replication_factor: 0 }\n",
		`p.yaml:8:33: kafka.topics.replication_factor: must be -1 (broker default) or at least 1, got 0`},
	{"topic prefix", base + "kafka:\n  topic_prefix: \"a/b\"\n", `p.yaml:8:17: kafka.topic_prefix: invalid Kafka topic name "a/b"`},
	{"buffer smaller than message", base + "kafka:\n  max_buffered_bytes: 1000\n",
		`p.yaml:8:23: kafka.max_buffered_bytes: must be at least kafka.max_message_bytes (1048576), got 1000`},
	{"route name required", base + twoTargets + "routes:\n  - to: [crm]\n", `p.yaml:11:5: routes[0].name: required`},
	{"route name invalid", base + twoTargets + "routes:\n  - name: Price Changes\n    to: [crm]\n",
		`p.yaml:11:11: routes[0].name: invalid route name "Price Changes"`},
	{"route names unique", base + twoTargets + "routes:\n  - name: r\n    to: [crm]\n  - name: r\n    to: [erp]\n",
		`p.yaml:13:11: routes[1].name: duplicate route name "r" (also routes[0])`},
	{"route to required", base + twoTargets + "routes:\n  - name: r\n", `p.yaml:11:5: routes[0].to: required: list at least one target`},
	{"route to empty", base + twoTargets + "routes:\n  - name: r\n    to: []\n", `p.yaml:12:9: routes[0].to: required: list at least one target`},
	{"route unknown target", base + twoTargets + "routes:\n  - name: r\n    to: [crm, crmx]\n",
		`p.yaml:12:15: routes[0].to[1]: unknown target "crmx" (defined: crm, erp)`},
	{"route target without targets", base + "routes:\n  - name: r\n    to: [crm]\n",
		`p.yaml:9:10: routes[0].to[0]: unknown target "crm" (no targets are defined)`},
	{"route duplicate target", base + twoTargets + "routes:\n  - name: r\n    to: [crm, crm]\n",
		`p.yaml:12:15: routes[0].to[1]: duplicate target "crm" (also to[0])`},
	{"mask value", base + twoTargets + "routes:\n  - name: r\n    to: [crm]\n    mask: { email: hash, phone: blur }\n",
		`p.yaml:13:33: routes[0].mask.phone: invalid value "blur" (want hash or redact)`},
	{"drop and mask", base + twoTargets + "routes:\n  - name: r\n    to: [crm]\n    drop: [email]\n    mask: { email: hash }\n",
		`p.yaml:14:13: routes[0].mask.email: column "email" is both dropped and masked`},
	{"blank when", base + twoTargets + "routes:\n  - name: r\n    when: '  '\n    to: [crm]\n", `p.yaml:12:11: routes[0].when: blank expression`},
	{"target name", base + "targets:\n  CRM: { type: salesforce }\n", `p.yaml:8:3: targets.CRM: invalid target name "CRM"`},
	{"target name with dot", base + "targets:\n  crm.eu: { type: salesforce }\n", `p.yaml:8:3: targets["crm.eu"]: invalid target name "crm.eu"`},
	{"target type required", base + "targets:\n  crm: { object: x }\n", `p.yaml:8:3: targets.crm.type: required`},
	{"dlq topic", base + "dlq: { topic: \"bad topic\" }\n", `p.yaml:7:15: dlq.topic: invalid Kafka topic name "bad topic"`},
	{"admin listen", base + "admin: { listen: \":http\" }\n", `p.yaml:7:18: admin.listen: invalid port in ":http"`},
	{"metrics listen", base + "metrics:\n  listen: nowhere\n", `p.yaml:8:11: metrics.listen: invalid address "nowhere"`},
	{"otlp endpoint", base + "tracing:\n  otlp: { endpoint: \"collector:4318\" }\n", `p.yaml:8:21: tracing.otlp.endpoint: invalid endpoint "collector:4318": want http://host:port or https://host:port (OTLP/HTTP)`},
	{"otlp ratio", base + "tracing:\n  otlp: { endpoint: \"http://c:4318\", sample_ratio: 2 }\n", `p.yaml:8:52: tracing.otlp.sample_ratio: must be between 0 and 1, got 2`},
}

func TestValidation(t *testing.T) { runErrCases(t, validationCases) }

func TestErrorsAreSortedAndComplete(t *testing.T) {
	src := base + "kafka:\n  mode: avro\n  compression: brotli\nlog: { level: loud }\n"
	_, err := Parse("p.yaml", []byte(src))
	errs := Errors(err)
	want := []string{
		`p.yaml:8:9: kafka.mode: invalid value "avro"`,
		`p.yaml:9:16: kafka.compression: invalid value "brotli"`,
		`p.yaml:10:15: log.level: invalid value "loud"`,
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(errs[i].Error(), w) {
			t.Errorf("error %d = %q, want prefix %q", i, errs[i], w)
		}
	}
	var l ErrorList
	if !errors.As(err, &l) || len(l) != 3 {
		t.Fatalf("want an ErrorList of 3, got %T", err)
	}
	if got := strings.Count(err.Error(), "\n"); got != 2 {
		t.Errorf("ErrorList message has %d newlines, want 2", got)
	}
	// Deterministic: the same input gives the same message.
	for range 20 {
		_, err2 := Parse("p.yaml", []byte(src))
		if err2.Error() != err.Error() {
			t.Fatalf("non-deterministic errors:\n%v\n---\n%v", err, err2)
		}
	}
}

func TestStructuralErrorsSuppressValidation(t *testing.T) {
	// A misspelt key is reported alone, not followed by "tables: required".
	src := "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tabels: [a.b]\n"
	_, err := Parse("p.yaml", []byte(src))
	if errs := Errors(err); len(errs) != 1 {
		t.Fatalf("got %d errors, want 1: %v", len(errs), err)
	}
}

func TestErrorFormat(t *testing.T) {
	cases := []struct {
		e    Error
		want string
	}{
		{Error{File: "a.yaml", Line: 3, Column: 5, Key: "x.y", Msg: "bad"}, "a.yaml:3:5: x.y: bad"},
		{Error{File: "a.yaml", Line: 3, Msg: "bad"}, "a.yaml:3: bad"},
		{Error{File: "a.yaml", Msg: "bad"}, "a.yaml: bad"},
		{Error{Key: "k", Msg: "bad"}, "<config>: k: bad"},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	inner := errors.New("boom")
	err := Pos{File: "f.yaml", Line: 4, Column: 9}.Errorf("routes[0].when", "does not compile: %w", inner)
	if got, want := err.Error(), "f.yaml:4:9: routes[0].when: does not compile: boom"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if !errors.Is(err, inner) {
		t.Error("Pos.Errorf does not wrap %w")
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Line != 4 || ce.Key != "routes[0].when" {
		t.Errorf("Pos.Errorf: got %#v", ce)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	var ce *Error
	if !errors.As(err, &ce) || ce.File != "testdata/does-not-exist.yaml" {
		t.Fatalf("got %v", err)
	}
	if got, want := err.Error(), "testdata/does-not-exist.yaml: cannot read config file: no such file or directory"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParentPath(t *testing.T) {
	cases := map[string]string{
		"name":                             "",
		"source.dsn":                       "source",
		"routes[0]":                        "routes",
		"routes[0].to[1]":                  "routes[0].to",
		`source.keys["shop.events"]`:       "source.keys",
		`source.keys["a\"].b"][0]`:         `source.keys["a\"].b"]`,
		`kafka.topics.configs["x.y"]`:      "kafka.topics.configs",
		`targets["crm.eu"].type`:           `targets["crm.eu"]`,
		`["weird key"]`:                    "",
		"kafka.tls.enabled":                "kafka.tls",
		"routes[12].mask.email":            "routes[12].mask",
		`routes[0].mask["e-mail address"]`: "routes[0].mask",
	}
	for in, want := range cases {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}
