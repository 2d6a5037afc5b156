package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/xksclient"
)

// run is the whole program: 0 when the run met its goal (or had none and no
// errors), 1 when it did not or could not run, 2 on a usage error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "chart" {
		return runChart(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "keys" {
		return runKeys(ctx, args[1:], getenv, stdout, stderr) // keys.go
	}
	if len(args) > 0 && args[0] == "stalls" {
		return runStalls(args[1:], stdout, stderr) // stalls.go
	}
	if len(args) > 0 && args[0] == "floor" {
		return runFloor(ctx, args[1:], getenv, stdout, stderr) // floor.go
	}
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
	if cfg.RequestsFile != "" {
		if err := writeSamples(cfg.RequestsFile, rep.samples); err != nil {
			fmt.Fprintf(stderr, "loadtest: %v\n", err)
			return 1
		}
	}
	if cfg.ChartFile != "" {
		if err := writeChart(cfg.ChartFile, timelineChart(rep, "", cfg.Marks)); err != nil {
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
	if cfg.API == APIAudit {
		return executeAudit(ctx, cfg, progress, now)
	}
	t, closeIdle, err := newLoadTarget(ctx, cfg, progress)
	if err != nil {
		return Report{}, err
	}
	defer closeIdle()

	prepCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := t.prepare(prepCtx, progress); err != nil {
		return Report{}, err
	}
	mode := fmt.Sprintf("closed loop, concurrency %d", cfg.Concurrency)
	if cfg.OpenLoop() {
		mode = fmt.Sprintf("open loop, %.0f req/s", cfg.Rate)
	}
	fmt.Fprintf(progress, "loadtest: %s %s %s for %s after %s warmup\n", cfg.API, cfg.Op, mode, cfg.Duration, cfg.Warmup)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	started := now()
	cpu := watchCPU(watchCtx, cfg, started, now)
	res := newRunner(cfg, t.do, now).run(ctx)
	rep := buildReport(cfg, started, res)
	if v, ok := t.(*vsTarget); ok {
		rep.addVS(v)
	}
	if res.interrupted || res.capped {
		return rep, nil // the window did not run its course
	}
	select {
	case s := <-cpu:
		rep.CPU = cpuReport(s, res.okInWindow, cfg.NodePID)
	case <-time.After(2 * time.Second): // the run returns at the window's end; the sample is due then
	}
	return rep, nil
}

// newLoadTarget builds the target of cfg.API and its HTTPS client; the
// returned func closes the client's idle connections.
func newLoadTarget(ctx context.Context, cfg Config, progress io.Writer) (loadTarget, func(), error) {
	tc, err := tlsConfig(cfg.CAFile)
	if err != nil {
		return nil, nil, err
	}
	if cfg.API == APIVS {
		v, err := newVSTarget(ctx, cfg, tc, progress)
		if err != nil {
			return nil, nil, err
		}
		return v, v.closeIdle, nil
	}
	hc := newHTTPClient(tc, cfg.workers(), cfg.Conns, cfg.Timeout, true)
	client := &xksclient.Client{BaseURL: cfg.URL, Prefix: cfg.Prefix, AccessKeyID: cfg.AccessKeyID, Secret: cfg.Secret, HTTP: hc}
	return newTarget(client, cfg), hc.CloseIdleConnections, nil
}
