package config

import (
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, src string) *Pipeline {
	t.Helper()
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	p := mustParse(t, base)
	checks := []struct {
		name      string
		got, want any
	}{
		{"Name", p.Name, "shop"},
		{"StateDir", p.StateDir, "data"},
		{"Log.Level", p.Log.Level, "info"},
		{"Log.Format", p.Log.Format, "text"},
		{"Source.Snapshot", p.Source.Snapshot, SnapshotInitial},
		{"Source.SnapshotWorkers", p.Source.SnapshotWorkers, 2},
		{"Source.SnapshotChunkSize", p.Source.SnapshotChunkSize, 10000},
		{"Source.HeartbeatInterval", p.Source.HeartbeatInterval.Duration, 10 * time.Second},
		{"Source.ServerID", p.Source.ServerID, DeriveServerID("shop")},
		{"Source.Slot", p.Source.Slot, ""},
		{"Source.Publication", p.Source.Publication, ""},
		{"Kafka.Embedded.Listen", p.Kafka.Embedded.Listen, "127.0.0.1:9092"},
		{"Kafka.TopicPrefix", p.Kafka.TopicPrefix, "shop"},
		{"Kafka.Topic", p.Kafka.Topic, ""},
		{"Kafka.Topics.Partitions", p.Kafka.Topics.Partitions, int32(1)},
		{"Kafka.Topics.ReplicationFactor", p.Kafka.Topics.ReplicationFactor, int16(-1)},
		{"Kafka.Mode", p.Kafka.Mode, ModeBinary},
		{"Kafka.Tombstones", p.Kafka.Tombstones, true},
		{"Kafka.Compression", p.Kafka.Compression, "zstd"},
		{"Kafka.BatchMaxEvents", p.Kafka.BatchMaxEvents, 5000},
		{"Kafka.BatchLinger", p.Kafka.BatchLinger.Duration, 50 * time.Millisecond},
		{"Kafka.MaxBufferedBytes", p.Kafka.MaxBufferedBytes, int64(16777216)},
		{"Kafka.MaxMessageBytes", p.Kafka.MaxMessageBytes, 1048576},
		{"Kafka.Oversize", p.Kafka.Oversize, OversizeFail},
		{"Kafka.TLS.Enabled", p.Kafka.TLS.Enabled, false},
		{"Kafka.SASL.Mechanism", p.Kafka.SASL.Mechanism, ""},
		{"DLQ.Topic", p.DLQ.Topic, "shop.shop.dlq"},
		{"Admin", p.Admin, (*Admin)(nil)},
		{"Metrics", p.Metrics, (*Metrics)(nil)},
		{"Embedded()", p.Embedded(), true},
		{"TopicPrefix()", p.TopicPrefix(), "shop"},
		{"DLQTopic()", p.DLQTopic(), "shop.shop.dlq"},
		{"CheckpointTopic()", p.CheckpointTopic(), "shop.shop.checkpoints"},
		{"TableTopic()", p.TableTopic("shop", "products"), "shop.shop.products"},
		{"ConsumerGroup()", p.ConsumerGroup("crm"), "plume.shop.crm"},
		{"TransactionalID()", p.TransactionalID(), "plume.shop.capture"},
		{"File", p.File, "p.yaml"},
		{"Dir", p.Dir, "."},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
}

func TestPostgresDefaults(t *testing.T) {
	p := mustParse(t, strings.Replace(pgBase, "name: shop", "name: shop-sync", 1))
	if p.Source.Slot != "plume_shop_sync" || p.Source.Publication != "plume_shop_sync" {
		t.Errorf("slot %q publication %q", p.Source.Slot, p.Source.Publication)
	}
	if p.Source.ServerID != 0 {
		t.Errorf("server id %d for postgres", p.Source.ServerID)
	}
}

func TestExplicitValuesKept(t *testing.T) {
	p := mustParse(t, base+`  heartbeat_interval: 0
  server_id: 4242
kafka:
  brokers: ["k1:9092"]
  tombstones: false
  topics: { replication_factor: 3 }
  tls: {}
routes:
  - name: r
    to: [crm]
targets:
  crm: { type: salesforce }
admin: {}
metrics: { listen: "0.0.0.0:9999" }
`)
	if p.Source.HeartbeatInterval.Duration != 0 {
		t.Errorf("heartbeat_interval: 0 became %v", p.Source.HeartbeatInterval)
	}
	if p.Source.ServerID != 4242 {
		t.Errorf("server_id %d", p.Source.ServerID)
	}
	if p.Kafka.Tombstones {
		t.Error("tombstones: false became true")
	}
	if p.Kafka.Topics.ReplicationFactor != 3 {
		t.Errorf("replication_factor %d", p.Kafka.Topics.ReplicationFactor)
	}
	if p.Kafka.Embedded.Listen != "" || p.Embedded() {
		t.Errorf("embedded listen %q with brokers", p.Kafka.Embedded.Listen)
	}
	if !p.Kafka.TLS.Enabled {
		t.Error("a kafka.tls block should enable TLS")
	}
	if p.Routes[0].When != "true" {
		t.Errorf("when default %q", p.Routes[0].When)
	}
	if p.Admin == nil || p.Admin.Listen != DefaultAdminListen {
		t.Errorf("admin %+v", p.Admin)
	}
	if p.Metrics == nil || p.Metrics.Listen != "0.0.0.0:9999" {
		t.Errorf("metrics %+v", p.Metrics)
	}
}

func TestFullExample(t *testing.T) {
	t.Setenv("PG_PASSWORD", "pgpw")
	p, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Source.DSN.Reveal(); got != "postgres://postgres:pgpw@127.0.0.1:5432/shop" {
		t.Errorf("dsn %q", got)
	}
	if got := p.Source.Tables; !reflect.DeepEqual(got, []string{"shop.products", "shop.orders", "shop.events_*"}) {
		t.Errorf("tables %q", got)
	}
	if !reflect.DeepEqual(p.Source.Keys, map[string][]string{"shop.events_2024": {"tenant", "id"}}) {
		t.Errorf("keys %v", p.Source.Keys)
	}
	if p.Source.HeartbeatInterval.Duration != 0 || p.Source.Snapshot != SnapshotNever || p.Source.SnapshotWorkers != 4 {
		t.Errorf("source %+v", p.Source)
	}
	if p.Source.Slot != "shop_slot" || p.Source.Publication != "shop_pub" {
		t.Errorf("slot/publication %q %q", p.Source.Slot, p.Source.Publication)
	}
	wantTLS := TLS{
		CAFile:     filepath.Join("testdata", "certs", "ca.pem"),
		CertFile:   filepath.Join("testdata", "certs", "client.pem"),
		KeyFile:    "/etc/plume/client.key",
		ServerName: "db.internal",
	}
	if p.Source.TLS != wantTLS {
		t.Errorf("source tls %+v, want %+v", p.Source.TLS, wantTLS)
	}
	if p.StateDir != filepath.Join("testdata", "data", "shop-sync") {
		t.Errorf("state_dir %q", p.StateDir)
	}
	k := p.Kafka
	if p.Embedded() || len(k.Brokers) != 2 || k.TopicPrefix != "plume" || k.Mode != ModeStructured || k.Tombstones ||
		k.Compression != "lz4" || k.BatchMaxEvents != 500 || k.BatchLinger.Duration != 10*time.Millisecond ||
		k.MaxBufferedBytes != 32<<20 || k.MaxMessageBytes != 2<<20 || k.Oversize != OversizeDLQ {
		t.Errorf("kafka %+v", k)
	}
	if k.Topics.Partitions != 3 || k.Topics.ReplicationFactor != 2 ||
		!reflect.DeepEqual(k.Topics.Configs, map[string]string{"cleanup.policy": "compact", "retention.ms": "604800000"}) {
		t.Errorf("topics %+v", k.Topics)
	}
	if !k.TLS.Enabled || k.TLS.CAFile != filepath.Join("testdata", "kafka-ca.pem") || k.TLS.ServerName != "kafka.internal" {
		t.Errorf("kafka tls %+v", k.TLS)
	}
	if k.SASL.Mechanism != SASLScramSHA512 || k.SASL.Username != "plume" || k.SASL.Password.Reveal() != "hunter2" {
		t.Errorf("sasl %+v", k.SASL)
	}
	if k.Topic != `table == "orders" ? "plume.orders" : ""` || k.TopicPos != (Pos{"testdata/full.yaml", 20, 11}) {
		t.Errorf("topic %q at %v", k.Topic, k.TopicPos)
	}
	if len(p.Routes) != 2 {
		t.Fatalf("routes %+v", p.Routes)
	}
	r := p.Routes[0]
	if r.Name != "price-changes" || !reflect.DeepEqual(r.To, []string{"crm"}) || !reflect.DeepEqual(r.Drop, []string{"ssn"}) ||
		!reflect.DeepEqual(r.Mask, map[string]string{"email": MaskHash, "phone": MaskRedact}) || r.Index != 0 {
		t.Errorf("route 0 %+v", r)
	}
	// Expression positions point at the first character of the expression.
	if r.Pos != (Pos{"testdata/full.yaml", 33, 5}) || r.WhenPos != (Pos{"testdata/full.yaml", 34, 12}) || r.MapPos != (Pos{"testdata/full.yaml", 36, 11}) {
		t.Errorf("route 0 positions %v %v %v", r.Pos, r.WhenPos, r.MapPos)
	}
	r = p.Routes[1]
	if r.When != "table == \"products\"\n" || r.WhenPos != (Pos{"testdata/full.yaml", 41, 7}) || r.MapPos != r.Pos || r.Index != 1 {
		t.Errorf("route 1 %+v", r)
	}
	if got := r.Key("when"); got != "routes[1].when" {
		t.Errorf("Key = %q", got)
	}
	if got := p.TargetNames(); !reflect.DeepEqual(got, []string{"crm", "erp"}) {
		t.Errorf("targets %v", got)
	}
	if erp := p.Targets["erp"]; erp.Name != "erp" || erp.Type != "sql" || erp.Pos != (Pos{"testdata/full.yaml", 45, 3}) {
		t.Errorf("erp %#v", erp)
	}
	if p.DLQTopic() != "plume.shop-sync.dead" || p.CheckpointTopic() != "plume.shop-sync.checkpoints" {
		t.Errorf("dlq %q checkpoints %q", p.DLQTopic(), p.CheckpointTopic())
	}
	if p.Admin.Listen != "127.0.0.1:8081" || p.Admin.Token.Reveal() != "tok3n" || p.Metrics.Listen != "127.0.0.1:9101" {
		t.Errorf("admin %+v metrics %+v", p.Admin, p.Metrics)
	}
	if p.Log.SlogLevel().String() != "DEBUG" {
		t.Errorf("log level %v", p.Log.SlogLevel())
	}
	if got := p.PosOf("source.dsn"); got != (Pos{"testdata/full.yaml", 7, 8}) {
		t.Errorf("PosOf(source.dsn) = %v", got)
	}
	if got := p.PosOf(`source.keys["shop.events_2024"]`); got.Line != 13 {
		t.Errorf("PosOf(keys) = %v", got)
	}
}

func TestDefaultDLQUsesPrefix(t *testing.T) {
	p := mustParse(t, base+"kafka: { topic_prefix: cdc }\n")
	if p.DLQTopic() != "cdc.shop.dlq" || p.CheckpointTopic() != "cdc.shop.checkpoints" || p.TableTopic("db", "t") != "cdc.db.t" {
		t.Errorf("dlq %q checkpoints %q", p.DLQTopic(), p.CheckpointTopic())
	}
	// The helpers also work on a Pipeline built by hand.
	q := &Pipeline{Name: "x"}
	if q.TopicPrefix() != "x" || q.DLQTopic() != "x.x.dlq" || !q.Embedded() {
		t.Errorf("hand-built: %q %q", q.TopicPrefix(), q.DLQTopic())
	}
}

func TestRelativePaths(t *testing.T) {
	p, err := Parse("/etc/plume/shop.yaml", []byte(base+"  tls: { ca_file: ca.pem, cert_file: /abs/c.pem, key_file: ../k.pem }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.StateDir != "/etc/plume/data" || p.Dir != "/etc/plume" {
		t.Errorf("state_dir %q dir %q", p.StateDir, p.Dir)
	}
	if p.Source.TLS.CAFile != "/etc/plume/ca.pem" || p.Source.TLS.CertFile != "/abs/c.pem" || p.Source.TLS.KeyFile != "/etc/k.pem" {
		t.Errorf("tls %+v", p.Source.TLS)
	}
}

func TestAnchorsAndMerge(t *testing.T) {
	p := mustParse(t, base+`targets:
  a: &common { type: sql, dsn: "postgres://h/db", table: t1 }
  b:
    <<: *common
    table: t2
routes:
  - { name: r, to: &both [a, b] }
  - { name: s, to: *both }
`)
	var ta, tb struct {
		DSN   DSN    `yaml:"dsn"`
		Table string `yaml:"table"`
	}
	if err := p.Targets["a"].Decode(&ta); err != nil {
		t.Fatal(err)
	}
	if err := p.Targets["b"].Decode(&tb); err != nil {
		t.Fatal(err)
	}
	if p.Targets["b"].Type != "sql" || tb.Table != "t2" || tb.DSN != "postgres://h/db" || ta.Table != "t1" {
		t.Errorf("a %+v b %+v (type %q)", ta, tb, p.Targets["b"].Type)
	}
	if !reflect.DeepEqual(p.Routes[1].To, []string{"a", "b"}) {
		t.Errorf("alias to %v", p.Routes[1].To)
	}
}

func TestNullMeansAbsent(t *testing.T) {
	p := mustParse(t, base+"kafka:\nadmin: ~\nroutes:\nlog: { level: null }\n")
	if p.Admin != nil || p.Log.Level != "info" || !p.Embedded() || p.Kafka.Tombstones != true {
		t.Errorf("%+v", p)
	}
}

func TestTrailingDocumentMarker(t *testing.T) {
	mustParse(t, "---\n"+base+"---\n")
}

func TestDeriveServerID(t *testing.T) {
	seen := map[uint32]string{}
	for _, name := range []string{"a", "shop", "shop-sync", strings.Repeat("z", 63), "0"} {
		id := DeriveServerID(name)
		if id < 1000 || id >= 1<<31 {
			t.Errorf("DeriveServerID(%q) = %d out of [1000, 2^31)", name, id)
		}
		if prev, dup := seen[id]; dup {
			t.Errorf("%q and %q collide", name, prev)
		}
		seen[id] = name
		if DeriveServerID(name) != id {
			t.Errorf("not deterministic")
		}
	}
	// The documented formula, with FNV-32a written out.
	h := uint32(2166136261)
	for _, c := range []byte("shop-sync") {
		h ^= uint32(c)
		h *= 16777619
	}
	if got, want := DeriveServerID("shop-sync"), 1000+h%(1<<31-1000); got != want {
		t.Errorf("DeriveServerID(shop-sync) = %d, want %d", got, want)
	}
}

func TestDefaultSlotName(t *testing.T) {
	if got := DefaultSlotName("shop-sync"); got != "plume_shop_sync" {
		t.Errorf("got %q", got)
	}
	long1 := DefaultSlotName(strings.Repeat("a", 60) + "-1")
	long2 := DefaultSlotName(strings.Repeat("a", 60) + "-2")
	if len(long1) != 63 || long1 == long2 || !slotOK(long1) {
		t.Errorf("long names: %q %q", long1, long2)
	}
	if DefaultPublicationName("a-b") != "plume_a_b" {
		t.Error("publication")
	}
}

func TestIncludes(t *testing.T) {
	s := Source{Tables: []string{"shop.products", "shop.order?", "logs_*.events", "*.audit"}}
	cases := []struct {
		db, table string
		want      bool
	}{
		{"shop", "products", true},
		{"shop", "Products", false},
		{"shop", "orders", true},
		{"shop", "order", false},
		{"shop", "orders2", false},
		{"logs_2024", "events", true},
		{"logs_", "events", true},
		{"logs", "events", false},
		{"anything", "audit", true},
		{"shop", "customers", false},
	}
	for _, c := range cases {
		if got := s.Includes(c.db, c.table); got != c.want {
			t.Errorf("Includes(%q, %q) = %v", c.db, c.table, got)
		}
	}
	if globMatch("a*b*c", "axxbyyc") != true || globMatch("a*b*c", "axxbyy") != false || globMatch("*", "") != true || globMatch("?", "é") != true {
		t.Error("globMatch")
	}
}

func TestDurationText(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Fatalf("%v %v", d, err)
	}
	if b, _ := d.MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText %q", b)
	}
	if err := d.UnmarshalText([]byte("10")); err == nil {
		t.Error("10 without unit accepted")
	}
}

func TestAliasBombs(t *testing.T) {
	// Each level refers to the previous one ten times: 10^9 expansions if
	// followed naively.
	var merge, list strings.Builder
	merge.WriteString("x0: &m0 {a: 1}\n")
	list.WriteString("x0: &l0 [a, b, c, d, e, f, g, h, i, j]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&merge, "x%d: &m%d {<<: [%s]}\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*m%d, ", i-1), 10), ", "))
		fmt.Fprintf(&list, "x%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 10), ", "))
	}
	cases := map[string]string{
		"merge in struct": merge.String() + "log: *m9\n",
		"merge in target": merge.String() + "targets: { t: { type: x, <<: *m9 } }\n",
		"list of lists":   list.String() + base + "  keys: { shop.products: *l9 }\n",
		"routes":          list.String() + "routes: *l9\n",
	}
	for name, src := range cases {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			p, err := Parse("p.yaml", []byte(src))
			if err == nil {
				var m map[string]any
				err = p.Targets["t"].Decode(&m)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
			if n := len(Errors(err)); n == 0 || n > maxErrors {
				t.Errorf("%d errors: %v", n, err)
			}
		})
	}
}

// TestNameChecksMatchTheirRegexps checks the loops in validate.go against
// the regular expressions they replace, on every short string over an
// alphabet that straddles each class, and on boundary lengths.
func TestNameChecksMatchTheirRegexps(t *testing.T) {
	checks := []struct {
		name string
		re   *regexp.Regexp
		f    func(string) bool
	}{
		{"topic", regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`), func(s string) bool { return ValidTopicName(s) || s == "." || s == ".." }},
		{"pipeline", regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`), func(s string) bool { return nameOK(s, 63) }},
		{"ref", regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`), func(s string) bool { return nameOK(s, -1) }},
		{"slot", regexp.MustCompile(`^[a-z0-9_]{1,63}$`), slotOK},
	}
	alphabet := "aZ09._-/ é"
	var all []string
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		all = append(all, prefix)
		if n == 0 {
			return
		}
		for _, r := range alphabet {
			gen(prefix+string(r), n-1)
		}
	}
	gen("", 3)
	for _, n := range []int{62, 63, 64, 248, 249, 250} {
		all = append(all, strings.Repeat("a", n), "_"+strings.Repeat("a", n-1))
	}
	for _, c := range checks {
		for _, s := range all {
			if got, want := c.f(s), c.re.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, regexp says %v", c.name, s, got, want)
			}
		}
	}
	if ValidTopicName(".") || ValidTopicName("..") {
		t.Error(`"." and ".." are not topic names`)
	}
}
