package natsauth

import (
	"context"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// A stolen gateway credential cannot reach the HSM queue, read queued
// plaintext, or read the EKT store; authn can queue work.
func TestGatewayCredentialCannotReachTheHSM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	trust, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	connect := func(name string, perms Permissions) (*nats.Conn, jetstream.JetStream, chan error) {
		p := filepath.Join(dir, name+".creds")
		if err := trust.WriteUserCreds(p, name, perms); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 16)
		nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(p), nats.CustomInboxPrefix(shared.InboxPrefix(name)), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return nc, js, errs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The operator declares what a running deployment has.
	_, opJS, _ := connect("operator", Permissions{})
	topo := mesh.DefaultTopology()
	if _, err := mesh.EnsureWorkStreams(ctx, opJS, "default", topo); err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.EnsureBucket(ctx, opJS, "sovkeys_ekt_index", "t", topo); err != nil {
		t.Fatal(err)
	}

	gw, gwJS, gwErrs := connect("gateway", ServicePermissions("gateway", []string{"default"}))
	work := shared.WorkSubject("default", shared.APIXKSEncrypt)
	if err := gw.Publish(work, []byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = gw.Flush()
	select {
	case err := <-gwErrs:
		if !strings.Contains(err.Error(), "Permissions Violation") {
			t.Fatalf("unexpected error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("gateway publish to a keyworker queue was not refused")
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 500*time.Millisecond) }
	c1, cancel1 := short()
	defer cancel1()
	if _, err := gwJS.CreateOrUpdateConsumer(c1, shared.WorkStream("default"), jetstream.ConsumerConfig{Durable: "steal"}); err == nil {
		t.Fatal("gateway created a consumer on a keyworker queue")
	}
	c2, cancel2 := short()
	defer cancel2()
	if kv, err := gwJS.KeyValue(c2, "sovkeys_ekt_index"); err == nil {
		if _, err := kv.Get(c2, "x"); err == nil {
			t.Fatal("gateway read the EKT index")
		}
	}

	// authn, and only authn, queues HSM work.
	_, authnJS, _ := connect("authn", ServicePermissions("authn", []string{"default"}))
	if _, err := authnJS.Publish(ctx, work, []byte("x")); err != nil {
		t.Fatalf("authn cannot queue work: %v", err)
	}
}
