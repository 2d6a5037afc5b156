package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A compromised gateway replays a signed request with other routing: the
// key store, key id and API come from the signed path, so any difference
// is refused (and audited under the signed path's key store).
func TestRoutingFromSignedPath(t *testing.T) {
	t.Parallel()
	signed := xks.Route{Prefix: "team/a", KeyID: "key-1", Op: xks.OpEncrypt}
	for _, tc := range []struct {
		name   string
		mutate func(*shared.Envelope)
		ok     bool
	}{
		{"as signed", func(*shared.Envelope) {}, true},
		{"other key", func(e *shared.Envelope) { e.KeyID = "key-2" }, false},
		{"other key store", func(e *shared.Envelope) { e.KeyStore = "team/b" }, false},
		{"decrypt for a signed encrypt", func(e *shared.Envelope) { e.API = shared.APIXKSDecrypt }, false},
		{"path not XKS", func(e *shared.Envelope) { e.Evidence.Path = "/v1/encryption/i-1/generate-secret" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := &shared.Envelope{API: shared.APIXKSEncrypt, KeyStore: signed.Prefix, KeyID: signed.KeyID,
				Evidence: shared.Evidence{Path: signed.Path()}}
			tc.mutate(env)
			ev := &shared.AuditEvent{Scope: env.KeyStore}
			err := deriveXKS(env, ev)
			if (err == nil) != tc.ok {
				t.Fatalf("deriveXKS = %v, want ok=%v", err, tc.ok)
			}
			if err == nil && ev.Scope != signed.Prefix {
				t.Fatalf("audit scope %q", ev.Scope)
			}
		})
	}
	vsEnv := func(path string, api shared.API, instance string) *shared.Envelope {
		return &shared.Envelope{API: api, Evidence: shared.Evidence{Path: path, InstanceID: instance}}
	}
	if err := deriveVS(vsEnv("/v1/encryption/i-1/generate-secret", shared.APIVSGenerate, "i-1")); err != nil {
		t.Fatalf("genuine volume-secret routing refused: %v", err)
	}
	if err := deriveVS(vsEnv("/v1/encryption/i-1/generate-secret", shared.APIVSDecrypt, "i-1")); err == nil {
		t.Fatal("decrypt accepted for a generate path")
	}
	if err := deriveVS(vsEnv("/v1/encryption/i-1/generate-secret", shared.APIVSGenerate, "i-2")); err == nil {
		t.Fatal("another instance accepted")
	}
}

func testCert(t *testing.T, uri *url.URL, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if uri == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	} else {
		tmpl.URIs = []*url.URL{uri}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// A stranger with a self-made certificate naming a registered tenant and
// one naming an unknown tenant gets the same answer: the chain is verified
// before the tenant is looked up, so tenant ids cannot be enumerated.
func TestNoTenantOracleBeforeChain(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topo := mesh.DefaultTopology()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(Config{Topology: topo, MaxSkew: 5 * time.Minute, Concurrency: 1},
		Deps{NC: nc, JS: js, Logger: logger, Tracer: noop.NewTracerProvider(), Now: time.Now, WorkSigner: testWorkSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := registry.OpenTenants(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	if err := tenants.Create(ctx, &registry.Tenant{ID: "vpc-real", Pool: "default", Status: registry.TenantEnabled,
		AuthMethods: []string{"mtls"}, EKTName: "vpc-real"}); err != nil {
		t.Fatal(err)
	}
	if s.tenants, err = registry.WatchBucket[registry.Tenant](ctx, tenants.KV, logger, nil); err != nil {
		t.Fatal(err)
	}
	<-s.tenants.Ready()
	if s.kill, err = killswitch.Watch(ctx, js, topo, logger); err != nil {
		t.Fatal(err)
	}
	realCA, realKey := testCert(t, nil, nil, nil)
	s.cas = &caPool{certs: map[string]*x509.Certificate{"default": realCA}}
	strangerCA, strangerKey := testCert(t, nil, nil, nil)

	call := func(tenant string, ca *x509.Certificate, key *ecdsa.PrivateKey) error {
		leaf, _ := testCert(t, InstanceURI(tenant, "i-1"), ca, key)
		env := &shared.Envelope{API: shared.APIVSGenerate, Evidence: shared.Evidence{InstanceID: "i-1", ClientCerts: [][]byte{leaf.Raw}}}
		_, err := s.volumeSecret(ctx, env, &shared.AuditEvent{})
		return err
	}
	known, unknown := call("vpc-real", strangerCA, strangerKey), call("vpc-nobody", strangerCA, strangerKey)
	if shared.CodeOf(known) != shared.CodeAuthenticationFailed || known.Error() != unknown.Error() {
		t.Fatalf("registered tenant: %v; unknown tenant: %v (must be the same authentication failure)", known, unknown)
	}
	// With a genuine chain, an unregistered tenant is refused after it.
	if err := call("vpc-nobody", realCA, realKey); shared.CodeOf(err) != shared.CodeAccessDenied {
		t.Fatalf("genuine chain, unknown tenant: %v", err)
	}
}
