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

	if code := n.shutdown(); code != 0 {
		t.Fatalf("standalone exited %d: %s", code, n.stderr.String())
	}
	restarted, err := startNode(n.dir, n.shares)
	if err != nil {
		t.Fatal(err)
	}
	testNode = restarted

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
