package main

import (
	"bytes"
	"context"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"testing"

	"fmt"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
	"time"
)

// TestXKSKeyRotationCLI: a key rotated twice through the CLI decrypts
// ciphertexts of all three versions; new encrypts carry version 3; old
// versions are narrowed, disabled and destroyed (two steps).
func TestXKSKeyRotationCLI(t *testing.T) {
	n := testNode
	c, _ := n.newKeystore(t, "/rotation")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/rotation", "--id", "rk", "--usage", "encrypt,decrypt")
	waitUsable(t, c)
	ctx := context.Background()
	pt, aad := randBytes(t, 4300), randBytes(t, 8192)
	var cts []*xks.EncryptResponse
	for v := 1; v <= 3; v++ {
		if v > 1 {
			var out xksKeyVersionsOut
			n.cli(t, &out, "xks", "key", "rotate", "--keystore", "/rotation", "--id", "rk")
			if out.Changed != v || len(out.Versions) != v || out.Versions[v-1].State != "ACTIVE" {
				t.Fatalf("rotate %d: %+v", v-1, out)
			}
		}
		enc := encryptNewest(t, c, pt, aad, v)
		cts = append(cts, enc)
	}
	for i, enc := range cts {
		got, err := c.Decrypt(ctx, "rk", enc, aad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("version %d ciphertext: %v", i+1, err)
		}
	}
	// Disable version 2: its ciphertexts stop decrypting, the others do not.
	var out xksKeyVersionsOut
	n.cli(t, &out, "xks", "key", "version", "disable", "--keystore", "/rotation", "--id", "rk", "--version", "2")
	if out.Versions[1].State != "DISABLED" {
		t.Fatalf("disable: %+v", out)
	}
	if _, err := c.Decrypt(ctx, "rk", cts[1], aad); xksErrName(err) != "InvalidKeyUsageException" {
		t.Fatalf("disabled version decrypt: %v", err)
	}
	if _, err := c.Decrypt(ctx, "rk", cts[2], aad); err != nil {
		t.Fatalf("version 3 after disabling 2: %v", err)
	}
	// The newest version is never disabled.
	if err := n.cliErr(nil, "xks", "key", "version", "disable", "--keystore", "/rotation", "--id", "rk", "--version", "3"); err == nil {
		t.Fatal("disabling the newest version succeeded")
	}
	// Destroy: step one destroys nothing and prints the code.
	n.cli(t, &out, "xks", "key", "version", "destroy", "--keystore", "/rotation", "--id", "rk", "--version", "2")
	if out.Destroyed || out.Confirm == "" || len(out.Versions) != 3 {
		t.Fatalf("destroy step one: %+v", out)
	}
	if err := n.cliErr(nil, "xks", "key", "version", "destroy", "--keystore", "/rotation", "--id", "rk", "--version", "2", "--confirm", "0123456789ab"); err == nil {
		t.Fatal("destroy with a wrong code succeeded")
	}
	n.cli(t, &out, "xks", "key", "version", "destroy", "--keystore", "/rotation", "--id", "rk", "--version", "2", "--confirm", out.Confirm)
	if !out.Destroyed || len(out.Versions) != 2 {
		t.Fatalf("destroy step two: %+v", out)
	}
	if _, err := c.Decrypt(ctx, "rk", cts[1], aad); xksErrName(err) != "InvalidCiphertextException" {
		t.Fatalf("destroyed version decrypt: %v", err)
	}
	if got, err := c.Decrypt(ctx, "rk", cts[0], aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("version 1 after destroying 2: %v", err)
	}
	// An automatic rotation period is stored and shown; 0 clears it.
	n.cli(t, &out, "xks", "key", "rotate", "--keystore", "/rotation", "--id", "rk", "--every", "2160h")
	if out.RotateEvery != "2160h0m0s" || out.NextRotation == "" || len(out.Versions) != 2 {
		t.Fatalf("rotate --every: %+v", out)
	}
	n.cli(t, &out, "xks", "key", "version", "list", "--keystore", "/rotation", "--id", "rk")
	if out.RotateEvery != "2160h0m0s" {
		t.Fatalf("list after --every: %+v", out)
	}
	if err := n.cliErr(nil, "xks", "key", "rotate", "--keystore", "/rotation", "--id", "rk", "--every", "1m"); err == nil {
		t.Fatal("a one-minute rotation period was accepted")
	}
	n.cli(t, &out, "xks", "key", "rotate", "--keystore", "/rotation", "--id", "rk", "--every", "0")
	if out.RotateEvery != "0s" {
		t.Fatalf("rotate --every 0: %+v", out)
	}
}

// encryptNewest encrypts until a keyworker answers with version want (the
// pool's keyworkers learn of a rotation within a few seconds).
func encryptNewest(t *testing.T, c *xksclient.Client, pt, aad []byte, want int) *xks.EncryptResponse {
	t.Helper()
	var enc *xks.EncryptResponse
	testkit.CheckFor(t, rotationVisible, rotationPoll, func() error {
		var err error
		if enc, err = c.Encrypt(context.Background(), "rk", pt, aad, true); err != nil {
			return err
		}
		got, err := xks.DecodeKeyVersion(enc.CiphertextMetadata)
		if err != nil || got != want {
			return fmt.Errorf("ciphertextMetadata names version %d (%v), want %d", got, err, want)
		}
		return nil
	})
	return enc
}

const (
	// rotationVisible: a keyworker caches a key's newest version for 5 s.
	rotationVisible = 30 * time.Second
	rotationPoll    = 200 * time.Millisecond
)
