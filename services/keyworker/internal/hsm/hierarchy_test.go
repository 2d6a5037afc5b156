package hsm

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

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
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Extractable only wrapped under a trusted key (backup.go).
	want := map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: true, pkcs11.CKA_DERIVE: true, pkcs11.CKA_WRAP: false, pkcs11.CKA_TOKEN: true, pkcs11.CKA_WRAP_WITH_TRUSTED: true}
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
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.NewEKT(ctx, EKTContext("t")); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("NewEKT without hierarchy = %v, want ErrHierarchyMissing", err)
	}
	if _, err := h.PublicKey(ctx, SigningKeyLabel); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("PublicKey without hierarchy = %v, want ErrHierarchyMissing", err)
	}
}
