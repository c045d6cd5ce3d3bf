package runtime

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/target"
)

// Validate runs every check of a loaded pipeline that needs no connection:
// routes and the topic expression compile, and the source and every target
// build from their blocks (connectors check their own keys and files).
// `plume validate` runs it; so do the Helm chart tests on every example.
// The connectors must be registered (imported) by the caller.
func Validate(cfg *config.Pipeline) error {
	if _, err := router.Compile(cfg.Routes); err != nil {
		return err
	}
	if _, err := TopicFunc(cfg); err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	src, err := capture.NewSource(cfg, log)
	if err != nil {
		return fmt.Errorf("%s: source: %w", cfg.File, err)
	}
	src.Close()
	for _, name := range cfg.TargetNames() {
		if _, err := cfg.Targets[name].Delivery(); err != nil {
			return err
		}
		t, err := target.New(context.Background(), target.Env{Pipeline: cfg, Name: name, Config: cfg.Targets[name], Log: log})
		if err != nil {
			return err
		}
		t.Close()
	}
	return nil
}
