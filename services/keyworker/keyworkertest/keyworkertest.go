// Package keyworkertest runs a real keyworker (pool "default", a fresh
// SoftHSM token, the JetStream EKT store) inside a test process.
package keyworkertest

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

const (
	readyWait = 30 * time.Second      // for the keyworker to answer
	readyPoll = 20 * time.Millisecond // between health calls
)

// Run starts the keyworker, waits until it answers on the mesh, and stops
// it when the test ends.
func Run(t testing.TB, nc *nats.Conn, js jetstream.JetStream, logger *slog.Logger) {
	t.Helper()
	module, label, pin := hsmtest.NewToken(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	h, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 4}, logger)
	if err != nil {
		close(done)
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	store, err := writeonce.NewJetStream(ctx, js, 1)
	if err != nil {
		close(done)
		t.Fatal(err)
	}
	kw, err := keyworker.New(keyworker.Config{Pool: "default", Model: "SoftHSMv2", Topology: mesh.DefaultTopology(), HealthTTL: time.Second},
		keyworker.Deps{NC: nc, JS: js, HSM: h, EKTs: store, Logger: logger, Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		close(done)
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		if err := kw.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("keyworker: %v", err)
		}
	}()
	testkit.CheckFor(t, readyWait, readyPoll, func() error {
		if err := kwadmin.Call(ctx, nc, "default", kwadmin.EndpointHealth, struct{}{}, nil); err != nil {
			return fmt.Errorf("keyworker not answering: %w", err)
		}
		return nil
	})
}
