// Command sk-agent is the sovkeys instance agent: it prepares, unlocks,
// mounts and takes over volumes whose key lives in the volume-secret API.
// The logic is in internal/agent; see docs/agent.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := agent.Run(ctx, os.Args[1:], agent.Env{Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(int(code))
}
