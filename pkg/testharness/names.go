package testharness

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

var nameSeq atomic.Int64

// UniqueName derives a name from the test name that is unique within the
// process (a sequence number) and across processes (a random suffix):
// lower-case [a-z0-9_], at most 50 bytes, so it is valid as a database,
// table, topic, group or transactional id. NewDatabase uses it.
func UniqueName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if s := b.String(); len(s) > 0 && s[len(s)-1] != '_' {
				b.WriteByte('_')
			}
		}
	}
	base := strings.Trim(b.String(), "_")
	if len(base) > 30 {
		base = strings.TrimRight(base[:30], "_")
	}
	return fmt.Sprintf("t_%s_%d_%s", base, nameSeq.Add(1), randomName(3))
}
