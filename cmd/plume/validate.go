package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/runtime"
	"github.com/plumecdc/plume/pkg/target"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", "validate -c FILE",
		"Check a pipeline file: syntax, keys, values, every route expression compiled and\n"+
			"type-checked against the event schema, and every target's options. Connects to nothing.\n"+
			"Exits non-zero on the first problem, naming the file, line and key.", stdout, stderr)
	file := fs.String("c", "", "pipeline config file (required)")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	if *file == "" {
		fmt.Fprintln(stderr, "plume validate: -c FILE is required")
		return 2
	}
	if err := validate(*file); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", *file)
	return 0
}

// validate runs every check that needs no connection.
func validate(file string) error {
	cfg, err := config.Load(file)
	if err != nil {
		return err
	}
	if _, err := router.Compile(cfg.Routes); err != nil {
		return err
	}
	if _, err := runtime.TopicFunc(cfg); err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	src, err := capture.NewSource(cfg, log)
	if err != nil {
		return fmt.Errorf("%s: source: %w", file, err)
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
