package natsauth

import (
	"context"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// A stolen audit credential can read what the HSM signer last signed per
// log, but cannot rewrite, purge or delete it (which would let it get a
// forked log signed); keyworkers can write it.
func TestAuditCredentialCannotResetTheSigner(t *testing.T) {
	dir := t.TempDir()
	trust, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	connect := func(name string, perms Permissions) jetstream.JetStream {
		p := filepath.Join(dir, name+".creds")
		if err := trust.WriteUserCreds(p, name, perms); err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(p), nats.CustomInboxPrefix(shared.InboxPrefix(name)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mesh.Bootstrap(ctx, connect(shared.UserBootstrap, BootstrapPermissions()), mesh.DefaultTopology(), []string{"default"}); err != nil {
		t.Fatal(err)
	}
	kwJS := connect("keyworker", ServicePermissions("keyworker", []string{"default"}))
	kv, err := mesh.EnsureBucket(ctx, kwJS, shared.BucketAuditSigner, "t", mesh.DefaultTopology())
	if err != nil {
		t.Fatalf("keyworker cannot declare the signer bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "default.tenant.eA", []byte(`{"size":5}`)); err != nil {
		t.Fatalf("keyworker cannot write the signer state: %v", err)
	}

	auditJS := connect("audit", ServicePermissions("audit", []string{"default"}))
	akv, err := auditJS.KeyValue(ctx, shared.BucketAuditSigner)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := akv.Get(ctx, "default.tenant.eA"); err != nil || string(e.Value()) != `{"size":5}` {
		t.Fatalf("audit cannot read the signer state: %v", err)
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	stream := shared.KVStream(shared.BucketAuditSigner)
	for name, attack := range map[string]func() error{
		"put":           func() error { _, err := akv.Put(short(), "default.tenant.eA", []byte(`{"size":0}`)); return err },
		"delete key":    func() error { return akv.Delete(short(), "default.tenant.eA") },
		"purge key":     func() error { return akv.Purge(short(), "default.tenant.eA") },
		"delete bucket": func() error { return auditJS.DeleteKeyValue(short(), shared.BucketAuditSigner) },
		"purge stream": func() error {
			s, err := auditJS.Stream(short(), stream)
			if err != nil {
				return err
			}
			return s.Purge(short())
		},
		"delete message": func() error {
			s, err := auditJS.Stream(short(), stream)
			if err != nil {
				return err
			}
			return s.DeleteMsg(short(), 1)
		},
		"update config": func() error {
			_, err := auditJS.UpdateStream(short(), jetstream.StreamConfig{Name: stream, Subjects: []string{"$KV." + shared.BucketAuditSigner + ".>"}, MaxAge: time.Second})
			return err
		},
	} {
		if err := attack(); err == nil {
			t.Errorf("audit credential could %s the signer state", name)
		}
	}
	if e, err := kv.Get(ctx, "default.tenant.eA"); err != nil || string(e.Value()) != `{"size":5}` {
		t.Fatalf("signer state changed: %v", err)
	}
}
