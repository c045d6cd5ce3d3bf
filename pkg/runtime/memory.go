package runtime

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the collector's heap growth target of `plume run`
// when GOGC is not set: 50% instead of Go's 100% trades a little CPU for a
// lower peak memory. Capture recycles its Kafka records
// (event.Encoder.Recycle), so it allocates little and the collector's
// share of CPU stays small; docs/operations.md ("Memory") has the
// figures. GOGC and GOMEMLIMIT in the environment take precedence.
const DefaultGCPercent = 50

// ApplyGCDefault sets DefaultGCPercent unless GOGC is set.
func ApplyGCDefault() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
