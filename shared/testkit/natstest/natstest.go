// Package natstest runs a real embedded NATS JetStream server for a test.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Run starts a JetStream server on a random loopback port with its store in
// t.TempDir(), and returns a connection and JetStream handle; all are closed
// by t.Cleanup.
func Run(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns := Start(t, nil)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return ns, nc, js
}

// Start starts a JetStream server on a random loopback port with its store
// in t.TempDir() and room for the mesh's user JWTs in a CONNECT line;
// configure (such as natsauth's Trust.Configure, for operator-signed
// accounts) edits its options first. It is shut down by t.Cleanup.
func Start(t testing.TB, configure func(*server.Options) error) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true, MaxControlLine: 64 << 10}
	if configure != nil {
		if err := configure(opts); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return ns
}
