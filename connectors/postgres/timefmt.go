package postgres

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/event"
)

// Date and time values arrive in DateStyle ISO (with TimeZone UTC) and are
// rendered as ISO-8601 strings with exactly six fractional digits:
//
//	date         2024-01-02
//	time         03:04:05.120000
//	timetz       21:34:05.120000Z        (converted to UTC)
//	timestamp    2024-01-02T03:04:05.120000
//	timestamptz  2024-01-02T03:04:05.120000Z
//
// 'infinity' and '-infinity' stay as those words. Years BC use ISO 8601's
// astronomical numbering (1 BC = 0000, 44 BC = -0043); years past 9999 are
// written with all their digits.

func decodeDate(b []byte) (event.Value, error) {
	s := string(b)
	if s == "infinity" || s == "-infinity" {
		return s, nil
	}
	s, bc := strings.CutSuffix(s, " BC")
	y, m, d, err := parseDate(s)
	if err != nil {
		return nil, fmt.Errorf("invalid date %q", b)
	}
	if bc {
		y = 1 - y
	}
	var out []byte
	out = appendDate(out, y, m, d)
	return string(out), nil
}

func decodeTime(b []byte) (event.Value, error) {
	h, m, sec, us, rest, err := parseClock(string(b))
	if err != nil || rest != "" {
		return nil, fmt.Errorf("invalid time %q", b)
	}
	return string(appendClock(nil, h, m, sec, us)), nil
}

func decodeTimetz(b []byte) (event.Value, error) {
	h, m, sec, us, rest, err := parseClock(string(b))
	if err != nil {
		return nil, fmt.Errorf("invalid timetz %q", b)
	}
	off, err := parseOffset(rest)
	if err != nil {
		return nil, fmt.Errorf("invalid timetz %q", b)
	}
	const day = 86400
	t := (int64(h)*3600 + int64(m)*60 + int64(sec) - int64(off)) % day
	if t < 0 {
		t += day
	}
	if off == 0 && h == 24 {
		t = day // keep 24:00:00
	}
	out := appendClock(nil, int(t/3600), int(t/60%60), int(t%60), us)
	return string(append(out, 'Z')), nil
}

func decodeTimestamp(b []byte) (event.Value, error) {
	s := string(b)
	if s == "infinity" || s == "-infinity" {
		return s, nil
	}
	t, rest, err := parseTimestamp(s)
	if err != nil || rest != "" {
		return nil, fmt.Errorf("invalid timestamp %q", b)
	}
	return string(appendTimestamp(nil, t)), nil
}

func decodeTimestamptz(b []byte) (event.Value, error) {
	s := string(b)
	if s == "infinity" || s == "-infinity" {
		return s, nil
	}
	t, rest, err := parseTimestamp(s)
	if err != nil {
		return nil, fmt.Errorf("invalid timestamptz %q", b)
	}
	off, err := parseOffset(rest)
	if err != nil {
		return nil, fmt.Errorf("invalid timestamptz %q", b)
	}
	t = t.Add(-time.Duration(off) * time.Second)
	return string(append(appendTimestamp(nil, t), 'Z')), nil
}

// parseTimestamp parses "YYYY-MM-DD HH:MM:SS[.ffffff][offset][ BC]" into a
// UTC wall time (the offset is returned unparsed in rest).
func parseTimestamp(s string) (time.Time, string, error) {
	s, bc := strings.CutSuffix(s, " BC")
	date, clock, ok := strings.Cut(s, " ")
	if !ok {
		return time.Time{}, "", fmt.Errorf("no time part")
	}
	y, mo, d, err := parseDate(date)
	if err != nil {
		return time.Time{}, "", err
	}
	if bc {
		y = 1 - y
	}
	h, mi, sec, us, rest, err := parseClock(clock)
	if err != nil {
		return time.Time{}, "", err
	}
	return time.Date(y, time.Month(mo), d, h, mi, sec, us*1000, time.UTC), rest, nil
}

func parseDate(s string) (y, m, d int, err error) {
	ys, rest, ok1 := strings.Cut(s, "-")
	ms, ds, ok2 := strings.Cut(rest, "-")
	if !ok1 || !ok2 || len(ys) < 4 || len(ms) != 2 || len(ds) != 2 {
		return 0, 0, 0, fmt.Errorf("bad date")
	}
	if y, err = strconv.Atoi(ys); err != nil {
		return
	}
	if m, err = strconv.Atoi(ms); err != nil {
		return
	}
	d, err = strconv.Atoi(ds)
	return
}

// parseClock parses "HH:MM:SS[.f{1,6}]" and returns what follows.
func parseClock(s string) (h, m, sec, us int, rest string, err error) {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return 0, 0, 0, 0, "", fmt.Errorf("bad time")
	}
	if h, err = strconv.Atoi(s[0:2]); err != nil {
		return
	}
	if m, err = strconv.Atoi(s[3:5]); err != nil {
		return
	}
	if sec, err = strconv.Atoi(s[6:8]); err != nil {
		return
	}
	rest = s[8:]
	if strings.HasPrefix(rest, ".") {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		frac := rest[1:i]
		if len(frac) == 0 || len(frac) > 6 {
			return 0, 0, 0, 0, "", fmt.Errorf("bad fraction")
		}
		frac += strings.Repeat("0", 6-len(frac))
		if us, err = strconv.Atoi(frac); err != nil {
			return
		}
		rest = rest[i:]
	}
	return
}

// parseOffset parses "+HH", "-HH:MM", "+HH:MM:SS" into seconds east of UTC.
func parseOffset(s string) (int, error) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') {
		return 0, fmt.Errorf("bad offset %q", s)
	}
	sign := 1
	if s[0] == '-' {
		sign = -1
	}
	parts := strings.Split(s[1:], ":")
	if len(parts) > 3 {
		return 0, fmt.Errorf("bad offset %q", s)
	}
	secs := 0
	mult := []int{3600, 60, 1}
	for i, p := range parts {
		if len(p) != 2 {
			return 0, fmt.Errorf("bad offset %q", s)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, err
		}
		secs += n * mult[i]
	}
	return sign * secs, nil
}

func appendDate(b []byte, y, m, d int) []byte {
	if y < 0 {
		b = append(b, '-')
		y = -y
	}
	b = appendPad(b, y, 4)
	b = append(b, '-')
	b = appendPad(b, m, 2)
	b = append(b, '-')
	return appendPad(b, d, 2)
}

func appendClock(b []byte, h, m, s, us int) []byte {
	b = appendPad(b, h, 2)
	b = append(b, ':')
	b = appendPad(b, m, 2)
	b = append(b, ':')
	b = appendPad(b, s, 2)
	b = append(b, '.')
	return appendPad(b, us, 6)
}

func appendTimestamp(b []byte, t time.Time) []byte {
	b = appendDate(b, t.Year(), int(t.Month()), t.Day())
	b = append(b, 'T')
	return appendClock(b, t.Hour(), t.Minute(), t.Second(), t.Nanosecond()/1000)
}

func appendPad(b []byte, n, width int) []byte {
	s := strconv.Itoa(n)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}
