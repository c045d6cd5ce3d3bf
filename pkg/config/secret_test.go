package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	pgSecret    = "pg-S3cret-1"
	kafkaSecret = "kafka-S3cret-2"
	adminSecret = "admin-S3cret-3"
	erpSecret   = "erp-S3cret-4"
)

// secretPipeline parses testdata/full.yaml with secrets in the environment.
func secretPipeline(t *testing.T) *Pipeline {
	t.Helper()
	t.Setenv("PG_PASSWORD", pgSecret)
	t.Setenv("KAFKA_PASSWORD", kafkaSecret)
	t.Setenv("PLUME_ADMIN_TOKEN", adminSecret)
	t.Setenv("ERP_PASSWORD", erpSecret)
	p, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Source.DSN.Reveal() != "postgres://postgres:"+pgSecret+"@127.0.0.1:5432/shop" ||
		p.Kafka.SASL.Password.Reveal() != kafkaSecret || p.Admin.Token.Reveal() != adminSecret {
		t.Fatal("secrets not loaded")
	}
	return p
}

func assertNoSecrets(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range []string{pgSecret, kafkaSecret, adminSecret, erpSecret, "S3cret"} {
		if strings.Contains(out, s) {
			t.Errorf("%s leaks %q:\n%s", what, s, out)
		}
	}
}

func TestSecretsRedacted(t *testing.T) {
	p := secretPipeline(t)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		assertNoSecrets(t, "fmt "+verb+" of *Pipeline", fmt.Sprintf(verb, p))
		assertNoSecrets(t, "fmt "+verb+" of Pipeline", fmt.Sprintf(verb, *p))
		assertNoSecrets(t, "fmt "+verb+" of Source", fmt.Sprintf(verb, p.Source))
		assertNoSecrets(t, "fmt "+verb+" of Kafka", fmt.Sprintf(verb, p.Kafka))
		assertNoSecrets(t, "fmt "+verb+" of Admin", fmt.Sprintf(verb, p.Admin))
		assertNoSecrets(t, "fmt "+verb+" of Secret", fmt.Sprintf(verb, p.Admin.Token))
		assertNoSecrets(t, "fmt "+verb+" of DSN", fmt.Sprintf(verb, p.Source.DSN))
		assertNoSecrets(t, "fmt "+verb+" of Targets", fmt.Sprintf(verb, p.Targets))
	}
	assertNoSecrets(t, "Sprint", fmt.Sprint(p, p.Kafka.SASL.Password, p.Source.DSN))

	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecrets(t, "json.Marshal", string(b))
	if !strings.Contains(string(b), `"Password":"[redacted]"`) || !strings.Contains(string(b), `"DSN":"postgres://postgres:xxxxx@127.0.0.1:5432/shop"`) {
		t.Errorf("json: %s", b)
	}

	y, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecrets(t, "yaml.Marshal", string(y))

	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		log := slog.New(h(&buf))
		log.Info("loaded", "pipeline", p, "source", p.Source, "kafka", p.Kafka,
			"token", p.Admin.Token, "dsn", p.Source.DSN, "erp", p.Targets["erp"], slog.Any("sasl", p.Kafka.SASL))
		out := buf.String()
		assertNoSecrets(t, "slog "+name, out)
		if !strings.Contains(out, Redacted) || !strings.Contains(out, "xxxxx") {
			t.Errorf("slog %s: no redaction marker in %s", name, out)
		}
	}

	// The target's options are only readable through Decode.
	var erp struct {
		DSN   DSN      `yaml:"dsn"`
		Table string   `yaml:"table"`
		Key   []string `yaml:"key"`
	}
	if err := p.Targets["erp"].Decode(&erp); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(erp.DSN.Reveal(), erpSecret) {
		t.Errorf("erp dsn %q", erp.DSN.Reveal())
	}
	assertNoSecrets(t, "decoded target", fmt.Sprintf("%v %+v %#v", erp, erp, erp))
}

func TestSecretMethods(t *testing.T) {
	s := Secret("hunter2")
	if s.Reveal() != "hunter2" || !s.IsSet() || Secret("").IsSet() {
		t.Error("Reveal/IsSet")
	}
	for _, got := range []string{s.String(), s.GoString(), fmt.Sprint(s), fmt.Sprintf("%10s|%-3v|%#v|%q", s, s, s, s)} {
		if strings.Contains(got, "hunter2") || !strings.Contains(got, Redacted) {
			t.Errorf("got %q", got)
		}
	}
	if b, _ := s.MarshalJSON(); string(b) != `"[redacted]"` {
		t.Errorf("MarshalJSON %s", b)
	}
	if b, _ := s.MarshalText(); string(b) != Redacted {
		t.Errorf("MarshalText %s", b)
	}
	if v := s.LogValue(); v.String() != Redacted {
		t.Errorf("LogValue %v", v)
	}
	if v, _ := s.MarshalYAML(); v != Redacted {
		t.Errorf("MarshalYAML %v", v)
	}
	d := DSN("postgres://u:pw@h/db")
	if d.Reveal() != "postgres://u:pw@h/db" || d.String() != "postgres://u:xxxxx@h/db" || fmt.Sprintf("%q", d) != `"postgres://u:xxxxx@h/db"` {
		t.Errorf("DSN %q %q", d.String(), fmt.Sprintf("%q", d))
	}
}

func TestRedactDSN(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"postgres://postgres:pw@127.0.0.1:5432/shop", "postgres://postgres:xxxxx@127.0.0.1:5432/shop"},
		{"postgres://postgres@127.0.0.1:5432/shop", "postgres://postgres@127.0.0.1:5432/shop"},
		{"postgresql://u:@h/db", "postgresql://u:@h/db"},
		{"postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:xxxxx@h/db?sslmode=require"},
		{"postgres://u:p@ss/w#rd@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"postgres://h/db?user=u&password=pw&sslmode=disable", "postgres://h/db?user=u&password=xxxxx&sslmode=disable"},
		{"postgres://u:a@h/db?sslpassword=kp", "postgres://u:xxxxx@h/db?sslpassword=xxxxx"},
		{"root@tcp(127.0.0.1:3306)/", "root@tcp(127.0.0.1:3306)/"},
		{"root:pw@tcp(127.0.0.1:3306)/", "root:xxxxx@tcp(127.0.0.1:3306)/"},
		{"root:p@w/x:y@tcp(127.0.0.1:3306)/shop?parseTime=true", "root:xxxxx@tcp(127.0.0.1:3306)/shop?parseTime=true"},
		{"u:pw@/db", "u:xxxxx@/db"},
		{"u:pw@tcp(h)/db?tls=custom&x=http://y", "u:xxxxx@tcp(h)/db?tls=custom&x=http://y"},
		{"host=h user=u password=pw dbname=d", "host=h user=u password=xxxxx dbname=d"},
		{"host=h password = 'p w\\' x' dbname=d", "host=h password = xxxxx dbname=d"},
		{"host=h PASSWORD=pw", "host=h PASSWORD=xxxxx"},
		{"host=h password='unterminated", "host=h password=xxxxx"},
		{"mysql://u:pw@h:3306/db", "mysql://u:xxxxx@h:3306/db"},
		{"not a dsn", "not a dsn"},
	}
	for _, c := range cases {
		if got := RedactDSN(c.in); got != c.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
