package router

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/event"
)

// referenceEnvelope is the specification of envParser: encoding/json's
// Decoder with UseNumber, then convertNumbers. The envelope must be one JSON
// object with nothing but white space after it.
func referenceEnvelope(data []byte) (envelope, error) {
	var env envelope
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return env, &syntaxError{msg: "not an object"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&env); err != nil {
		return env, err
	}
	if len(bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")) > 0 {
		return env, &syntaxError{msg: "trailing data"}
	}
	convertNumbers(env.Before)
	convertNumbers(env.After)
	return env, nil
}

func checkParser(t *testing.T, p *envParser, data []byte) {
	t.Helper()
	want, werr := referenceEnvelope(data)
	got, gerr := p.envelope(data, needImages)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%q:\nparser error %v\nencoding/json error %v", data, gerr, werr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nparser        %#v\nencoding/json %#v", data, got, want)
	}
}

func parserCorpus() [][]byte {
	enc := func(c *event.Change) []byte { return event.AppendEnvelope(nil, "p", c) }
	tbl := &event.Table{Connector: "mysql", Database: "d", Name: "t", Key: []int{0},
		Columns: []event.Column{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}, {Name: "é\"\\"}, {Name: "f"}, {Name: "g"}}}
	vals := [][]event.Value{
		{int64(1), "x", 1.5, uint64(math.MaxUint64), "ünï\u2028\x01\"\\/", []byte{0, 1, 2}, event.Decimal("-0.000")},
		{int64(math.MinInt64), "", math.Inf(1), math.NaN(), "\xff\xfe bad utf8", nil, true},
		{int64(0), "a,b=c", 1e300, 5e-324, 1e21, 123456789.123456789, false},
		{int64(-1), event.RawJSON(`{"x":[1,2.50,{"y":null}],"z":1e400,"w":"\ud83d\ude00\ud800x"}`), []event.Value{int64(1), "s", nil},
			map[string]event.Value{"k": 1.25}, event.Unchanged{}, 0.1, 9007199254740993.0},
	}
	var out [][]byte
	for _, v := range vals {
		out = append(out,
			enc(&event.Change{Op: event.OpCreate, Table: tbl, After: v, Pos: "p", TxID: "t", SourceFields: []event.Field{{Name: "file", Value: "f"}, {Name: "pos", Value: int64(4)}}}),
			enc(&event.Change{Op: event.OpUpdate, Table: tbl, Before: v, After: v, Pos: "p"}),
			enc(&event.Change{Op: event.OpDelete, Table: tbl, Before: v, Pos: "p", Snapshot: true}),
		)
	}
	for _, s := range []string{
		`{}`, ` { } `, `{"before":null,"after":null}`, `{"before":{},"after":{"a":[]}}`,
		`{"after":{"a":1},"after":{"b":2}}`, `{"after":{"a":1},"after":null}`,
		`{"AFTER":{"a":1}}`, `{"After":{"a":1},"after":{"b":1}}`, `{"unchanged":["a",null,"\u0062"]}`,
		`{"\u0061fter":{"\u00e9":"\u00E9\n\t\b\f\r\/"}}`, `{"after":{"s":"\ud800\ud800\udc00"}}`,
		`{"after":{"s":"\udc00"}}`, `{"after":{"s":"\ud83d\u0041"}}`,
		`{"source":{"x":[1,{"y":"z\"}"}],"n":-0.5e+10},"op":"c","after":{"n":-0}}`,
		`{"after":{"n":12345678901234567890,"m":-9223372036854775808,"o":-9223372036854775809,"p":1E2,"q":0.1e-2}}`,
		// Errors.
		``, `null`, `[]`, `"x"`, `1`, `{`, `{"after":}`, `{"after":{"a":01}}`, `{"after":{"a":1.}}`,
		`{"after":{"a":-}}`, `{"after":{"a":1e}}`, `{"after":{"a":tru}}`, `{"after":{"a":"\x"}}`,
		`{"after":{"a":"` + "\x01" + `"}}`, `{"after":{"a":"\u12"}}`, `{"after":{"a":1,}}`, `{"after":{"a" 1}}`,
		`{"after":[1]}`, `{"after":"x"}`, `{"before":1}`, `{"unchanged":"a"}`, `{"unchanged":[1]}`,
		`{} x`, `{}{}`, `{"a":1 "b":2}`, `{"x":[1 2]}`, `{"x":{"a"}}`, `{"x":{1:2}}`, `{"x":"unterminated}`,
		`{"after":{"a":"\ud800\uzzzz"}}`, `{"x":nul}`, `{"x":-01}`,
	} {
		out = append(out, []byte(s))
	}
	return out
}

func TestParserParts(t *testing.T) {
	var p envParser
	data := []byte(`{"before":{"a":1},"after":{"b":2},"unchanged":["c"],"source":{}}`)
	for _, want := range []needs{0, needBefore, needAfter, needUnchanged, needImages} {
		env, err := p.envelope(data, want)
		if err != nil {
			t.Fatal(err)
		}
		if (env.Before != nil) != (want&needBefore != 0) || (env.After != nil) != (want&needAfter != 0) || (env.Unchanged != nil) != (want&needUnchanged != 0) {
			t.Errorf("want %b: got %+v", want, env)
		}
	}
	// The parts not decoded are still checked.
	if _, err := p.envelope([]byte(`{"before":{"a":01},"after":{}}`), needAfter); err == nil {
		t.Error("syntax error in a skipped image not reported")
	}
}

func TestParserMatchesEncodingJSON(t *testing.T) {
	var p envParser
	for _, data := range parserCorpus() {
		checkParser(t, &p, data)
	}
	deep := []byte(`{"after":{"a":` + strings.Repeat("[", 9998) + strings.Repeat("]", 9998) + `}}`)
	checkParser(t, &p, deep)
	deeper := []byte(`{"after":{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}}`)
	checkParser(t, &p, deeper)
	skipped := []byte(`{"x":{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}}`)
	checkParser(t, &p, skipped)
}

func FuzzParser(f *testing.F) {
	for _, data := range parserCorpus() {
		f.Add(data)
	}
	var p envParser
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParser(t, &p, data)
	})
}
