package salesforce

import (
	"context"
	"strings"

	"github.com/plumecdc/plume/pkg/target"
)

func init() { target.Register("salesforce", factory) }

// factory builds a salesforce target from its block of the pipeline file.
// It reads the JWT key file but does not connect (plume validate calls it).
func factory(_ context.Context, env target.Env) (target.Target, error) {
	var cfg Config
	if err := env.Config.Decode(&cfg); err != nil {
		return nil, err
	}
	dir := ""
	if env.Pipeline != nil {
		dir = env.Pipeline.Dir
	}
	c := env.Config
	return newTarget(cfg, env.Name, dir, env.Log, func(top, key, format string, args ...any) error {
		// key is top or a path below it ("auth.jwt.username").
		return c.PosOf(top).Errorf(c.Key(top)+strings.TrimPrefix(key, top), format, args...)
	})
}
