package hsm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestSecretLifecycle(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	ektCtx := EKTContext("vpc-1")
	ekt := newEKT(t, h, "vpc-1")
	if len(ekt) != blobSize || ekt[0] != blobV1 {
		t.Fatalf("ekt is %d bytes, version %d; want %d, %d", len(ekt), ekt[0], blobSize, blobV1)
	}
	ctxA := SecretContext("vpc-1", "i-aaa", "vol-1")
	enc, wrapped, err := h.GenerateSecret(ctx, ekt, ektCtx, ctxA, pub)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != blobSize || enc[0] != blobV1 {
		t.Fatalf("encrypted_secret is %d bytes, version %d", len(enc), enc[0])
	}
	secret := openWrapped(t, wrapped)

	again, err := h.DecryptSecret(ctx, ekt, ektCtx, enc, ctxA, pub)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, wrapped) {
		t.Error("wrapped_secret repeats (OAEP must be randomised)")
	}
	if got := openWrapped(t, again); !bytes.Equal(got, secret) {
		t.Fatal("decrypt-secret returned another secret")
	}

	ctxB := SecretContext("vpc-1", "i-bbb", "vol-1")
	conv, err := h.ConvertSecret(ctx, ekt, ektCtx, enc, ctxA, ctxB)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := h.DecryptSecret(ctx, ekt, ektCtx, conv, ctxB, pub); err != nil || !bytes.Equal(openWrapped(t, got), secret) {
		t.Fatalf("converted secret under its new context: %v", err)
	}
	_, err = h.DecryptSecret(ctx, ekt, ektCtx, conv, ctxA, pub)
	wantCode(t, err, shared.CodeInvalidCiphertext)
	if _, err := h.DecryptSecret(ctx, ekt, ektCtx, enc, ctxA, pub); err != nil {
		t.Fatalf("original blob after convert: %v", err)
	}

	// Two secrets, two EKTs for one name: all distinct.
	_, w2, err := h.GenerateSecret(ctx, ekt, ektCtx, ctxA, pub)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(openWrapped(t, w2), secret) {
		t.Error("two generated secrets are equal")
	}
	if bytes.Equal(newEKT(t, h, "vpc-1"), ekt) {
		t.Error("two EKTs are equal")
	}
}

// Blobs moved to another context, or used under another EKT, fail; with
// the CMK cache warm, which must not let a wrong EKT context through.
func TestMovedContextFails(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	ektCtx := EKTContext("vpc-1")
	ekt := newEKT(t, h, "vpc-1")
	otherEKT := newEKT(t, h, "vpc-2")
	secretCtx := SecretContext("vpc-1", "i-aaa", "vol-1")
	enc, _, err := h.GenerateSecret(ctx, ekt, ektCtx, secretCtx, pub)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		ekt, ektCtx    []byte
		blob, blobCtx  []byte
		convertFromCtx bool
	}{
		{"other volume", ekt, ektCtx, enc, SecretContext("vpc-1", "i-aaa", "vol-2"), false},
		{"other instance", ekt, ektCtx, enc, SecretContext("vpc-1", "i-bbb", "vol-1"), false},
		{"other tenant", ekt, ektCtx, enc, SecretContext("vpc-2", "i-aaa", "vol-1"), false},
		{"other ekt name", ekt, EKTContext("vpc-2"), enc, secretCtx, false},
		{"other tenant's ekt", otherEKT, EKTContext("vpc-2"), enc, secretCtx, false},
		{"ekt as secret", ekt, ektCtx, ekt, secretCtx, false},
		{"convert from other volume", ekt, ektCtx, enc, SecretContext("vpc-1", "i-aaa", "vol-2"), true},
		{"convert under other ekt name", ekt, EKTContext("vpc-2"), enc, secretCtx, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.convertFromCtx {
				_, err = h.ConvertSecret(ctx, tt.ekt, tt.ektCtx, tt.blob, tt.blobCtx, SecretContext("x", "y", "z"))
			} else {
				_, err = h.DecryptSecret(ctx, tt.ekt, tt.ektCtx, tt.blob, tt.blobCtx, pub)
			}
			wantCode(t, err, shared.CodeInvalidCiphertext)
		})
	}
	if _, _, err := h.GenerateSecret(ctx, ekt, EKTContext("vpc-2"), secretCtx, pub); shared.CodeOf(err) != shared.CodeInvalidCiphertext {
		t.Errorf("GenerateSecret with another EKT name = %v, want invalid ciphertext", err)
	}
}

// Every byte of both blobs matters: version, nonce and wrapped key.
func TestTamperedBlobs(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	ektCtx := EKTContext("vpc-1")
	ekt := newEKT(t, h, "vpc-1")
	secretCtx := SecretContext("vpc-1", "i-aaa", "vol-1")
	enc, _, err := h.GenerateSecret(ctx, ekt, ektCtx, secretCtx, pub)
	if err != nil {
		t.Fatal(err)
	}
	class := func(i int) string {
		switch {
		case i == 0:
			return "version"
		case i <= blobNonceSize:
			return "nonce"
		default:
			return "body"
		}
	}
	use := map[string]func(ektBlob, encBlob []byte) error{
		"ekt": func(e, s []byte) error { _, err := h.DecryptSecret(ctx, e, ektCtx, s, secretCtx, pub); return err },
		"encrypted_secret": func(e, s []byte) error {
			_, err := h.ConvertSecret(ctx, e, ektCtx, s, secretCtx, SecretContext("a", "b", "c"))
			return err
		},
	}
	for _, which := range []string{"ekt", "encrypted_secret"} {
		orig := ekt
		if which == "encrypted_secret" {
			orig = enc
		}
		variants := map[string][]byte{
			"empty":     {},
			"truncated": orig[:len(orig)-1],
			"extended":  append(bytes.Clone(orig), 0),
		}
		for i := range orig {
			for _, flip := range []byte{0x01, 0x80} {
				b := bytes.Clone(orig)
				b[i] ^= flip
				variants[fmt.Sprintf("%s byte %d ^%#x", class(i), i, flip)] = b
			}
		}
		for name, b := range variants {
			t.Run(which+"/"+name, func(t *testing.T) {
				e, s := ekt, enc
				if which == "ekt" {
					e = b
				} else {
					s = b
				}
				wantCode(t, use[which](e, s), shared.CodeInvalidCiphertext)
			})
		}
	}
	if _, err := h.DecryptSecret(ctx, ekt, ektCtx, enc, secretCtx, pub); err != nil {
		t.Fatalf("untouched blobs stopped working: %v", err)
	}
}

func TestSecretArgumentValidation(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	ekt := newEKT(t, h, "t")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	good := &testRSAKey().PublicKey
	tests := []struct {
		name      string
		ektCtx    []byte
		secretCtx []byte
		pub       *rsa.PublicKey
	}{
		{"rsa 1024", EKTContext("t"), SecretContext("t", "i", "v"), &small.PublicKey},
		{"rsa nil modulus", EKTContext("t"), SecretContext("t", "i", "v"), &rsa.PublicKey{E: 65537}},
		{"rsa even exponent", EKTContext("t"), SecretContext("t", "i", "v"), &rsa.PublicKey{N: good.N, E: 65536}},
		{"empty ekt context", nil, SecretContext("t", "i", "v"), good},
		{"empty secret context", EKTContext("t"), nil, good},
		{"huge secret context", EKTContext("t"), make([]byte, maxContextSize+1), good},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := h.GenerateSecret(ctx, ekt, tt.ektCtx, tt.secretCtx, tt.pub)
			wantCode(t, err, shared.CodeValidation)
			_, err = h.DecryptSecret(ctx, ekt, tt.ektCtx, make([]byte, blobSize), tt.secretCtx, tt.pub)
			wantCode(t, err, shared.CodeValidation)
		})
	}
	_, _, err = h.GenerateSecret(ctx, ekt, EKTContext("t"), SecretContext("t", "i", "v"), nil)
	wantCode(t, err, shared.CodeValidation)
	if _, err := h.NewEKT(ctx, nil); shared.CodeOf(err) != shared.CodeValidation {
		t.Errorf("NewEKT with an empty context = %v", err)
	}
}

// More goroutines than sessions run every operation at once.
func TestHierarchyConcurrent(t *testing.T) {
	h := newHierarchyHSM(t, func(c *Config) { c.Sessions = 3 })
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	const tenants, workers, rounds = 3, 12, 6
	ekts := make([][]byte, tenants)
	for i := range ekts {
		ekts[i] = newEKT(t, h, fmt.Sprint("tenant-", i))
	}
	sigKey, err := h.PublicKey(ctx, SigningKeyLabel)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := x509.ParsePKIXPublicKey(sigKey)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			tenant := fmt.Sprint("tenant-", w%tenants)
			ekt, ektCtx := ekts[w%tenants], EKTContext(tenant)
			for r := range rounds {
				from := SecretContext(tenant, fmt.Sprint("i-", w), fmt.Sprint("vol-", r))
				to := SecretContext(tenant, fmt.Sprint("j-", w), fmt.Sprint("vol-", r))
				enc, wrapped, err := h.GenerateSecret(ctx, ekt, ektCtx, from, pub)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: generate: %w", w, r, err)
					return
				}
				conv, err := h.ConvertSecret(ctx, ekt, ektCtx, enc, from, to)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: convert: %w", w, r, err)
					return
				}
				again, err := h.DecryptSecret(ctx, ekt, ektCtx, conv, to, pub)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: decrypt: %w", w, r, err)
					return
				}
				a, _ := rsa.DecryptOAEP(sha256.New(), nil, testRSAKey(), wrapped, nil)
				b, _ := rsa.DecryptOAEP(sha256.New(), nil, testRSAKey(), again, nil)
				if len(a) != 32 || !bytes.Equal(a, b) {
					errs <- fmt.Errorf("worker %d round %d: secret changed", w, r)
					return
				}
				sig, err := h.SignSHA256(ctx, SigningKeyLabel, conv)
				digest := sha256.Sum256(conv)
				if err != nil || !ecdsa.VerifyASN1(parsed.(*ecdsa.PublicKey), digest[:], sig) {
					errs <- fmt.Errorf("worker %d round %d: sign: %v", w, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, cached := sessionObjects(t, h), cachedCMKs(h); got != cached {
		t.Errorf("%d session objects left, %d cached CMKs", got, cached)
	}
}
