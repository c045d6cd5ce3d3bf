package runtime

import (
	"errors"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/target"
)

// routerAdapter presents a target's compiled routes to the delivery layer,
// turning the router's per-route evaluation errors into target.RouteErrors
// (one dead letter each).
type routerAdapter struct {
	tr     *router.TargetRoutes
	routed map[string]*atomic.Int64 // messages produced per route (metrics)
}

func (a routerAdapter) Eval(rec *kgo.Record) ([]target.Message, error) {
	return a.AppendEval(nil, rec)
}

// AppendEval appends the record's messages to dst (target.AppendRouter).
func (a routerAdapter) AppendEval(dst []target.Message, rec *kgo.Record) ([]target.Message, error) {
	n := len(dst)
	msgs, err := a.tr.AppendEval(dst, rec)
	for i := n; i < len(msgs); i++ {
		if c := a.routed[msgs[i].Route]; c != nil {
			c.Add(1)
		}
	}
	if err == nil {
		return msgs, nil
	}
	evs := router.EvalErrors(err)
	if len(evs) == 0 {
		return msgs, err // a decode error: the record as a whole
	}
	errs := make([]error, len(evs))
	for i, e := range evs {
		errs[i] = &target.RouteError{Route: e.Route, Err: e}
	}
	return msgs, errors.Join(errs...)
}
