package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/offsets"
	"github.com/plumecdc/plume/pkg/runtime"
)

func cmdOffsets(args []string, stdout, stderr io.Writer) int {
	const usageText = "Usage: plume offsets list -c FILE\n       plume offsets reset -c FILE --target NAME | --capture\n\n" +
		"List or reset the checkpoints in a pipeline's offset store (state_dir)."
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, usageText)
		return 0
	}
	if len(args) == 0 || (args[0] != "list" && args[0] != "reset") {
		fmt.Fprintln(stderr, usageText)
		return 2
	}
	sub := args[0]
	fs := newFlags("offsets "+sub, "offsets "+sub+" -c FILE [--target NAME] [--capture]",
		"List or reset the checkpoints in a pipeline's offset store (state_dir). Stop the pipeline first:\n"+
			"the store is locked while it runs.", stdout, stderr)
	file := fs.String("c", "", "pipeline config file (required)")
	tgt := fs.String("target", "", "reset: the target whose offsets are removed (it restarts from the earliest offset)")
	capt := fs.Bool("capture", false, "reset: make the next start a first start (commits an empty checkpoint to Kafka, fencing any running instance, and clears the mirror)")
	if code, done := parseFlags(fs, args[1:], stdout); done {
		return code
	}
	if *file == "" {
		fmt.Fprintln(stderr, "plume offsets: -c FILE is required")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if sub == "reset" && *capt {
		// The checkpoint lives in Kafka: reach it (starting the embedded
		// broker from state_dir if the pipeline uses it).
		p, err := runtime.New(cfg, runtime.StageCapture, newLogger(cfg, stderr))
		if err != nil {
			fmt.Fprintln(stderr, "plume offsets reset:", err)
			return 1
		}
		defer p.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.ResetCapture(ctx); err != nil {
			fmt.Fprintln(stderr, "plume offsets reset:", err)
			return 1
		}
		fmt.Fprintf(stdout, "capture checkpoint reset in %s: the next start is a first start\n", cfg.CheckpointTopic())
		return 0
	}
	st, err := offsets.Open(filepath.Join(cfg.StateDir, "offsets"))
	if err != nil {
		fmt.Fprintln(stderr, "plume offsets:", err)
		return 1
	}
	defer st.Close()
	switch sub {
	case "list":
		cp, err := st.LoadCapture()
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "capture\t%s\n", cp)
		for _, name := range cfg.TargetNames() {
			o, err := st.TargetOffsets(name)
			if err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			for _, tp := range o.Sorted() {
				fmt.Fprintf(stdout, "%s\t%s\t%d\t%d\n", name, tp.Topic, tp.Partition, o[tp])
			}
		}
	case "reset":
		switch {
		case *tgt != "":
			if _, ok := cfg.Targets[*tgt]; !ok {
				fmt.Fprintf(stderr, "plume offsets reset: no target %q in %s\n", *tgt, *file)
				return 1
			}
			err = st.ResetTarget(*tgt)
		default:
			fmt.Fprintln(stderr, "plume offsets reset: give --target NAME or --capture")
			return 2
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintln(stdout, "reset")
	}
	return 0
}
