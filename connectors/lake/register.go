package lake

import (
	"context"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/plumecdc/plume/pkg/target"
)

func init() { target.Register("lake", factory) }

// factory builds a lake target from its block of the pipeline file. It
// connects to nothing (plume validate calls it).
func factory(_ context.Context, env target.Env) (target.Target, error) {
	cfg := DefaultConfig()
	if err := env.Config.Decode(&cfg); err != nil {
		return nil, err
	}
	var dir, pipeline, srcType, srcDSN string
	if p := env.Pipeline; p != nil {
		dir, pipeline, srcType, srcDSN = p.Dir, p.Name, p.Source.Type, p.Source.DSN.Reveal()
	}
	c := env.Config
	var errs []error
	set := cfg.validate(dir, srcType, srcDSN, func(key, format string, args ...any) {
		// key is top or a path below it ("s3.endpoint").
		top, _, _ := strings.Cut(key, ".")
		errs = append(errs, c.PosOf(top).Errorf(c.Key(top)+strings.TrimPrefix(key, top), format, args...))
	})
	if len(errs) > 0 {
		return nil, joinConfigErrors(errs)
	}
	log := env.Log
	if log == nil {
		log = slog.Default()
	}
	return newTarget(set, pipeline, env.Name, log), nil
}

func newTarget(set *settings, pipeline, name string, log *slog.Logger) *Target {
	t := &Target{set: set, pipeline: pipeline, name: name, log: log}
	if !set.inferTypes && set.sourceDSN != "" {
		t.catalog = &sourceCatalog{typ: set.sourceType, dsn: set.sourceDSN}
	}
	return t
}

// joinConfigErrors returns one error, or the list joined line by line.
func joinConfigErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return configErrors(strings.Join(msgs, "\n"))
}

type configErrors string

func (e configErrors) Error() string { return string(e) }

// pgxConfig parses a PostgreSQL DSN for database/sql.
func pgxConfig(dsn string) (*pgx.ConnConfig, error) { return pgx.ParseConfig(dsn) }

func cloneOffsets(o target.Offsets) target.Offsets {
	out := make(target.Offsets, len(o))
	for k, v := range o {
		out[k] = v
	}
	return out
}
