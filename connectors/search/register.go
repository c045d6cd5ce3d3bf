package search

import (
	"context"
	"strings"

	"github.com/plumecdc/plume/pkg/target"
)

func init() { target.Register("search", factory) }

// factory builds a search target from its block of the pipeline file: it
// validates the keys, compiles the index expression and reads the TLS files,
// but does not connect (plume validate calls it).
func factory(_ context.Context, env target.Env) (target.Target, error) {
	cfg := DefaultConfig()
	if err := env.Config.Decode(&cfg); err != nil {
		return nil, err
	}
	dir := ""
	if env.Pipeline != nil {
		dir = env.Pipeline.Dir
	}
	c := env.Config
	// The delivery layer's coalescing keys messages by their subject, the
	// new key of a primary-key change: it could drop a key change (and so
	// the delete of the old document) in favour of a later update of the
	// new key. The target coalesces by document itself, keeping versions.
	if d, err := c.Delivery(); err == nil && d.Coalesce != nil && *d.Coalesce {
		return nil, c.Errorf("delivery", "coalesce must stay off for a search target (it coalesces per document itself, see docs/targets/search.md)")
	}
	errf := func(top, key, format string, args ...any) error {
		// key is top or a path below it ("auth.basic.username").
		return c.PosOf(top).Errorf(c.Key(top)+strings.TrimPrefix(key, top), format, args...)
	}
	exprErr := func(err error) error {
		pos := cfg.IndexExprPos
		if !c.Has("index_expr") {
			pos = c.Pos
		}
		return pos.Errorf(c.Key("index_expr"), "%w", err)
	}
	return newTarget(cfg, env.Name, dir, env.Log, errf, exprErr)
}
