package mesh_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// With NATS TLS configured, services connect only when they trust the CA.
func TestConnectOverTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files, err := gateway.EnsureDevTLS(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: files.CertFile, KeyFile: files.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	tc.MinVersion = tls.VersionTLS12
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true, TLS: true, TLSConfig: tc})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	nc, _, err := mesh.Connect(ctx, mesh.ConnConfig{URL: ns.ClientURL(), CAFile: files.CAFile, Name: "t"}, logger)
	if err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	if !nc.TLSRequired() {
		t.Fatal("connection is not TLS")
	}
	nc.Close()
	if nc, _, err := mesh.Connect(ctx, mesh.ConnConfig{URL: ns.ClientURL(), Name: "t"}, logger); err == nil {
		nc.Close()
		t.Fatal("connected without trusting the server's CA")
	}
}
