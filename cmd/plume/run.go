package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/ops"
	"github.com/plumecdc/plume/pkg/runtime"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "run -c FILE [--stage all|capture|route]",
		"Run a pipeline until SIGINT or SIGTERM. On a signal, the Kafka transaction in progress is\n"+
			"committed if it holds only whole source transactions (or aborted), each target finishes or\n"+
			"abandons its batch, and checkpoints stay consistent.", stdout, stderr)
	file := fs.String("c", "", "pipeline config file (required)")
	stage := fs.String("stage", "all", "which stages to run: all, capture (source -> Kafka) or route (Kafka -> targets)")
	logFormat := fs.String("log-format", "", "override log.format: text or json")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to FILE (pprof format), for benchmarks and investigations")
	memProfile := fs.String("memprofile", "", "write an allocation profile to FILE when the run ends (pprof format)")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	runtime.ApplyGCDefault()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(stderr, "plume run: --cpuprofile:", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *memProfile != "" {
		defer func() {
			f, err := os.Create(*memProfile)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
			if err != nil {
				fmt.Fprintln(stderr, "plume run: --memprofile:", err)
			}
		}()
	}
	if *file == "" {
		fmt.Fprintln(stderr, "plume run: -c FILE is required")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, "plume run:", err)
		return 1
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	log := newLogger(cfg, stderr)
	event.Version = version
	st := runtime.Stage(*stage)
	if st != runtime.StageAll && st != runtime.StageCapture && st != runtime.StageRoute {
		fmt.Fprintf(stderr, "plume run: --stage must be all, capture or route, not %q\n", *stage)
		return 2
	}
	p, err := runtime.New(cfg, st, log)
	if err != nil {
		log.Error("pipeline did not start", "err", err)
		return 1
	}
	defer p.Close()
	if cfg.Admin != nil || cfg.Metrics != nil {
		m := ops.NewMetrics(p)
		m.ObserveTargets(p)
		token := ""
		var addrs []string
		if cfg.Metrics != nil {
			addrs = append(addrs, cfg.Metrics.Listen)
		}
		if cfg.Admin != nil {
			token = cfg.Admin.Token.Reveal()
			addrs = append(addrs, cfg.Admin.Listen)
		}
		srv := ops.NewServer(p, m, token, log)
		bound, err := srv.Listen(addrs...)
		if err != nil {
			log.Error("pipeline did not start", "err", err)
			return 1
		}
		defer srv.Close()
		log.Info("ops endpoints listening", "addrs", bound)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("pipeline running", "stage", st, "source", cfg.Source.Type, "dsn", cfg.Source.DSN, "targets", cfg.TargetNames())
	if err := p.Run(ctx); err != nil {
		if errors.Is(err, capture.ErrFenced) {
			log.Error("another instance of this pipeline took over; stopping", "err", err)
		} else {
			log.Error("pipeline stopped", "err", err)
		}
		return 1
	}
	log.Info("pipeline stopped cleanly")
	return 0
}

func newLogger(cfg *config.Pipeline, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.Log.SlogLevel()}
	var h slog.Handler
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h).With("pipeline", cfg.Name)
}
