package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Error is a configuration error tied to a position in a config file.
//
// Its message has the form
//
//	FILE:LINE:COL: key.path: message
//
// where LINE and COL are 1-based; COL (or LINE and COL) is omitted when it is
// unknown and "key.path: " is omitted when the error is not about one key
// (for example malformed YAML).
type Error struct {
	File   string // config file name as given to Load or Parse
	Line   int    // 1-based line, 0 if unknown
	Column int    // 1-based column, 0 if unknown
	Key    string // key path such as "routes[0].to[1]" or `source.keys["shop.events"]`; may be empty
	Msg    string // the message proper; never contains secret values
	Err    error  // underlying cause, if any (see Unwrap)
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
	} else {
		b.WriteString("<config>")
	}
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// Pos returns the position the error refers to.
func (e *Error) Pos() Pos { return Pos{File: e.File, Line: e.Line, Column: e.Column} }

// ErrorList is returned when a file has more than one error. It is sorted by
// position (line, then column) and its message has one error per line.
// errors.As(err, new(*config.Error)) finds the first one.
type ErrorList []*Error

// Error implements error.
func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the individual errors, for errors.Is and errors.As.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// Errors returns every *Error carried by err (a *Error or an ErrorList,
// possibly wrapped), in position order, or nil if there is none.
func Errors(err error) []*Error {
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	var e *Error
	if errors.As(err, &e) {
		return []*Error{e}
	}
	return nil
}

// Pos is a position in a config file. Positions of expressions
// (Route.WhenPos, Route.MapPos, Kafka.TopicPos) point at the first character
// of the expression text: past the opening quote of a quoted scalar, and on
// the first content line of a block scalar (| or >).
type Pos struct {
	File   string
	Line   int // 1-based, 0 if unknown
	Column int // 1-based, 0 if unknown
}

// IsValid reports whether the position has a line number.
func (p Pos) IsValid() bool { return p.Line > 0 }

// String returns "file:line:col" (parts that are unknown are left out).
func (p Pos) String() string {
	s := p.File
	if s == "" {
		s = "<config>"
	}
	if p.Line > 0 {
		s += ":" + strconv.Itoa(p.Line)
		if p.Column > 0 {
			s += ":" + strconv.Itoa(p.Column)
		}
	}
	return s
}

// Errorf returns a *Error at p for the given key path, e.g.
//
//	r.WhenPos.Errorf(r.Key("when"), "does not compile: %v", err)
//
// A %w verb in format is honoured: the wrapped error becomes Error.Err.
func (p Pos) Errorf(key, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{File: p.File, Line: p.Line, Column: p.Column, Key: key, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// sortErrors orders errors by position (errors without a line last), drops
// exact duplicates and turns the result into the error Parse returns: nil, a
// single *Error or an ErrorList.
func sortErrors(errs []*Error) error {
	if len(errs) == 0 {
		return nil
	}
	sort.SliceStable(errs, func(i, j int) bool {
		a, b := errs[i], errs[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	out := errs[:0:0]
	seen := make(map[string]bool, len(errs))
	for _, e := range errs {
		s := e.Error()
		if seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, e)
	}
	if len(out) == 1 {
		return out[0]
	}
	return ErrorList(out)
}
