package kafka

import (
	"context"

	"github.com/plumecdc/plume/pkg/target"
)

func init() { target.Register("kafka", factory) }

// factory builds a kafka target from its block of the pipeline file. It
// validates everything that needs no connection (plume validate runs it)
// and does not connect: Open does.
func factory(_ context.Context, env target.Env) (target.Target, error) {
	set, err := parse(env)
	if err != nil {
		return nil, err
	}
	return newTarget(set, env.Log), nil
}
