package keyworker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

const (
	readyWait   = 30 * time.Second      // for the keyworkers to answer
	readyPoll   = 20 * time.Millisecond // between health calls
	callTimeout = 30 * time.Second      // for a test's admin calls
)

// runKeyworkers runs n keyworkers of pool "default" on ONE SoftHSM token
// (as several keyworker processes share one HSM) and waits until the
// pool's admin API answers.
func runKeyworkers(t *testing.T, nc *nats.Conn, js jetstream.JetStream, n int) {
	t.Helper()
	module, label, pin := hsmtest.NewToken(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	store, err := writeonce.NewJetStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		h, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 2}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Close() })
		svc, err := New(Config{Pool: "default", Model: "SoftHSMv2", Topology: mesh.DefaultTopology(), HealthTTL: time.Second},
			Deps{NC: nc, JS: js, HSM: h, EKTs: store, Logger: slog.New(slog.DiscardHandler), Tracer: noop.NewTracerProvider(), Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("keyworker: %v", err)
			}
		}()
	}
	testkit.CheckFor(t, readyWait, readyPoll, func() error {
		var resp kwadmin.HealthResponse
		if err := kwadmin.Call(ctx, nc, "default", kwadmin.EndpointHealth, struct{}{}, &resp); err != nil {
			return fmt.Errorf("keyworker admin not answering: %w", err)
		}
		return nil
	})
}

func TestAdminAuditSign(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	runKeyworkers(t, nc, js, 2)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	// First use from many callers at once, served by two keyworkers
	// sharing the token: exactly one key pair comes to exist.
	msgs := make([][]byte, 8)
	resps := make([]auditlog.SignResponse, len(msgs))
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i := range msgs {
		msgs[i] = []byte{'m', byte(i)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = kwadmin.Call(ctx, nc, "default", auditlog.EndpointSign, auditlog.SignRequest{Message: msgs[i]}, &resps[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("audit_sign %d: %v", i, err)
		}
		if resps[i].Key != AuditKeyLabel || !bytes.Equal(resps[i].PublicKey, resps[0].PublicKey) {
			t.Fatalf("audit_sign %d answered with another key", i)
		}
		k, err := x509.ParsePKIXPublicKey(resps[i].PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256(msgs[i])
		if !ecdsa.VerifyASN1(k.(*ecdsa.PublicKey), d[:], resps[i].Signature) {
			t.Fatalf("signature %d does not verify", i)
		}
	}

	// The public key endpoint serves the same key and publishes it in KV.
	var pk auditlog.PublicKeyResponse
	if err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointPublicKey, struct{}{}, &pk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pk.PublicKey, resps[0].PublicKey) {
		t.Fatal("audit_public_key differs from the signing key")
	}
	kv, err := js.KeyValue(ctx, shared.BucketPKI)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, auditlog.PKIKey("default"))
	if err != nil || !bytes.Equal(e.Value(), pk.PublicKey) {
		t.Fatalf("KV %s: %v", auditlog.PKIKey("default"), err)
	}
	if _, err := kv.Get(ctx, auditlog.PKIKey("default")+"_lock"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("creation lease left behind: %v", err)
	}

	// Bad requests.
	for _, req := range []auditlog.SignRequest{{}, {Message: make([]byte, maxAuditSignMessage+1)}} {
		err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointSign, req, nil)
		if shared.CodeOf(err) != shared.CodeValidation {
			t.Errorf("audit_sign(%d bytes) = %v, want a validation error", len(req.Message), err)
		}
	}
}

func TestAuditKeyMismatchFailsClosed(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	kv, err := mesh.EnsureBucket(ctx, js, shared.BucketPKI, "test", mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, auditlog.PKIKey("default"), []byte("someone else's key")); err != nil {
		t.Fatal(err)
	}
	runKeyworkers(t, nc, js, 1)
	err = kwadmin.Call(ctx, nc, "default", auditlog.EndpointPublicKey, struct{}{}, nil)
	if err == nil {
		t.Fatal("a different published audit key was accepted")
	}
}
