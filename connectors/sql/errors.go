package sql

import (
	"errors"
	"fmt"
)

// errClass sorts database errors into what the delivery layer does next.
type errClass int

const (
	// classRetry: connection errors, deadlocks, serialization failures,
	// lock timeouts, anything unknown: a plain error, retried with backoff.
	classRetry errClass = iota
	// classRow: the data of some row was rejected (PostgreSQL SQLSTATE
	// classes 21, 22, 23; MySQL data and constraint errors). The batch is
	// re-run row by row to find the poison messages.
	classRow
	// classSchema: the table or a column vanished since Open. Retried
	// after reloading the table's shape (a missing table then becomes
	// permanent, an unknown column a poison message).
	classSchema
	// classPermanent: authentication, missing database, permission
	// denied: retrying cannot help; the pipeline stops.
	classPermanent
)

// targetError carries a message that names the target, its table and
// host, scrubbed of the password, around the driver's error.
type targetError struct {
	msg string
	err error
}

func (e *targetError) Error() string { return e.msg }
func (e *targetError) Unwrap() error { return e.err }

// wrap adds context to err: target name, table and DSN host, never the
// password.
func (t *Target) wrap(what string, err error) error {
	msg := fmt.Sprintf("sql target %q (table %s on %s): %s: %v", t.name, t.set.table, t.set.conn.host, what, err)
	return &targetError{msg: scrub(msg, t.set.conn.password), err: err}
}

// rowError is the reason a single message was rejected.
func (t *Target) rowError(err error) error {
	msg := fmt.Sprintf("sql target %q: row rejected by %s: %v", t.name, t.set.table, err)
	return &targetError{msg: scrub(msg, t.set.conn.password), err: err}
}

// errPoison marks a message that cannot be applied whatever the database
// says (unknown column, missing key).
var errPoison = errors.New("poison message")

// errUnknownColumn marks a row naming a column the table does not have
// (as last loaded: the table is reloaded once before it counts as poison).
var errUnknownColumn = errors.New("unknown column")
