package testharness

import (
	"crypto/md5"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/event"
)

// Pad is a distinct text of about 1 KB for row id of table: the table,
// the id and the MD5 of the id's decimal text, 30 times. PadSQL renders the
// same in SQL, so a test can write rows whose every value it can check.
// Tests of a source's buffer reuse write such rows: a buffer reused too
// early shows up as another row's bytes.
func Pad(table string, id int64) string {
	sum := md5.Sum([]byte(strconv.FormatInt(id, 10)))
	return table + ":" + strconv.FormatInt(id, 10) + ":" + strings.Repeat(hex.EncodeToString(sum[:]), 30)
}

// PadSQL is Pad as an SQL expression over the integer column or variable
// id (MariaDB's CONCAT, or PostgreSQL's ||).
func PadSQL(postgres bool, table, id string) string {
	if postgres {
		return "'" + table + ":' || " + id + " || ':' || repeat(md5(" + id + "::text), 30)"
	}
	return "CONCAT('" + table + ":', " + id + ", ':', REPEAT(MD5(" + id + "), 30))"
}

// CheckPads fails t unless changes are want inserts of distinct (table, id)
// rows whose image is (id, Pad(table, id)).
func CheckPads(t testing.TB, changes []*event.Change, want int) {
	t.Helper()
	if len(changes) != want {
		t.Fatalf("%d changes, want %d", len(changes), want)
	}
	seen := make(map[string]bool, want)
	for _, c := range changes {
		id, _ := c.After[0].(int64)
		if pad, _ := c.After[1].(string); pad != Pad(c.Table.Name, id) {
			t.Fatalf("%s id %d: %.40q..., want %.40q...", c.Table.Name, id, pad, Pad(c.Table.Name, id))
		}
		k := c.Table.Name + "/" + strconv.FormatInt(id, 10)
		if seen[k] {
			t.Fatalf("%s twice", k)
		}
		seen[k] = true
	}
}
