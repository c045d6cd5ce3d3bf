package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/offsets"
	"github.com/plumecdc/plume/pkg/runtime"
	"github.com/plumecdc/plume/pkg/target"
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
	to := fs.String("to", "earliest", "reset --target: earliest, latest, or an RFC 3339 time (the first offset at or after it)")
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
			err = resetTarget(cfg, st, *tgt, *to, stdout, stderr)
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

// resetTarget moves a target's offsets, in the offset store and in its
// consumer group, to the start or end of every data topic or to the first
// record at or after a time. Both are rewritten because at start the later
// of the two wins (docs/delivery.md).
func resetTarget(cfg *config.Pipeline, st *offsets.Store, name, to string, stdout, stderr io.Writer) error {
	var at time.Time
	if to != "earliest" && to != "latest" {
		t, err := time.Parse(time.RFC3339, to)
		if err != nil {
			return fmt.Errorf("--to: want earliest, latest or an RFC 3339 time, not %q", to)
		}
		at = t
	}
	cc, closeKafka, err := connectKafka(cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	defer closeKafka()
	opts, err := cc.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topics, err := adm.ListTopics(ctx)
	if err != nil {
		return err
	}
	internal := map[string]bool{cfg.CheckpointTopic(): true, cfg.DLQTopic(): true}
	var data []string
	for _, name := range topics.Names() {
		if strings.HasPrefix(name, cfg.TopicPrefix()+".") && !internal[name] && !strings.HasSuffix(name, ".offsets") {
			data = append(data, name)
		}
	}
	var listed kadm.ListedOffsets
	switch {
	case to == "earliest":
		listed, err = adm.ListStartOffsets(ctx, data...)
	case to == "latest":
		listed, err = adm.ListEndOffsets(ctx, data...)
	default:
		listed, err = adm.ListOffsetsAfterMilli(ctx, at.UnixMilli(), data...)
	}
	if err != nil {
		return err
	}
	if err := listed.Error(); err != nil {
		return err
	}
	o := target.Offsets{}
	commit := kadm.Offsets{}
	listed.Each(func(l kadm.ListedOffset) {
		o[target.TopicPartition{Topic: l.Topic, Partition: l.Partition}] = l.Offset
		commit.AddOffset(l.Topic, l.Partition, l.Offset, -1)
	})
	if err := st.ResetTarget(name); err != nil {
		return err
	}
	if err := st.SaveTargetOffsets(name, o); err != nil {
		return err
	}
	if err := adm.CommitAllOffsets(ctx, cfg.ConsumerGroup(name), commit); err != nil {
		return fmt.Errorf("commit offsets to group %s (is the pipeline still running?): %w", cfg.ConsumerGroup(name), err)
	}
	for _, tp := range o.Sorted() {
		fmt.Fprintf(stdout, "%s\t%s\t%d\t%d\n", name, tp.Topic, tp.Partition, o[tp])
	}
	if typ := cfg.Targets[name].Type; typ == "sql" || typ == "kafka" {
		fmt.Fprintf(stderr, "note: the %s target keeps its own offsets, which win at start; to re-apply records also "+
			"remove its rows in the plume_offsets table (sql) or its offsets topic (kafka), see docs/operations.md\n", typ)
	}
	return nil
}
