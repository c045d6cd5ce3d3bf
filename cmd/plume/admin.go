package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/plumecdc/plume/connectors/postgres"
	"github.com/plumecdc/plume/pkg/config"
)

// adminCall sends one request to a running pipeline's admin API, found
// through the pipeline file's admin block.
func adminCall(cfg *config.Pipeline, method, path string, stdout io.Writer) error {
	if cfg.Admin == nil {
		return fmt.Errorf("%s has no admin block: the admin API is off for this pipeline", cfg.File)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+cfg.Admin.Listen+path, nil)
	if err != nil {
		return err
	}
	if cfg.Admin.Token.IsSet() {
		req.Header.Set("Authorization", "Bearer "+cfg.Admin.Token.Reveal())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s: %w (is the pipeline running?)", cfg.Admin.Listen, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("admin API: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	_, err = stdout.Write(body)
	return err
}

// cmdAdmin builds the commands that drive a running pipeline.
func cmdAdmin(name, usageLine, summary string, nargs int, request func(args []string) (method, path string)) func([]string, io.Writer, io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		fs := newFlags(name, usageLine, summary, stdout, stderr)
		file := fs.String("c", "", "pipeline config file (required); its admin block locates the API")
		// Positional arguments may come before the flags.
		var pos []string
		for len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
			pos, args = append(pos, args[0]), args[1:]
		}
		if code, done := parseFlags(fs, args, stdout); done {
			return code
		}
		pos = append(pos, fs.Args()...)
		if *file == "" || len(pos) != nargs {
			fmt.Fprintf(stderr, "Usage: plume %s\n", usageLine)
			return 2
		}
		cfg, err := config.Load(*file)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		method, path := request(pos)
		if err := adminCall(cfg, method, path, stdout); err != nil {
			fmt.Fprintln(stderr, "plume "+name+":", err)
			return 1
		}
		return 0
	}
}

var (
	cmdStatus = cmdAdmin("status", "status -c FILE",
		"Show a running pipeline's status: source lag (slot lag or binlog distance), capture counters,\n"+
			"and each target's progress, pause state and failures.", 0,
		func([]string) (string, string) { return http.MethodGet, "/api/v1/status" })
	cmdPause = cmdAdmin("pause", "pause TARGET -c FILE",
		"Pause one target of a running pipeline (e.g. for a CRM maintenance window). Its consumer stops\n"+
			"polling; other targets and capture go on. Resume with 'plume resume'.", 1,
		func(a []string) (string, string) {
			return http.MethodPost, "/api/v1/targets/" + url.PathEscape(a[0]) + "/pause"
		})
	cmdResume = cmdAdmin("resume", "resume TARGET -c FILE", "Resume a paused target.", 1,
		func(a []string) (string, string) {
			return http.MethodPost, "/api/v1/targets/" + url.PathEscape(a[0]) + "/resume"
		})
	cmdSnapshot = cmdAdmin("snapshot", "snapshot TABLE -c FILE",
		"Snapshot one table again while streaming continues (watermark-based, consistent with the\n"+
			"stream). TABLE is schema.table (PostgreSQL) or db.table (MySQL).", 1,
		func(a []string) (string, string) {
			return http.MethodPost, "/api/v1/snapshot?table=" + url.QueryEscape(a[0])
		})
)

// cmdSource implements `plume source drop`: remove what Plume created in
// the source database.
func cmdSource(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "drop" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stdout, "Usage: plume source drop -c FILE\n\nDrop the PostgreSQL replication slot and publication of a pipeline (stop it first).")
			return 0
		}
		fmt.Fprintln(stderr, "Usage: plume source drop -c FILE")
		return 2
	}
	fs := newFlags("source drop", "source drop -c FILE",
		"Drop the PostgreSQL replication slot and publication that Plume created for a pipeline, so\n"+
			"they no longer pin WAL. Stop the pipeline first. The next run starts afresh (a new snapshot,\n"+
			"if snapshot: initial) only after the capture checkpoint is reset too.", stdout, stderr)
	file := fs.String("c", "", "pipeline config file (required)")
	if code, done := parseFlags(fs, args[1:], stdout); done {
		return code
	}
	if *file == "" {
		fmt.Fprintln(stderr, "plume source drop: -c FILE is required")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if cfg.Source.Type != config.SourcePostgres {
		fmt.Fprintln(stderr, "plume source drop: only PostgreSQL sources create objects in the database (MySQL needs no cleanup)")
		return 1
	}
	pc, err := postgres.ConfigFrom(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := postgres.Drop(ctx, pc); err != nil {
		fmt.Fprintln(stderr, "plume source drop:", err)
		return 1
	}
	fmt.Fprintf(stdout, "dropped slot %s and publication %s\n", cfg.Source.Slot, cfg.Source.Publication)
	return 0
}
