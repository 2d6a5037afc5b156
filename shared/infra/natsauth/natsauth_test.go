package natsauth

import (
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestIssuedCredentialsAndPermissions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	trust, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The same seeds come back on restart: JetStream data stays with the account.
	again, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	a1, _ := trust.account.PublicKey()
	a2, _ := again.account.PublicKey()
	if a1 != a2 {
		t.Fatal("account key changed across loads")
	}
	ns := natstest.Start(t, trust.Configure)
	limited := filepath.Join(dir, "limited.creds")
	if err := trust.WriteUserCreds(limited, "limited", Permissions{Pub: []string{"allowed.>"}, Sub: []string{"_INBOX.>"}}); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(limited), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("denied.subject", nil); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case err := <-errs:
		if err == nil {
			t.Fatal("nil error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publish outside the permissions was not refused")
	}
	if _, err := nats.Connect(ns.ClientURL()); err == nil {
		t.Fatal("anonymous connection accepted")
	}
}
