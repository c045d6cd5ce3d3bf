package sql

import (
	"context"

	"github.com/plumecdc/plume/pkg/target"
)

func init() { target.Register("sql", factory) }

// factory builds a sql target from its block of the pipeline file.
func factory(ctx context.Context, env target.Env) (target.Target, error) {
	cfg := DefaultConfig()
	if err := env.Config.Decode(&cfg); err != nil {
		return nil, err
	}
	pipeline := ""
	if env.Pipeline != nil {
		pipeline = env.Pipeline.Name
	}
	return New(ctx, cfg, pipeline, env.Name, env.Log)
}
