package sql

import (
	"fmt"
	"strings"

	"github.com/plumecdc/plume/pkg/config"
)

// Defaults for the optional configuration keys.
const (
	DefaultOffsetsTable = "plume_offsets"
	DefaultBatchSize    = 1000
	DefaultDelete       = "delete"

	// maxBatchSize bounds batch_size: one statement never carries more rows.
	maxBatchSize = 100000
)

// Config is the configuration block of a target of type sql
// (targets.<name> in the pipeline file). See docs/targets/sql.md.
type Config struct {
	// DSN selects the database and its dialect: postgres://... or
	// postgresql://... (or libpq key=value) for PostgreSQL; mysql://... or
	// mariadb://..., or the go-sql-driver form user:pw@tcp(host:3306)/db,
	// for MySQL and MariaDB.
	DSN config.DSN `yaml:"dsn"`
	// Table is the target table: "schema.table" (PostgreSQL; unqualified
	// resolves through the search_path) or "database.table" (MySQL;
	// unqualified means the DSN's database).
	Table string `yaml:"table"`
	// Key lists the target table's key columns. A unique index (or the
	// primary key) on exactly these columns must exist.
	Key []string `yaml:"key"`
	// Columns optionally renames row fields: source field -> target column.
	// Fields not listed keep their names.
	Columns map[string]string `yaml:"columns"`
	// OffsetsTable is where the target stores its Kafka offsets, in the same
	// transaction as the rows. Created if missing. Default plume_offsets.
	OffsetsTable string `yaml:"offsets_table"`
	// BatchSize is the maximum number of rows per multi-row statement.
	BatchSize int `yaml:"batch_size"`
	// Delete says what a source delete does: "delete" (the default) deletes
	// the row, "ignore" keeps it, "soft:<column>" sets <column> to true.
	Delete string `yaml:"delete"`
}

// DefaultConfig returns a Config with the defaults of the optional keys
// filled in; decode the YAML block into it.
func DefaultConfig() Config {
	return Config{
		OffsetsTable: DefaultOffsetsTable,
		BatchSize:    DefaultBatchSize,
		Delete:       DefaultDelete,
	}
}

type deleteMode int

const (
	deleteRows   deleteMode = iota // DELETE the row
	deleteIgnore                   // keep the row
	deleteSoft                     // UPDATE ... SET <column> = true
)

// tableName is a possibly qualified table name as configured.
type tableName struct {
	schema string // schema (PostgreSQL) or database (MySQL); "" if unqualified
	name   string
}

func (t tableName) String() string {
	if t.schema == "" {
		return t.name
	}
	return t.schema + "." + t.name
}

func parseTableName(s string) (tableName, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return tableName{}, fmt.Errorf("is empty")
	}
	parts := strings.Split(s, ".")
	switch {
	case len(parts) == 1:
		return tableName{name: parts[0]}, nil
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		return tableName{schema: parts[0], name: parts[1]}, nil
	}
	return tableName{}, fmt.Errorf("%q: want table or schema.table", s)
}

// settings is a validated Config.
type settings struct {
	conn      dsnInfo
	table     tableName
	offsets   tableName
	key       []string
	rename    map[string]string
	batchSize int
	del       deleteMode
	softCol   string
}

func (c *Config) validate() (*settings, error) {
	var errs []string
	bad := func(key, format string, args ...any) {
		errs = append(errs, key+": "+fmt.Sprintf(format, args...))
	}
	s := &settings{rename: map[string]string{}}

	if c.DSN == "" {
		bad("dsn", "is required")
	} else if info, err := parseDSN(c.DSN.Reveal()); err != nil {
		bad("dsn", "%v", err)
	} else {
		s.conn = info
	}

	if c.Table == "" {
		bad("table", "is required")
	} else if t, err := parseTableName(c.Table); err != nil {
		bad("table", "%v", err)
	} else {
		s.table = t
	}

	offsets := c.OffsetsTable
	if offsets == "" {
		offsets = DefaultOffsetsTable
	}
	if t, err := parseTableName(offsets); err != nil {
		bad("offsets_table", "%v", err)
	} else {
		s.offsets = t
	}

	if len(c.Key) == 0 {
		bad("key", "at least one key column is required")
	}
	seen := map[string]bool{}
	for _, k := range c.Key {
		switch {
		case k == "":
			bad("key", "empty column name")
		case seen[k]:
			bad("key", "column %q listed twice", k)
		}
		seen[k] = true
	}
	s.key = append([]string(nil), c.Key...)

	for from, to := range c.Columns {
		if from == "" || to == "" {
			bad("columns", "empty name in %q: %q", from, to)
			continue
		}
		s.rename[from] = to
	}

	switch {
	case c.BatchSize == 0:
		s.batchSize = DefaultBatchSize
	case c.BatchSize < 0 || c.BatchSize > maxBatchSize:
		bad("batch_size", "%d is out of range 1..%d", c.BatchSize, maxBatchSize)
	default:
		s.batchSize = c.BatchSize
	}

	switch d := strings.TrimSpace(c.Delete); {
	case d == "" || d == "delete":
		s.del = deleteRows
	case d == "ignore":
		s.del = deleteIgnore
	case strings.HasPrefix(d, "soft:") && strings.TrimSpace(d[len("soft:"):]) != "":
		s.del = deleteSoft
		s.softCol = strings.TrimSpace(d[len("soft:"):])
	default:
		bad("delete", "%q: want delete, ignore or soft:<column>", c.Delete)
	}

	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid sql target config: %s", strings.Join(errs, "; "))
	}
	return s, nil
}
