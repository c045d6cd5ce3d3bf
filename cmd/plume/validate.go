package main

import (
	"fmt"
	"io"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/runtime"
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
	return runtime.Validate(cfg)
}
