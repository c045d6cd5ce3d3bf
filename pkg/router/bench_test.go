package router

import (
	"testing"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
)

// BenchmarkEval routes one update of a ten-column row (binary mode unless
// the name says otherwise) through one route of one target. cpu-ns/op is
// the process's CPU time per op (GC included): the figure to read on a busy
// machine, where ns/op includes waiting for a core.
func BenchmarkEval(b *testing.B) {
	cases := []struct {
		name       string
		route      config.Route
		structured bool
	}{
		// The headline figure: a `when` on the attributes that matches, so
		// the envelope is decoded once for the message's row.
		{"simple", config.Route{When: `table == "products" && op == "update"`}, false},
		{"simple-structured", config.Route{When: `table == "products" && op == "update"`}, true},
		// No match on the attributes: the envelope is never decoded.
		{"nomatch", config.Route{When: `table == "orders"`}, false},
		// A `when` on the data.
		{"data", config.Route{When: `before.price != after.price && after.qty > 2`}, false},
		{"changed", config.Route{When: `changed("price")`}, false},
		// Projection, drop and mask.
		{"map", config.Route{When: `changed("price")`, Map: `{"code": row.sku, "price": number(row.price), "email": row.email}`, Mask: map[string]string{"email": "hash"}}, false},
		{"drop-mask", config.Route{Drop: []string{"doc"}, Mask: map[string]string{"email": "hash", "phone": "redact"}}, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			c.route.Name, c.route.To = "r", []string{"t"}
			r, err := Compile([]config.Route{c.route})
			if err != nil {
				b.Fatal(err)
			}
			tr := r.ForTarget("t")
			enc := &event.Encoder{Pipeline: "shop-sync", Structured: c.structured}
			rec := enc.Record("shop-sync.public.products", update(row(42, "12.50", int64(3)), row(42, "13.00", int64(3))))
			b.ReportAllocs()
			b.SetBytes(int64(len(rec.Value)))
			cpu := processCPU()
			for b.Loop() {
				if _, err := tr.Eval(rec); err != nil {
					b.Fatal(err)
				}
			}
			if cpu := processCPU() - cpu; cpu > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// BenchmarkEnvelope compares envParser with its specification,
// encoding/json's Decoder with UseNumber plus convertNumbers, on the
// envelope of a ten-column update (both images).
func BenchmarkEnvelope(b *testing.B) {
	data := event.AppendEnvelope(nil, "shop-sync", update(row(42, "12.50", int64(3)), row(42, "13.00", int64(3))))
	b.Run("parser", func(b *testing.B) {
		var p envParser
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := p.envelope(data, needImages); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := referenceEnvelope(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
