package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// A whole standalone restart (NATS, HSM token, every service) keeps every
// volume secret decryptable and every XKS key store usable: all state is in
// JetStream and the token, nothing in process memory.
func TestRestartKeepsState(t *testing.T) {
	ctx := context.Background()
	n := testNode
	n.cli(t, nil, "tenant", "create", "--id", "vpc-restart")
	vc := n.instanceClient(t, "vpc-restart", "i-restart")
	var secret, enc []byte
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() (err error) {
		secret, enc, err = vc.GenerateSecret(ctx, "i-restart", "vol-r")
		return err
	})
	xc, _ := n.newKeystore(t, "/restart")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/restart", "--id", "k")
	waitUsable(t, xc)
	ct, err := xc.Encrypt(ctx, "k", []byte("survives restarts"), nil, false)
	if err != nil {
		t.Fatal(err)
	}

	// What the previous version left in the data dir: the shared operator
	// credential (wide permissions), which works until the upgrade.
	legacy := legacyOperatorCreds(t, n)
	// ... and no authn work key, no pins bucket (worksig_e2e_test.go).
	preSignedHops(t, n)
	// ... and service credentials that never expire.
	oldGateway := nonExpiringServiceCreds(t, n, "gateway")

	if code := n.shutdown(); code != 0 {
		t.Fatalf("standalone exited %d: %s", code, n.stderr.String())
	}
	restarted, err := startNode(n.dir, n.shares)
	if err != nil {
		t.Fatal(err)
	}
	testNode = restarted

	// The new build revoked and deleted it; the first admin's own
	// credential works.
	if _, err := os.Stat(filepath.Join(n.dir, clusterinit.LegacyOperatorCreds)); !os.IsNotExist(err) {
		t.Fatalf("the shared operator credential survived the upgrade: %v", err)
	}
	if nc, err := nats.Connect(restarted.natsURL, nats.UserCredentials(legacy), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("the revoked operator credential still connects")
	}
	// The gateway's was re-issued with an expiry; the old key is revoked.
	if nc, err := nats.Connect(restarted.natsURL, nats.UserCredentials(oldGateway), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("the non-expiring gateway credential still connects after the upgrade")
	}
	if exp, err := mesh.CredsExpiry(filepath.Join(n.dir, "creds", "gateway.creds")); err != nil || exp.IsZero() {
		t.Fatalf("gateway creds after the upgrade: expiry %v, %v", exp, err)
	}
	var roster struct{ People []struct{ Name string } }
	restarted.cli(t, &roster, "operator", "list")
	if len(roster.People) == 0 || roster.People[0].Name != standaloneAdmin {
		t.Fatalf("roster after the upgrade: %+v", roster)
	}

	// The work key was made at start and pinned; the pool's signing key,
	// published by a plain put before, is the pinned one.
	checkSignedHopsAfterUpgrade(t, restarted)

	vc.BaseURL = restarted.gateway
	got, err := vc.DecryptSecret(ctx, "i-restart", "vol-r", enc)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("secret after restart: %v", err)
	}
	xc.BaseURL, xc.HTTP = restarted.gateway, restarted.http
	pt, err := xc.Decrypt(ctx, "k", ct, nil)
	if err != nil || string(pt) != "survives restarts" {
		t.Fatalf("xks decrypt after restart: %q %v", pt, err)
	}
}

// nonExpiringServiceCreds rewrites DATA/creds/SVC.creds as releases before
// 2026-12-07 wrote it (no expiry) and returns a copy outside the data dir.
func nonExpiringServiceCreds(t *testing.T, n *node, svc string) string {
	t.Helper()
	trust, err := natsauth.LoadOrCreate(filepath.Join(n.dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	creds, _, err := trust.IssueUserUntil(svc, natsauth.ServicePermissions(svc, []string{"default"}), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, "creds", svc+".creds"), creds, 0o600); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), svc+".creds")
	if err := os.WriteFile(cp, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return cp
}

// pinLeaks rebuilds the HSM PIN from the node's shares (as only share
// holders can) and looks for it in every file of the data dir and in the
// logs. It returns a description of the first leak, or "".
func pinLeaks(n *node) string {
	var parts []unseal.Share
	for _, l := range n.shares {
		s, err := unseal.Parse(l)
		if err != nil {
			return "unparsable share: " + err.Error()
		}
		parts = append(parts, s)
	}
	pin, err := unseal.Combine(parts)
	if err != nil || len(pin) < 8 {
		return fmt.Sprintf("cannot rebuild the PIN: %v", err)
	}
	if bytes.Contains([]byte(n.stderr.String()), pin) || bytes.Contains([]byte(n.stdout.String()), pin) {
		return "the HSM PIN appears in the logs"
	}
	var leak string
	_ = filepath.WalkDir(n.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || leak != "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, pin) {
			leak = "the HSM PIN is stored in clear in " + path
		}
		return nil
	})
	return leak
}

// legacyOperatorCreds writes DATA/operator.creds as the previous version
// did (a user of the node's account with wide permissions), checks it
// connects, and returns a copy of it outside the data dir.
func legacyOperatorCreds(t *testing.T, n *node) string {
	t.Helper()
	trust, err := natsauth.LoadOrCreate(filepath.Join(n.dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := trust.UserCreds(shared.UserOperator, natsauth.Permissions{DenyPub: []string{shared.JSStreamDelete + ">"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, clusterinit.LegacyOperatorCreds), creds, 0o600); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "old-operator.creds")
	if err := os.WriteFile(cp, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(n.natsURL, nats.UserCredentials(cp))
	if err != nil {
		t.Fatalf("the legacy credential does not connect before the upgrade: %v", err)
	}
	nc.Close()
	return cp
}
