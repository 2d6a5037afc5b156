package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
)

// startPprof serves Go's profiler on addr (SOVKEYS_PPROF_LISTEN) for
// performance work. Bind it to loopback only: profiles show memory.
func startPprof(addr string, logger *slog.Logger) {
	if addr == "" {
		return
	}
	if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
		logger.Error("SOVKEYS_PPROF_LISTEN must be a loopback address; profiler not started", "addr", addr)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil { //nolint:gosec // loopback debug endpoint
			logger.Error("profiler stopped", "err", err)
		}
	}()
}
