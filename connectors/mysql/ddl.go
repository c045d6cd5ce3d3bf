package mysql

import (
	"strings"

	"github.com/plumecdc/plume/pkg/event"
)

// Plume does not parse DDL: with binlog_row_metadata=FULL every TABLE_MAP
// describes the table as the following rows were written. The one statement
// recognised is TRUNCATE, which changes rows without row events.

// truncateTarget recognises "TRUNCATE [TABLE] [db.]table" and returns the
// qualified name (defaultDB is the statement's current database).
func truncateTarget(sql, defaultDB string) (db, table string, ok bool) {
	rest, ok := cutWord(sql, "TRUNCATE")
	if !ok {
		return "", "", false
	}
	if r, ok := cutWord(rest, "TABLE"); ok {
		rest = r
	}
	first, rest, ok := cutIdent(rest)
	if !ok {
		return "", "", false
	}
	rest = strings.TrimLeft(rest, " \t\r\n")
	if strings.HasPrefix(rest, ".") {
		second, _, ok := cutIdent(rest[1:])
		if !ok {
			return "", "", false
		}
		return first, second, true
	}
	if defaultDB == "" {
		return "", "", false
	}
	return defaultDB, first, true
}

// cutWord removes a leading keyword (case-insensitive) followed by space.
func cutWord(s, word string) (string, bool) {
	s = strings.TrimLeft(s, " \t\r\n")
	if len(s) <= len(word) || !strings.EqualFold(s[:len(word)], word) {
		return s, false
	}
	switch s[len(word)] {
	case ' ', '\t', '\r', '\n', '`':
		return s[len(word):], true
	}
	return s, false
}

// cutIdent reads one identifier, backquoted (a doubled backquote escapes
// one) or bare.
func cutIdent(s string) (ident, rest string, ok bool) {
	s = strings.TrimLeft(s, " \t\r\n")
	if s == "" {
		return "", "", false
	}
	if s[0] == '`' {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] == '`' {
				if i+1 < len(s) && s[i+1] == '`' {
					b.WriteByte('`')
					i++
					continue
				}
				return b.String(), s[i+1:], true
			}
			b.WriteByte(s[i])
		}
		return "", "", false
	}
	i := 0
	for i < len(s) {
		c := s[i]
		if c == '.' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';' {
			break
		}
		i++
	}
	if i == 0 {
		return "", "", false
	}
	return s[:i], s[i:], true
}

// latest returns the last *event.Table seen for db.table, or nil.
func (c *schemaCache) latest(db, table string) *event.Table {
	if e, ok := c.byName[db+"."+table]; ok && e.info != nil {
		return e.info.table
	}
	return nil
}

// quoteIdent quotes a MySQL identifier with backticks.
func quoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "``") + "`"
}

func quoteTable(qn string) string {
	db, t, _ := strings.Cut(qn, ".")
	return quoteIdent(db) + "." + quoteIdent(t)
}
