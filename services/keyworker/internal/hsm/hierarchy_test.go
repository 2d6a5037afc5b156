package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// testRSAKey is the caller's one-time RSA key pair, made once per binary.
var testRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// newHierarchyHSM opens an HSM on a fresh token with the hierarchy created.
func newHierarchyHSM(t testing.TB, mutate ...func(*Config)) *HSM {
	t.Helper()
	h := newTestHSM(t, mutate...)
	if err := h.EnsureHierarchy(t.Context()); err != nil {
		t.Fatalf("EnsureHierarchy: %v", err)
	}
	return h
}

func newEKT(t testing.TB, h *HSM, name string) []byte {
	t.Helper()
	ekt, err := h.NewEKT(t.Context(), EKTContext(name))
	if err != nil {
		t.Fatalf("NewEKT(%q): %v", name, err)
	}
	return ekt
}

// openWrapped does what the instance does with wrapped_secret.
func openWrapped(t testing.TB, wrapped []byte) []byte {
	t.Helper()
	secret, err := rsa.DecryptOAEP(sha256.New(), nil, testRSAKey(), wrapped, nil)
	if err != nil {
		t.Fatalf("rsa.DecryptOAEP(wrapped_secret): %v", err)
	}
	if len(secret) != 32 {
		t.Fatalf("secret is %d bytes, want 32", len(secret))
	}
	return secret
}

func wantCode(t testing.TB, err error, code shared.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want %s error", code)
	}
	if got := shared.CodeOf(err); got != code {
		t.Fatalf("error %q has code %s, want %s", err, got, code)
	}
}

func cachedCMKs(h *HSM) int {
	h.hier.cmks.mu.Lock()
	defer h.hier.cmks.mu.Unlock()
	return len(h.hier.cmks.m)
}

// sessionObjects counts the session objects of this process on the token.
func sessionObjects(t testing.TB, h *HSM) int {
	t.Helper()
	sh := <-h.pool
	defer func() { h.pool <- sh }()
	handles, err := h.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}, -1)
	if err != nil {
		t.Fatal(err)
	}
	return len(handles)
}

func TestEnsureHierarchy(t *testing.T) {
	t.Parallel()
	h := newTestHSM(t)
	ctx := t.Context()
	for i := range 2 {
		if err := h.EnsureHierarchy(ctx); err != nil {
			t.Fatalf("EnsureHierarchy #%d: %v", i+1, err)
		}
	}
	keys, err := h.ListAESKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != DomainKeyLabel || keys[0].Encrypt || keys[0].Decrypt {
		t.Fatalf("AES keys after EnsureHierarchy twice = %+v, want one derive-only domain key", keys)
	}
	// The XKS path must not reach the domain key: ECB encryption of chosen
	// data with it would reproduce the KEK derivation.
	if _, _, _, err := h.EncryptGCM(ctx, DomainKeyLabel, []byte("x"), nil); !errors.Is(err, shared.ErrInvalidKeyUsage) {
		t.Errorf("EncryptGCM with the domain key = %v, want ErrInvalidKeyUsage", err)
	}
	sh := <-h.pool
	defer func() { h.pool <- sh }()
	dom, err := h.findObjects(sh, aesKeyTemplate(DomainKeyLabel), 2)
	if err != nil || len(dom) != 1 {
		t.Fatalf("domain key lookup: %d, %v", len(dom), err)
	}
	attrs, err := h.p11.GetAttributeValue(sh, dom[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_DERIVE: true, pkcs11.CKA_WRAP: false, pkcs11.CKA_TOKEN: true}
	for _, a := range attrs {
		if got := a.Value[0] != 0; got != want[a.Type] {
			t.Errorf("domain key attribute %#x = %t, want %t", a.Type, got, want[a.Type])
		}
	}
	for _, label := range []string{SigningKeyLabel, CAKeyLabel} {
		privs, err := h.findObjects(sh, ecKeyTemplate(pkcs11.CKO_PRIVATE_KEY, label), 2)
		if err != nil || len(privs) != 1 {
			t.Fatalf("private key %q: %d found, %v", label, len(privs), err)
		}
		if _, err := h.p11.GetAttributeValue(sh, privs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
			t.Errorf("private key %q value is readable", label)
		}
	}
}

func TestEnsureHierarchyConcurrent(t *testing.T) {
	t.Parallel()
	h := newTestHSM(t, func(c *Config) { c.Sessions = 4 })
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- h.EnsureHierarchy(t.Context()) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if keys, err := h.ListAESKeys(t.Context()); err != nil || len(keys) != 1 {
		t.Fatalf("AES keys after concurrent EnsureHierarchy = %+v, %v; want one", keys, err)
	}
}

func TestEnsureHierarchyRejectsImpostor(t *testing.T) {
	t.Parallel()
	h := newTestHSM(t)
	// An XKS-style key under the domain key's label would allow encryption.
	if _, err := h.CreateAESKey(t.Context(), DomainKeyLabel, true, true); err != nil {
		t.Fatal(err)
	}
	if err := h.EnsureHierarchy(t.Context()); err == nil {
		t.Fatal("EnsureHierarchy accepted an encrypt/decrypt key as the domain key")
	}
}

// Half a key pair is an error, never a reason to create the other half.
func TestEnsureHierarchyIncompletePair(t *testing.T) {
	t.Parallel()
	h := newHierarchyHSM(t)
	sh := <-h.pool
	pubs, err := h.findObjects(sh, ecKeyTemplate(pkcs11.CKO_PUBLIC_KEY, CAKeyLabel), 2)
	if err == nil && len(pubs) == 1 {
		err = h.mod.ctx.DestroyObject(sh, pubs[0])
	}
	h.pool <- sh
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Open(t.Context(), h.cfg, nil) // no cached handles
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.EnsureHierarchy(t.Context()); err == nil || errors.Is(err, ErrHierarchyMissing) {
		t.Fatalf("EnsureHierarchy with half a CA pair = %v, want an incomplete-pair error", err)
	}
	sh = <-h.pool
	privs, err := h.findObjects(sh, ecKeyTemplate(pkcs11.CKO_PRIVATE_KEY, CAKeyLabel), 3)
	h.pool <- sh
	if err != nil || len(privs) != 1 {
		t.Fatalf("%d CA private keys after EnsureHierarchy (%v), want 1", len(privs), err)
	}
}

func TestHierarchyMissing(t *testing.T) {
	t.Parallel()
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.NewEKT(ctx, EKTContext("t")); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("NewEKT without hierarchy = %v, want ErrHierarchyMissing", err)
	}
	if _, err := h.PublicKey(ctx, SigningKeyLabel); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("PublicKey without hierarchy = %v, want ErrHierarchyMissing", err)
	}
}

func TestSignSHA256(t *testing.T) {
	t.Parallel()
	h := newHierarchyHSM(t)
	ctx := t.Context()
	for _, label := range []string{SigningKeyLabel, CAKeyLabel} {
		t.Run(label, func(t *testing.T) {
			der, err := h.PublicKey(ctx, label)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatal(err)
			}
			ec, ok := pub.(*ecdsa.PublicKey)
			if !ok || ec.Curve != elliptic.P384() {
				t.Fatalf("public key is %T, want ECDSA P-384", pub)
			}
			for _, msg := range [][]byte{nil, []byte("blob"), randBytes(4096)} {
				sig, err := h.SignSHA256(ctx, label, msg)
				if err != nil {
					t.Fatal(err)
				}
				digest := sha256.Sum256(msg)
				if !ecdsa.VerifyASN1(ec, digest[:], sig) {
					t.Fatalf("signature over %d bytes does not verify", len(msg))
				}
				other := sha256.Sum256(append(msg, 0))
				if ecdsa.VerifyASN1(ec, other[:], sig) {
					t.Fatal("signature verifies for another message")
				}
			}
		})
	}
	signing, _ := h.PublicKey(ctx, SigningKeyLabel)
	ca, _ := h.PublicKey(ctx, CAKeyLabel)
	if bytes.Equal(signing, ca) {
		t.Error("signing and CA keys are the same key")
	}
	if _, err := h.SignSHA256(ctx, "no-such-pair", []byte("x")); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("SignSHA256 with an unknown label = %v", err)
	}
	// Another HSM on the same token finds the same persistent key.
	other, err := Open(ctx, h.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if again, err := other.PublicKey(ctx, SigningKeyLabel); err != nil || !bytes.Equal(again, signing) {
		t.Errorf("PublicKey from a second HSM on the token differs (%v)", err)
	}
}

func TestSignerCertificate(t *testing.T) {
	t.Parallel()
	h := newHierarchyHSM(t)
	ctx := t.Context()
	signer, err := h.Signer(ctx, CAKeyLabel)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sovkeys test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, signer.Public(), signer)
	if err != nil {
		t.Fatalf("CreateCertificate (CA): %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := caCert.CheckSignatureFrom(caCert); err != nil {
		t.Fatalf("CA certificate signature: %v", err)
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "i-0123456789abcdef0"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(30 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, alg := range []x509.SignatureAlgorithm{x509.ECDSAWithSHA256, x509.ECDSAWithSHA384} {
		leafTmpl.SignatureAlgorithm = alg
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, signer)
		if err != nil {
			t.Fatalf("CreateCertificate (leaf, %v): %v", alg, err)
		}
		leaf, _ := x509.ParseCertificate(leafDER)
		roots := x509.NewCertPool()
		roots.AddCert(caCert)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("leaf signed with %v does not verify: %v", alg, err)
		}
	}
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"sha-512", make([]byte, 64), crypto.SHA512},
		{"short digest", make([]byte, 20), crypto.SHA256},
	} {
		if _, err := signer.Sign(rand.Reader, tc.digest, tc.opts); err == nil {
			t.Errorf("Sign with %s succeeded", tc.name)
		}
	}
}

func TestContextEncoding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		a, b []byte
	}{
		{"field boundary", SecretContext("a", "bc", "d"), SecretContext("ab", "c", "d")},
		{"volume", SecretContext("t", "i", "v1"), SecretContext("t", "i", "v2")},
		{"instance", SecretContext("t", "i1", "v"), SecretContext("t", "i2", "v")},
		{"tenant", SecretContext("t1", "i", "v"), SecretContext("t2", "i", "v")},
		{"empty fields", SecretContext("", "", "x"), SecretContext("", "x", "")},
		{"ekt name", EKTContext("a"), EKTContext("b")},
		{"kinds", EKTContext(""), SecretContext("", "", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if bytes.Equal(tt.a, tt.b) {
				t.Fatalf("contexts collide: %x", tt.a)
			}
		})
	}
	if !bytes.Equal(SecretContext("t", "i", "v"), SecretContext("t", "i", "v")) {
		t.Error("SecretContext is not deterministic")
	}
}

func TestSecretLifecycle(t *testing.T) {
	t.Parallel()
	h := newHierarchyHSM(t)
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	ektCtx := EKTContext("vpc-1")
	ekt := newEKT(t, h, "vpc-1")
	if len(ekt) != blobSize || ekt[0] != blobVersion {
		t.Fatalf("ekt is %d bytes, version %d; want %d, %d", len(ekt), ekt[0], blobSize, blobVersion)
	}
	ctxA := SecretContext("vpc-1", "i-aaa", "vol-1")
	enc, wrapped, err := h.GenerateSecret(ctx, ekt, ektCtx, ctxA, pub)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != blobSize || enc[0] != blobVersion {
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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

// SoftHSM 2.6 refuses OAEP with SHA-256, so the host path runs; the HSM
// path is exercised with SHA-1, the one OAEP hash SoftHSM 2.6 wraps with.
func TestOAEPWrapPaths(t *testing.T) {
	t.Parallel()
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

func TestCMKCache(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	clock := time.Unix(1_800_000_000, 0)
	h := newHierarchyHSM(t, func(c *Config) { c.Sessions = 1 })
	h.hier.cmks.now = func() time.Time { return clock }
	ekts := [][]byte{newEKT(t, h, "a"), newEKT(t, h, "b"), newEKT(t, h, "c")}
	names := []string{"a", "b", "c"}
	use := func(i int) {
		t.Helper()
		sctx := SecretContext(names[i], "i", "v")
		enc, _, err := h.GenerateSecret(ctx, ekts[i], EKTContext(names[i]), sctx, pub)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.DecryptSecret(ctx, ekts[i], EKTContext(names[i]), enc, sctx, pub); err != nil {
			t.Fatal(err)
		}
	}
	check := func(wantCached int) {
		t.Helper()
		if got := cachedCMKs(h); got != wantCached {
			t.Fatalf("cache holds %d CMKs, want %d", got, wantCached)
		}
		if got := sessionObjects(t, h); got != wantCached {
			t.Fatalf("%d session objects in the HSM, want %d (the cached CMKs): temporaries leak", got, wantCached)
		}
	}
	check(0)
	for range 3 {
		use(0)
	}
	check(1)
	use(1)
	use(2)
	check(3)

	t.Run("wrong ekt context misses", func(t *testing.T) {
		_, _, err := h.GenerateSecret(ctx, ekts[0], EKTContext("b"), SecretContext("a", "i", "v"), pub)
		wantCode(t, err, shared.CodeInvalidCiphertext)
		check(3)
	})
	t.Run("expiry", func(t *testing.T) {
		clock = clock.Add(cmkCacheTTL + time.Second)
		use(0) // sweeps all three, caches a again
		check(1)
	})
	t.Run("bounded", func(t *testing.T) {
		h.hier.cmks.max = 2
		defer func() { h.hier.cmks.max = 0 }()
		for i := range 3 {
			clock = clock.Add(time.Second)
			use(i)
		}
		check(2)
	})
	t.Run("destroyed behind the cache", func(t *testing.T) {
		sh := <-h.pool
		for _, e := range h.hier.cmks.m {
			if err := h.mod.ctx.DestroyObject(sh, e.handle); err != nil {
				t.Fatal(err)
			}
		}
		h.pool <- sh
		use(2)
		use(0)
	})
	t.Run("disabled", func(t *testing.T) {
		sh := <-h.pool
		h.hier.cmks.dropSession(h.mod.ctx, sh)
		h.pool <- sh
		h.hier.cmks.max = -1
		defer func() { h.hier.cmks.max = 0 }()
		use(1)
		check(0)
	})
}

// More goroutines than sessions run every operation at once.
func TestHierarchyConcurrent(t *testing.T) {
	t.Parallel()
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
