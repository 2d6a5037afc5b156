package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// The kill-switch watch's consumer disappears on the server and a switch
// is engaged meanwhile: within the staleness bound the gateway answers 503
// DependencyTimeoutException (it cannot know the switch state), and once
// the watch is back it serves again, by itself.
func TestGatewayFailsClosedOnStaleKillSwitch(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topo := mesh.DefaultTopology()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := registry.Open(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{cfg: Config{RequestTimeout: time.Second}, nc: nc, js: js, log: logger, now: time.Now,
		tracer: noop.NewTracerProvider().Tracer("t")}
	if s.keystores, err = registry.WatchBucket[registry.Keystore](ctx, reg.Keystores, logger, nil); err != nil {
		t.Fatal(err)
	}
	if s.kill, err = killswitch.Watch(ctx, js, topo, logger); err != nil {
		t.Fatal(err)
	}
	s.noise = mesh.NewNoiseAuditor(js, shared.AuditServiceGateway, time.Hour, logger, time.Now)
	var refusalLines bytes.Buffer // written by the handlers, in this goroutine
	s.refusals = mesh.NewRefusalLog(shared.AuditServiceGateway, slog.New(slog.NewTextHandler(&refusalLines, nil)), time.Now, time.Nanosecond)
	status := func() (int, string) {
		rec := httptest.NewRecorder()
		s.handleXKS(rec, httptest.NewRequest(http.MethodPost, "/nostore/kms/xks/v1/keys/k/encrypt", strings.NewReader("{}")))
		return rec.Code, rec.Body.String()
	}
	fresh := func() error {
		if code, body := status(); code != http.StatusNotFound {
			return fmt.Errorf("status %d %s, want 404 (no such key store)", code, body)
		}
		return nil
	}
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, fresh)

	stream, err := js.Stream(ctx, shared.KVStream(shared.BucketKillSwitch))
	if err != nil {
		t.Fatal(err)
	}
	for name := range stream.ConsumerNames(ctx).Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := killswitch.Open(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	if err := killswitch.Set(ctx, kv, killswitch.ScopeAll, "", killswitch.Switch{Engaged: true, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, body := status(); code != http.StatusServiceUnavailable || !strings.Contains(body, "DependencyTimeoutException") {
			return fmt.Errorf("status %d %s, want 503 while the switch state is stale", code, body)
		}
		return nil
	})
	// The volume-secret API fails closed the same way, and every 503 is
	// counted and logged with its reason.
	rec := httptest.NewRecorder()
	s.handleVS(rec, httptest.NewRequest(http.MethodPost, "/v1/encryption/i-1/generate-secret", strings.NewReader("{}")))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("volume-secret call while stale: %d %s, want 503", rec.Code, rec.Body.String())
	}
	for _, want := range []string{`msg="xks request refused" refusal_reason=stale_state`, `msg="volume-secret request refused" refusal_reason=stale_state`} {
		if !strings.Contains(refusalLines.String(), want) {
			t.Errorf("refusal log lacks %q:\n%s", want, refusalLines.String())
		}
	}
	if s.ready(ctx) {
		t.Fatal("ready while state is stale")
	}
	// Recovery needs nobody: the watch is recreated and catches up.
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if err := s.kill.Fresh(); err != nil {
			return err
		}
		if !s.kill.AllEngaged() {
			return fmt.Errorf("engaged switch not seen after recovery")
		}
		return fresh()
	})
}
