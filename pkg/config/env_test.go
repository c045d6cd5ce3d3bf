package config

import (
	"strings"
	"testing"
)

func TestEnvInterpolation(t *testing.T) {
	t.Setenv("PLUME_T_DB_PASS", "p@ss")
	t.Setenv("PLUME_T_WORKERS", "7")
	t.Setenv("PLUME_T_EMPTY", "")
	t.Setenv("PLUME_T_NAME", "orders")
	p := mustParse(t, `name: shop-${PLUME_T_NAME}
state_dir: ${PLUME_T_STATE:-/var/lib/plume}/$${literal}
source:
  type: mysql
  dsn: "root:${PLUME_T_DB_PASS}@tcp(127.0.0.1:3306)/"
  tables: ["shop.${PLUME_T_NAME}"]
  snapshot_workers: ${PLUME_T_WORKERS}
  snapshot: ${PLUME_T_EMPTY:-never}
  heartbeat_interval: ${PLUME_T_HB:-5s}
log: { level: "${PLUME_T_EMPTY}info" }
admin: { token: "a$$b$c${PLUME_T_EMPTY}" }
`)
	checks := []struct{ name, got, want string }{
		{"name", p.Name, "shop-orders"},
		{"state_dir", p.StateDir, "/var/lib/plume/${literal}"},
		{"dsn", p.Source.DSN.Reveal(), "root:p@ss@tcp(127.0.0.1:3306)/"},
		{"tables", p.Source.Tables[0], "shop.orders"},
		{"snapshot", p.Source.Snapshot, "never"},
		{"heartbeat", p.Source.HeartbeatInterval.String(), "5s"},
		{"log level", p.Log.Level, "info"},
		{"token", p.Admin.Token.Reveal(), "a$b$c"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if p.Source.SnapshotWorkers != 7 {
		t.Errorf("workers = %d", p.Source.SnapshotWorkers)
	}
}

func TestEnvErrors(t *testing.T) {
	t.Setenv("PLUME_T_SECRET", "sup3r-secret-value")
	cases := []errCase{
		{"unset", base + "admin: { token: \"${PLUME_T_UNSET_VAR}\" }\n",
			"p.yaml:7:17: admin.token: environment variable PLUME_T_UNSET_VAR is not set (use ${PLUME_T_UNSET_VAR:-default} to give a default)"},
		{"unset in list", "name: shop\nstate_dir: d\nsource:\n  type: mysql\n  dsn: x@tcp(h:1)/\n  tables: [a.b, \"${PLUME_T_UNSET_TABLE}\"]\n",
			"p.yaml:6:17: source.tables[1]: environment variable PLUME_T_UNSET_TABLE is not set"},
		{"unset in target", base + "targets:\n  erp:\n    type: sql\n    dsn: ${PLUME_T_UNSET_DSN}\n",
			"p.yaml:10:10: targets.erp.dsn: environment variable PLUME_T_UNSET_DSN is not set"},
		{"unterminated", "name: shop\nstate_dir: ${HOME\n", `p.yaml:2:12: state_dir: unterminated "${" (write "$$" for a literal "$")`},
		{"bad name", "name: shop\nstate_dir: ${1ABC}\n", `p.yaml:2:12: state_dir: invalid environment variable reference "${1ABC}"`},
		{"bash syntax", "name: shop\nstate_dir: ${HOME:?no}\n", `p.yaml:2:12: state_dir: invalid environment variable reference "${HOME:?no}"`},
		{"nested default", "name: shop\nstate_dir: ${A:-${B}}\n", `p.yaml:2:12: state_dir: nested "${" in a default value is not supported`},
		{"env value never echoed", base + "  snapshot_workers: ${PLUME_T_SECRET}\n",
			"p.yaml:7:21: source.snapshot_workers: expected an integer, got a value from the environment"},
		{"env value never echoed (bool)", base + "kafka: { tombstones: \"${PLUME_T_SECRET}\" }\n",
			"p.yaml:7:22: kafka.tombstones: expected a boolean (true or false), got a value from the environment"},
		{"env value never echoed (duration)", base + "kafka: { batch_linger: \"${PLUME_T_SECRET}\" }\n",
			"p.yaml:7:24: kafka.batch_linger: invalid duration a value from the environment"},
	}
	runErrCases(t, cases)
	for _, c := range cases {
		_, err := Parse("p.yaml", []byte(c.yaml))
		if strings.Contains(err.Error(), "sup3r") {
			t.Errorf("%s: error leaks the variable's value: %v", c.name, err)
		}
	}
}

func TestEnvUnsetReportedOnce(t *testing.T) {
	// The failed interpolation is not also reported as a type error.
	_, err := Parse("p.yaml", []byte(base+"  snapshot_workers: ${PLUME_T_UNSET_W}\n"))
	if errs := Errors(err); len(errs) != 1 {
		t.Errorf("want 1 error, got %v", err)
	}
}

func TestEnvNotInKeysOrComments(t *testing.T) {
	// Keys are not interpolated: "${X}" stays an (unknown) key.
	_, err := Parse("p.yaml", []byte(base+"# ${PLUME_T_UNSET_IN_COMMENT}\n\"${PLUME_T_K}\": 1\n"))
	if err == nil || !strings.HasPrefix(err.Error(), `p.yaml:8:1: ["${PLUME_T_K}"]: unknown key`) {
		t.Errorf("got %v", err)
	}
}

func TestExpandEnv(t *testing.T) {
	env := map[string]string{"A": "1", "E": "", "LONG_NAME_2": "x"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cases := []struct{ in, out, err string }{
		{"plain", "plain", ""},
		{"$", "$", ""},
		{"a$", "a$", ""},
		{"$$", "$", ""},
		{"$$$$", "$$", ""},
		{"$$$", "$$", ""},
		{"$A", "$A", ""},
		{"${A}", "1", ""},
		{"x${A}y${A}", "x1y1", ""},
		{"$${A}", "${A}", ""},
		{"$$${A}", "$1", ""},
		{"${E}", "", ""},
		{"${E:-d}", "d", ""},
		{"${U:-d e f}", "d e f", ""},
		{"${U:-}", "", ""},
		{"${A:-d}", "1", ""},
		{"${LONG_NAME_2}", "x", ""},
		{"${U}", "", "environment variable U is not set"},
		{"${}", "", "invalid environment variable reference"},
		{"${A", "", "unterminated"},
		{"${A-x}", "", "invalid environment variable reference"},
		{"${ A }", "", "invalid environment variable reference"},
	}
	for _, c := range cases {
		out, _, err := expandEnv(c.in, lookup)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("expandEnv(%q) error = %v, want %q", c.in, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("expandEnv(%q): %v", c.in, err)
		case c.err == "" && out != c.out:
			t.Errorf("expandEnv(%q) = %q, want %q", c.in, out, c.out)
		}
	}
}
