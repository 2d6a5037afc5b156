package keyworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// runKeyworkers runs n keyworkers of pool "default" on ONE SoftHSM token
// (as several keyworker processes share one HSM) and waits until the
// pool's admin API answers. It returns the token.
func runKeyworkers(t *testing.T, nc *nats.Conn, js jetstream.JetStream, n int) (module, label, pin string) {
	t.Helper()
	module, label, pin = hsmtest.NewToken(t)
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
		svc, err := New(Config{Pool: "default", Model: "SoftHSMv2", Topology: mesh.DefaultTopology(), HealthTTL: time.Second, AuditEd25519: true},
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		var resp kwadmin.HealthResponse
		err := kwadmin.Call(ctx, nc, "default", kwadmin.EndpointHealth, struct{}{}, &resp)
		if err == nil {
			return module, label, pin
		}
		if time.Now().After(deadline) {
			t.Fatalf("keyworker admin not answering: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tree returns a Builder holding n entries made from tag.
func tree(t *testing.T, tag string, n int) *auditlog.Builder {
	t.Helper()
	var b auditlog.Builder
	for i := range n {
		if err := b.Append([]byte(fmt.Sprintf("%s-%d", tag, i))); err != nil {
			t.Fatal(err)
		}
	}
	return &b
}

// signReq is the request to sign b, proving consistency from oldSize.
func signReq(t *testing.T, sc auditlog.Scope, b *auditlog.Builder, oldSize int64) auditlog.SignRequest {
	t.Helper()
	root, err := b.Root()
	if err != nil {
		t.Fatal(err)
	}
	var proof [][]byte
	if oldSize > 0 && oldSize < b.Size() {
		hr, err := b.HashReader(context.Background(), nil, sc)
		if err != nil {
			t.Fatal(err)
		}
		p, err := tlog.ProveTree(b.Size(), oldSize, hr)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range p {
			proof = append(proof, h[:])
		}
	}
	return auditlog.SignRequest{Tlog: &auditlog.TlogSignRequest{
		Deployment: "sovkeys.test", Kind: sc.Kind, Scope: sc.ID, OldSize: oldSize, Proof: proof, Size: b.Size(), Root: root[:],
	}}
}

func TestAdminAuditSign(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworkers(t, nc, js, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	call := func(req auditlog.SignRequest) (auditlog.TlogSignResponse, error) {
		var resp auditlog.TlogSignResponse
		err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointSign, req, &resp)
		return resp, err
	}

	// First use from many callers at once (one scope each), served by two
	// keyworkers sharing the token: exactly one key pair comes to exist.
	const callers = 8
	resps := make([]auditlog.TlogSignResponse, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: fmt.Sprintf("t-%d", i)}
			resps[i], errs[i] = call(signReq(t, sc, tree(t, "a", 3), 0))
		}()
	}
	wg.Wait()
	var pk auditlog.PublicKeyResponse
	if err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointPublicKey, struct{}{}, &pk); err != nil {
		t.Fatal(err)
	}
	pub, err := auditlog.ParsePublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	trust := auditlog.Trust{Deployment: "sovkeys.test", LogKey: pub}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("audit_sign %d: %v", i, err)
		}
		sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: fmt.Sprintf("t-%d", i)}
		th, _, err := trust.OpenCheckpoint(resps[i].Checkpoint, sc)
		if err != nil || th.Size != 3 {
			t.Fatalf("checkpoint %d: %v (size %d)\n%s", i, err, th.Size, resps[i].Checkpoint)
		}
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

	// One log grows: 3 -> 5 with a consistency proof.
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "t-0"}
	five := tree(t, "a", 5)
	r, err := call(signReq(t, sc, five, 3))
	if err != nil || r.Conflict {
		t.Fatalf("3 -> 5: %+v %v", r, err)
	}
	if th, _, err := trust.OpenCheckpoint(r.Checkpoint, sc); err != nil || th.Size != 5 {
		t.Fatalf("checkpoint of 5: %v", err)
	}
	// The same tree again is answered with the stored checkpoint.
	if again, err := call(signReq(t, sc, five, 5)); err != nil || !bytes.Equal(again.Checkpoint, r.Checkpoint) {
		t.Fatalf("re-sign of 5: %v", err)
	}
	// A caller behind is told the signed size.
	if c, err := call(signReq(t, sc, tree(t, "a", 6), 3)); err != nil || !c.Conflict || c.SignedSize != 5 {
		t.Fatalf("stale old size: %+v %v", c, err)
	}
	// The state is in KV, where only keyworkers write.
	skv, err := js.KeyValue(ctx, shared.BucketAuditSigner)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := skv.Get(ctx, auditlog.SignerStateKey("default", sc)); err != nil || !bytes.Contains(e.Value(), []byte(`"size":5`)) {
		t.Fatalf("signer state: %v", err)
	}

	// What an attacker driving the audit service would try: each refused.
	fork := tree(t, "a", 4)
	if err := fork.Append([]byte("forged")); err != nil {
		t.Fatal(err)
	}
	if err := fork.Append([]byte("a-5")); err != nil {
		t.Fatal(err)
	}
	forkSame := tree(t, "b", 5)
	bad := []struct {
		name string
		req  auditlog.SignRequest
	}{
		{"a forked tree with its own proof", signReq(t, sc, fork, 5)},
		{"another root at the signed size", signReq(t, sc, forkSame, 5)},
		{"a rollback to a smaller tree", signReq(t, sc, tree(t, "a", 4), 5)},
		{"a restart from zero", signReq(t, sc, tree(t, "a", 7), 0)},
		{"a proof from nothing", func() auditlog.SignRequest {
			req := signReq(t, sc, tree(t, "a", 8), 5)
			req.Tlog.Proof = nil
			return req
		}()},
		{"an arbitrary message", auditlog.SignRequest{Message: []byte("anything")}},
		{"a message beside a checkpoint", func() auditlog.SignRequest {
			req := signReq(t, sc, tree(t, "a", 8), 5)
			req.Message = []byte("x")
			return req
		}()},
		{"another deployment for the same scope", func() auditlog.SignRequest {
			req := signReq(t, sc, tree(t, "a", 8), 5)
			req.Tlog.Deployment = "elsewhere"
			return req
		}()},
		{"a short root", func() auditlog.SignRequest {
			req := signReq(t, sc, tree(t, "a", 8), 5)
			req.Tlog.Root = req.Tlog.Root[:16]
			return req
		}()},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r, err := call(tc.req)
			if err == nil && !r.Conflict {
				t.Fatalf("signed: %s", r.Checkpoint)
			}
			if err == nil && r.Conflict && r.SignedSize != 5 {
				t.Fatalf("conflict names size %d", r.SignedSize)
			}
		})
	}
	// Still at 5, and it grows on from there.
	if r, err := call(signReq(t, sc, tree(t, "a", 300), 5)); err != nil || r.Conflict {
		t.Fatalf("5 -> 300: %+v %v", r, err)
	}
}

func TestAuditKeyMismatchFailsClosed(t *testing.T) {
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
