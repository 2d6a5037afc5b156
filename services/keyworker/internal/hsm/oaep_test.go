package hsm

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"testing"
)

// SoftHSM 2.6 refuses OAEP with SHA-256, so the host path runs; the HSM
// path is exercised with SHA-1, the one OAEP hash SoftHSM 2.6 wraps with.
func TestOAEPWrapPaths(t *testing.T) {
	ctx := t.Context()
	t.Run("sha256", func(t *testing.T) {
		h := newHierarchyHSM(t)
		ekt := newEKT(t, h, "t")
		_, wrapped, err := h.GenerateSecret(ctx, ekt, EKTContext("t"), SecretContext("t", "i", "v"), &testRSAKey().PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		openWrapped(t, wrapped)
		switch mode := h.hier.oaep.Load(); {
		case mode == oaepInHost && h.isSoftHSM():
			t.Log("SoftHSM refused RSA-OAEP SHA-256 in C_WrapKey; wrapped in keyworker memory")
		case mode == oaepInHSM:
			t.Log("the token wraps with RSA-OAEP SHA-256 itself")
		default:
			t.Fatalf("oaep mode %d", mode)
		}
	})
	t.Run("in-hsm path with sha1", func(t *testing.T) {
		h := newHierarchyHSM(t)
		h.hier.oaepHash = crypto.SHA1
		ekt := newEKT(t, h, "t")
		enc, wrapped, err := h.GenerateSecret(ctx, ekt, EKTContext("t"), SecretContext("t", "i", "v"), &testRSAKey().PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if mode := h.hier.oaep.Load(); mode != oaepInHSM {
			t.Fatalf("oaep mode %d, want in-HSM", mode)
		}
		secret, err := rsa.DecryptOAEP(sha1.New(), nil, testRSAKey(), wrapped, nil)
		if err != nil || len(secret) != 32 {
			t.Fatalf("C_WrapKey OAEP output does not open: %v", err)
		}
		h.hier.oaepHash = 0
		h.hier.oaep.Store(oaepUnknown)
		again, err := h.DecryptSecret(ctx, ekt, EKTContext("t"), enc, SecretContext("t", "i", "v"), &testRSAKey().PublicKey)
		if err != nil || !bytes.Equal(openWrapped(t, again), secret) {
			t.Fatalf("secret wrapped in the HSM differs from the host-wrapped one (%v)", err)
		}
	})
}
