package postgres

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/plumecdc/plume/pkg/event"
)

// Key ordering. Snapshot chunks are key ranges whose bounds PostgreSQL
// computes and whose membership Go decides again for stream changes (the
// catch-up rule in checkpoint.go). Both sides must order keys identically,
// so only key columns whose order Go reproduces exactly are chunked:
//
//	int  smallint, integer, bigint (and domains over them): numeric order
//	text text, varchar (and domains): byte order; SQL compares them with
//	     COLLATE "C", which is UTF-8 byte order = Go string order
//	uuid uuid: PostgreSQL compares the 16 bytes (memcmp); the canonical
//	     lower-case hex text sorts the same way
//
// Composite keys compare lexicographically, like SQL row comparison. A key
// with any other column type (or a nullable override column) makes the table
// a single chunk, which needs no comparison at all.
const (
	kindInt  = "int"
	kindText = "text"
	kindUUID = "uuid"
)

// keyKindOf returns the comparison kind of a base type OID, or "".
func keyKindOf(baseOID uint32) string {
	switch baseOID {
	case oidInt2, oidInt4, oidInt8:
		return kindInt
	case oidText, oidVarchar:
		return kindText
	case oidUUID:
		return kindUUID
	}
	return ""
}

// keyVal is one key column value in comparable form.
type keyVal struct {
	i int64
	s string
}

func parseKeyText(kind, s string) (keyVal, error) {
	switch kind {
	case kindInt:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return keyVal{}, fmt.Errorf("int key %q: %w", s, err)
		}
		return keyVal{i: i}, nil
	case kindText:
		return keyVal{s: s}, nil
	case kindUUID:
		return keyVal{s: strings.ToLower(s)}, nil
	}
	return keyVal{}, fmt.Errorf("unknown key kind %q", kind)
}

// keyValOf converts a decoded event value; ok is false when the value is
// missing (NULL, unchanged TOAST) or of an unexpected kind.
func keyValOf(kind string, v event.Value) (keyVal, bool) {
	switch kind {
	case kindInt:
		if i, ok := v.(int64); ok {
			return keyVal{i: i}, true
		}
	case kindText, kindUUID:
		if s, ok := v.(string); ok {
			if kind == kindUUID {
				s = strings.ToLower(s)
			}
			return keyVal{s: s}, true
		}
	}
	return keyVal{}, false
}

func compareKey(kinds []string, a, b []keyVal) int {
	for i, k := range kinds {
		if k == kindInt {
			switch {
			case a[i].i < b[i].i:
				return -1
			case a[i].i > b[i].i:
				return 1
			}
			continue
		}
		if c := strings.Compare(a[i].s, b[i].s); c != 0 {
			return c
		}
	}
	return 0
}

// chunkOf returns the chunk holding key: the first chunk whose upper bound
// is >= key, or the last (unbounded) chunk.
func (t *snapTable) chunkOf(key []keyVal) int {
	return sort.Search(len(t.bounds), func(i int) bool {
		return compareKey(t.Kinds, t.bounds[i], key) >= 0
	})
}
