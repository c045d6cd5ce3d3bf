package sql

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// errNoTable: the target table does not exist (or is not a table).
var errNoTable = errors.New("table does not exist")

// setupError is a problem with the target table's shape that retrying
// cannot fix (no unique key on the key columns, a MyISAM table, ...).
type setupError struct{ msg string }

func (e *setupError) Error() string { return e.msg }

func setupErrorf(format string, args ...any) error {
	return &setupError{msg: fmt.Sprintf(format, args...)}
}

// setKey resolves the key columns and checks that one of the unique
// indexes (column lists) covers exactly them: upserts need it.
func (info *tableInfo) setKey(key []string, uniques [][]string) error {
	info.key = nil
	for _, k := range key {
		c := info.columns[k]
		if c == nil {
			return setupErrorf("key column %q does not exist in %s", k, info.name)
		}
		if c.generated {
			return setupErrorf("key column %q is a generated column", k)
		}
		info.key = append(info.key, c)
	}
	want := slices.Clone(key)
	sort.Strings(want)
	for _, u := range uniques {
		got := slices.Clone(u)
		sort.Strings(got)
		if slices.Equal(got, want) {
			return nil
		}
	}
	return setupErrorf("%s has no primary key or unique index on exactly (%s): upserts need one",
		info.name, strings.Join(key, ", "))
}
