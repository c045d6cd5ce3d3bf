// Command plume runs change-data-capture pipelines: one binary, one YAML file
// per pipeline. See `plume --help` and docs/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	// Connectors register themselves with the source and target registries.
	_ "github.com/plumecdc/plume/connectors/http"
	_ "github.com/plumecdc/plume/connectors/kafka"
	_ "github.com/plumecdc/plume/connectors/lake"
	_ "github.com/plumecdc/plume/connectors/mysql"
	_ "github.com/plumecdc/plume/connectors/postgres"
	_ "github.com/plumecdc/plume/connectors/salesforce"
	_ "github.com/plumecdc/plume/connectors/search"
	_ "github.com/plumecdc/plume/connectors/sql"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "run a pipeline until SIGINT or SIGTERM", cmdRun},
		{"validate", "check a pipeline file and compile its expressions", cmdValidate},
		{"offsets", "list or reset the checkpoints of a pipeline's targets", cmdOffsets},
		{"dlq", "list or replay the dead-letter queue", cmdDLQ},
		{"status", "show a running pipeline's status and lag", cmdStatus},
		{"pause", "pause one target of a running pipeline", cmdPause},
		{"resume", "resume a paused target", cmdResume},
		{"snapshot", "snapshot one table again while streaming continues", cmdSnapshot},
		{"source", "drop the replication slot and publication Plume created", cmdSource},
		{"version", "print the version", cmdVersion},
	}
}

func main() { os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr)) }

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" {
		return cmdVersion(nil, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "plume: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Plume: change-data-capture from MySQL/MariaDB and PostgreSQL into Kafka, routed to targets exactly once.")
	fmt.Fprintln(w, "\nUsage: plume <command> [flags]\n\nCommands:")
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'plume <command> --help' for a command's flags.")
}

// newFlags returns a flag set whose --help prints the command's usage.
func newFlags(name, usageLine, summary string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: plume %s\n\n%s\n\nFlags:\n", usageLine, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; it returns (exit code, done) where done means the
// caller should return the code (help shown, or a usage error).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (int, bool) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fs.Usage()
		return 0, true
	}
	if err != nil {
		return 2, true
	}
	return 0, false
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version", "Print Plume's version.", stdout, stderr)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	fmt.Fprintf(stdout, "plume %s\n", strings.TrimPrefix(version, "v"))
	return 0
}
