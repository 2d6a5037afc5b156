package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// writeCreds writes a .creds file for user name, expiring at exp (0: never).
func writeCreds(t *testing.T, name string, exp int64) string {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name, uc.Expires = name, exp
	tok, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	b, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// CredsExpiry reads the user JWT's expiry (alert CredentialExpiresSoon);
// zero when it never expires; an unreadable file is an error.
func TestCredsExpiry(t *testing.T) {
	at := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name string
		exp  int64
		want time.Time
	}{
		{"gateway-1", at.Unix(), at},
		{"authn", 0, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CredsExpiry(writeCreds(t, tc.name, tc.exp))
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("CredsExpiry = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := CredsExpiry(filepath.Join(t.TempDir(), "missing.creds")); err == nil {
		t.Fatal("a missing creds file gave no error")
	}
}

// A service whose creds file is rotated keeps serving: the watcher
// reconnects it with the new user before the old key is revoked, and the
// revocation then closes no connection of it.
func TestWatchCredsRotatesWithoutRestart(t *testing.T) {
	trust, err := natsauth.LoadOrCreate(filepath.Join(t.TempDir(), "trust"))
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	dir := t.TempDir()
	svcCreds, cliCreds := filepath.Join(dir, "svc.creds"), filepath.Join(dir, "cli.creds")
	for _, p := range []string{svcCreds, cliCreds} {
		if err := trust.WriteUserCreds(p, strings.TrimSuffix(filepath.Base(p), ".creds"), natsauth.Permissions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, _, err := Connect(ctx, ConnConfig{URL: ns.ClientURL(), CredsFile: svcCreds, Name: "sovkeys-svc"}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	cli, _, err := Connect(ctx, ConnConfig{URL: ns.ClientURL(), CredsFile: cliCreds, Name: "sovkeys-cli"}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	serves := func() error {
		_, err := cli.Request("svc.echo", []byte("ping"), time.Second)
		return err
	}
	if err := serves(); err != nil {
		t.Fatal(err)
	}
	userOf := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := jwt.ParseDecoratedJWT(b)
		uc, err := jwt.DecodeUserClaims(tok)
		if err != nil {
			t.Fatal(err)
		}
		return uc.Subject
	}
	connectedAs := func(pub string) bool {
		cz, err := ns.Connz(&server.ConnzOptions{Username: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cz.Conns {
			if c.Name == "sovkeys-svc" && c.AuthorizedUser == pub {
				return true
			}
		}
		return false
	}
	old := userOf(svcCreds)
	if !connectedAs(old) {
		t.Fatal("service not connected as its first user")
	}
	if err := trust.WriteUserCreds(svcCreds, "svc", natsauth.Permissions{}); err != nil {
		t.Fatal(err)
	}
	rotated := userOf(svcCreds)
	testkit.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if !connectedAs(rotated) {
			return errors.New("service still on the old user")
		}
		return nil
	})
	if err := trust.Revoke(old, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := trust.Apply(ns); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 10*time.Second, 100*time.Millisecond, serves)
	if !connectedAs(rotated) || connectedAs(old) {
		t.Fatal("after revocation the service is not (only) on the rotated user")
	}
}
