package capture

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/plumecdc/plume/pkg/config"
)

// SourceFactory builds a source from a pipeline's configuration.
type SourceFactory func(p *config.Pipeline, log *slog.Logger) (Source, error)

var (
	regMu   sync.Mutex
	sources = map[string]SourceFactory{}
)

// RegisterSource makes a source type available. Connectors call it from init.
func RegisterSource(typ string, f SourceFactory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := sources[typ]; dup {
		panic("source type registered twice: " + typ)
	}
	sources[typ] = f
}

// NewSource builds the pipeline's source.
func NewSource(p *config.Pipeline, log *slog.Logger) (Source, error) {
	regMu.Lock()
	f := sources[p.Source.Type]
	regMu.Unlock()
	if f == nil {
		var known []string
		regMu.Lock()
		for k := range sources {
			known = append(known, k)
		}
		regMu.Unlock()
		sort.Strings(known)
		return nil, fmt.Errorf("source type %q is not built in (known: %v)", p.Source.Type, known)
	}
	return f(p, log)
}
