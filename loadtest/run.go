package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sovkeys/sovkeys/shared/xksclient"
)

// run is the whole program: 0 when the run met its goal (or had none and no
// errors), 1 when it did not or could not run, 2 on a usage error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 2
	}
	rep, err := execute(ctx, cfg, stderr, time.Now)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 1
	}
	rep.writeText(stdout)
	if cfg.JSONFile != "" {
		if err := rep.writeJSON(cfg.JSONFile); err != nil {
			fmt.Fprintf(stderr, "loadtest: %v\n", err)
			return 1
		}
	}
	if !rep.Pass {
		return 1
	}
	return 0
}

// execute prepares the target, sends the load and builds the report.
func execute(ctx context.Context, cfg Config, progress io.Writer, now func() time.Time) (Report, error) {
	hc, err := newHTTPClient(cfg.CAFile, cfg.workers(), cfg.Timeout)
	if err != nil {
		return Report{}, err
	}
	defer hc.CloseIdleConnections()
	client := &xksclient.Client{BaseURL: cfg.URL, Prefix: cfg.Prefix, AccessKeyID: cfg.AccessKeyID, Secret: cfg.Secret, HTTP: hc}
	t := newTarget(client, cfg)

	prepCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := t.preflight(prepCtx); err != nil {
		return Report{}, err
	}
	if cfg.Op != OpEncrypt {
		fmt.Fprintf(progress, "loadtest: pre-encrypting %d ciphertexts for decrypt\n", cfg.PoolSize)
		if err := t.fillPool(prepCtx, cfg.PoolSize, min(cfg.workers(), 32)); err != nil {
			return Report{}, err
		}
	}
	mode := fmt.Sprintf("closed loop, concurrency %d", cfg.Concurrency)
	if cfg.OpenLoop() {
		mode = fmt.Sprintf("open loop, %.0f req/s", cfg.Rate)
	}
	fmt.Fprintf(progress, "loadtest: %s %s for %s after %s warmup\n", cfg.Op, mode, cfg.Duration, cfg.Warmup)
	started := now()
	res := newRunner(cfg, t.do, now).run(ctx)
	return buildReport(cfg, started, res), nil
}
