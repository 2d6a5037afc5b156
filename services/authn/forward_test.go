package authn

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// forwarder is an authn service on nc/js that can forward work (its work
// signer is a test key).
func forwarder(t *testing.T, nc *nats.Conn, js jetstream.JetStream, topo mesh.Topology) *Service {
	t.Helper()
	s, err := New(Config{Topology: topo, MaxSkew: 5 * time.Minute, Concurrency: 1},
		Deps{NC: nc, JS: js, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Tracer: noop.NewTracerProvider(), Now: time.Now,
			WorkSigner: testWorkSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A full pool queue answers ThrottlingException at once instead of queueing
// work the HSM cannot reach before its deadline.
func TestForwardThrottlesWhenPoolQueueIsFull(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	topo.WorkQueueDepth = 1
	if _, err := mesh.EnsureWorkStreams(ctx, js, "busy", topo); err != nil {
		t.Fatal(err)
	}
	s := forwarder(t, nc, js, topo)
	env := func(id string) *shared.Envelope {
		return &shared.Envelope{Version: shared.EnvelopeVersion, ID: id, API: shared.APIXKSEncrypt, ReplyTo: "r",
			Evidence: shared.Evidence{Header: map[string][]string{"Authorization": {"secret-bearing header"}}},
			Authz:    &shared.Authz{Pool: "busy"}}
	}
	first := env("a")
	if err := s.forward(ctx, first); err != nil {
		t.Fatalf("first: %v", err)
	}
	if first.Evidence.Header != nil {
		t.Fatal("caller headers must not travel past authn")
	}
	// The queued work is signed over its exact bytes, for its pool.
	stream, err := js.Stream(ctx, shared.WorkStream("busy"))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetLastMsgForSubject(ctx, shared.WorkSubject("busy", shared.APIXKSEncrypt))
	if err != nil {
		t.Fatal(err)
	}
	v := &shared.WorkVerifier{Pool: "busy", Now: time.Now}
	v.SetKeys([]string{s.signer.PublicKey()})
	if err := v.Verify("a", stored.Data, stored.Header.Get(shared.HeaderWorkSignature), stored.Header.Get(shared.HeaderWorkSession), stream.CachedInfo().Config.Name, stored.Sequence); err != nil {
		t.Fatalf("queued work is not signed: %v", err)
	}
	other := &shared.WorkVerifier{Pool: "other", Now: time.Now}
	other.SetKeys([]string{s.signer.PublicKey()})
	if err := other.Verify("a", stored.Data, stored.Header.Get(shared.HeaderWorkSignature), stored.Header.Get(shared.HeaderWorkSession), "S", 1); err == nil {
		t.Fatal("work signed for one pool verifies for another")
	}
	if err := s.forward(ctx, env("b")); shared.CodeOf(err) != shared.CodeThrottling {
		t.Fatalf("second: want throttling, got %v", err)
	}
	if err := s.forward(ctx, &shared.Envelope{Version: 1, ID: "c", API: shared.APIXKSEncrypt, ReplyTo: "r",
		Authz: &shared.Authz{Pool: "nopool"}}); shared.CodeOf(err) != shared.CodeDependencyTimeout {
		t.Fatalf("unknown pool: want dependency timeout, got %v", err)
	}
}

// A request that arrived with mesh.HeaderRoute (resent, or published on a
// detour round a stalled sibling) has its work published on the work
// sibling of the request sibling it came from, not the key's own: the
// stall may be in the key's own work consumer too.
func TestForwardKeepsARoutedRequestOnItsPath(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	topo.Siblings = 3
	streams, err := mesh.EnsureWorkStreams(ctx, js, "p", topo)
	if err != nil {
		t.Fatal(err)
	}
	s := forwarder(t, nc, js, topo)
	env := func(id string) *shared.Envelope {
		return &shared.Envelope{Version: shared.EnvelopeVersion, ID: id, API: shared.APIXKSEncrypt, ReplyTo: "r",
			Authz: &shared.Authz{Pool: "p"}}
	}
	landed := func() int { // the work sibling holding one more message than before
		t.Helper()
		for i, st := range streams {
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs > 0 {
				if err := st.Purge(ctx); err != nil {
					t.Fatal(err)
				}
				return i
			}
		}
		t.Fatal("no work stored")
		return -1
	}
	if err := s.forward(ctx, env("plain")); err != nil {
		t.Fatal(err)
	}
	own := landed()
	routed := (own + 1) % 3
	rctx := context.WithValue(ctx, routeKey{}, routed+1)
	if err := s.forward(rctx, env("plain")); err != nil {
		t.Fatal(err)
	}
	if got := landed(); got != routed {
		t.Fatalf("routed work on sibling %d, want %d (the key's own is %d)", got, routed, own)
	}
	// The route is read off the consumed request: its subject's sibling,
	// only with the header.
	h := nats.Header{}
	if got := mesh.RouteOf(shared.RequestSubjectOn(2, shared.APIXKSEncrypt), h); got != 0 {
		t.Fatalf("route without the header: %d", got)
	}
	h.Set(mesh.HeaderRoute, "1")
	if got := mesh.RouteOf(shared.RequestSubjectOn(2, shared.APIXKSEncrypt), h); got != 3 {
		t.Fatalf("route %d, want 3", got)
	}
}

func TestCheckPolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                    string
		principals, vpcs, vpces []string
		principal, vpc, vpce    string
		rule                    string
	}{
		{"empty policy allows", nil, nil, nil, "arn:aws:iam::1:user/a", "", "", ""},
		{"exact principal", []string{"arn:aws:iam::1:user/a"}, nil, nil, "arn:aws:iam::1:user/a", "", "", ""},
		{"wildcard principal", []string{"arn:aws:iam::1:*"}, nil, nil, "arn:aws:iam::1:role/x", "", "", ""},
		{"other principal", []string{"arn:aws:iam::1:*"}, nil, nil, "arn:aws:iam::2:role/x", "", "", "allowed_principals"},
		{"vpc required but absent", nil, []string{"vpc-1"}, nil, "p", "", "", "allowed_vpcs"},
		{"vpc matches", nil, []string{"vpc-1"}, nil, "p", "vpc-1", "", ""},
		{"vpce mismatch", nil, nil, []string{"vpce-1"}, "p", "vpc-1", "vpce-2", "allowed_vpces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rule, ok := checkPolicy(policyOf(tc.principals, tc.vpcs, tc.vpces), metadataOf(tc.principal, tc.vpc, tc.vpce))
			if ok != (tc.rule == "") || rule != tc.rule {
				t.Fatalf("rule %q ok %v, want %q", rule, ok, tc.rule)
			}
		})
	}
}

func policyOf(p, v, e []string) registry.Policy {
	return registry.Policy{AllowedPrincipals: p, AllowedVPCs: v, AllowedVPCEs: e}
}

func metadataOf(p, v, e string) xks.RequestMetadata {
	return xks.RequestMetadata{AWSPrincipalArn: p, AWSSourceVpc: v, AWSSourceVpce: e}
}

func TestVerifiedCertCacheBounds(t *testing.T) {
	t.Parallel()
	now := time.Now()
	leaf := &x509.Certificate{Raw: []byte("leaf"), NotAfter: now.Add(time.Minute)}
	ca := &x509.Certificate{Raw: []byte("ca")}
	other := &x509.Certificate{Raw: []byte("other ca")}
	var v verifiedCerts
	if v.check(leaf, ca, now) {
		t.Fatal("unverified leaf reported verified")
	}
	v.remember(leaf, ca, now)
	if !v.check(leaf, ca, now.Add(30*time.Second)) {
		t.Fatal("verified leaf forgotten")
	}
	if v.check(leaf, other, now) {
		t.Fatal("verification against one CA reused for another")
	}
	if v.check(leaf, ca, now.Add(2*time.Minute)) {
		t.Fatal("cache outlived the certificate")
	}
}

// testWorkSigner is a fresh work-signing key.
func testWorkSigner(t testing.TB) *shared.WorkSigner {
	t.Helper()
	path := filepath.Join(t.TempDir(), shared.WorkKeyFile)
	if _, _, err := shared.EnsureWorkKey(path); err != nil {
		t.Fatal(err)
	}
	s, err := shared.LoadWorkSigner(path, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
