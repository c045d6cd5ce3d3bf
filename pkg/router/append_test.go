package router

import (
	"reflect"
	"testing"

	"github.com/plumecdc/plume/pkg/target"
)

// TestAppendEvalAppends checks that AppendEval appends what Eval returns to
// the slice it is given, leaving what was there, and that a record with no
// message (a tombstone, a route that does not match, a decode error)
// returns the slice unchanged.
func TestAppendEvalAppends(t *testing.T) {
	r := mustCompile(t, route("all", "", "t"), route("inserts", `op == "insert"`, "t"), route("other", "", "u"))
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			ins := record(mode.enc, insert(row(1, "12.50", nil)))
			upd := record(mode.enc, update(row(2, "1.00", 3), row(2, "2.00", 4)))
			want := append(evalOne(t, r.ForTarget("t"), ins), evalOne(t, r.ForTarget("t"), upd)...)
			if len(want) != 3 {
				t.Fatalf("Eval gave %d messages, want 3", len(want))
			}
			prior := target.Message{Route: "prior", Offset: 99}
			tr := r.ForTarget("t")
			got, err := tr.AppendEval([]target.Message{prior}, ins)
			if err != nil {
				t.Fatal(err)
			}
			if got, err = tr.AppendEval(got, upd); err != nil {
				t.Fatal(err)
			}
			if len(got) != 4 || !reflect.DeepEqual(got[0], prior) || !reflect.DeepEqual(got[1:], want) {
				t.Fatalf("AppendEval = %+v, want the prior message then %+v", got, want)
			}
			// Each message owns its row.
			got[1].Row["sku"] = "changed"
			if got[2].Row["sku"] == "changed" {
				t.Error("two messages of one record share a row map")
			}
			tomb := record(mode.enc, insert(row(3, "1", nil)))
			tomb.Value, tomb.Headers = nil, nil
			if out, err := tr.AppendEval(got[:4], tomb); err != nil || len(out) != 4 || &out[0] != &got[0] {
				t.Errorf("a tombstone: %d messages, %v; want the slice unchanged", len(out), err)
			}
			bad := record(mode.enc, insert(row(4, "1", nil)))
			bad.Value = []byte("{not json")
			if out, err := tr.AppendEval(got[:4], bad); err == nil || len(out) != 4 {
				t.Errorf("an undecodable record: %d messages, %v; want the slice unchanged and an error", len(out), err)
			}
		})
	}
}
