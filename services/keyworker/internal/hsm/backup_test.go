package hsm

import (
	"bytes"
	"crypto/rand"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

func openToken(t *testing.T, module, label, pin string) *HSM {
	t.Helper()
	h, err := Open(t.Context(), Config{ModulePath: module, TokenLabel: label, PIN: pin}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Open %s: %v", label, err)
	}
	return h
}

func randomKey(t *testing.T) []byte {
	k := make([]byte, BackupKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestExportImportKeys: keys made on one token, exported wrapped under a
// trusted backup key and imported into another token, still open every
// ciphertext, sealed secret and signature of the first.
func TestExportImportKeys(t *testing.T) {
	ctx := t.Context()
	module, label, soPIN, pin := hsmtest.NewTokenSO(t)
	h := openToken(t, module, label, pin)
	if err := h.EnsureHierarchy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.CreateAESKey(ctx, "k1", true, true); err != nil {
		t.Fatal(err)
	}
	iv1, ct1, tag1, err := h.EncryptGCM(ctx, "k1", []byte("version one"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.RotateKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	iv2, ct2, tag2, err := h.EncryptGCM(ctx, VersionLabel("k1", 2), []byte("version two"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := h.Seal(ctx, []byte("store secret"), []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := h.PublicKey(ctx, SigningKeyLabel)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil { // the SO cannot log in while the user is
		t.Fatal(err)
	}

	src := TokenLogin{ModulePath: module, TokenLabel: label, SOPIN: soPIN, PIN: pin}
	bk := randomKey(t)
	bad := src
	bad.SOPIN = "wrong-so-pin"
	if _, err := ExportKeys(ctx, bad, bk); !isCKR(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatalf("export with a wrong SO PIN = %v, want CKR_PIN_INCORRECT", err)
	}
	exp, err := ExportKeys(ctx, src, bk)
	if err != nil {
		t.Fatalf("ExportKeys: %v", err)
	}
	if exp.Mechanism != "CKM_AES_KEY_WRAP_PAD" && exp.Mechanism != "CKM_AES_KEY_WRAP_KWP" {
		t.Errorf("mechanism %q", exp.Mechanism)
	}
	labels := map[string]bool{}
	for _, k := range exp.Keys {
		labels[k.Label+"/"+k.Class] = true
		if k.Class != "public" && len(k.Wrapped) == 0 {
			t.Errorf("key %q exported without wrapping", k.Label)
		}
	}
	for _, want := range []string{"k1/secret", VersionLabel("k1", 2) + "/secret", SealKeyLabel + "/secret", DomainKeyLabel + "/secret",
		DomainKeyV2Label + "/secret", SigningKeyLabel + "/private", SigningKeyLabel + "/public", CAKeyLabel + "/private"} {
		if !labels[want] {
			t.Errorf("export lacks %s (has %v)", want, labels)
		}
	}
	if len(exp.CloneWithVendorTools) != 0 {
		t.Errorf("clone with vendor tools: %v, want none", exp.CloneWithVendorTools)
	}

	dmod, dlabel, _, dpin := hsmtest.NewTokenSO(t)
	dst := TokenLogin{ModulePath: dmod, TokenLabel: dlabel, PIN: dpin}
	if _, err := ImportKeys(ctx, dst, randomKey(t), exp); err == nil {
		t.Fatal("import under the wrong backup key succeeded")
	}
	n, err := ImportKeys(ctx, dst, bk, exp)
	if err != nil {
		t.Fatalf("ImportKeys (after a failed one, which must leave nothing): %v", err)
	}
	if n != len(exp.Keys) {
		t.Errorf("imported %d of %d", n, len(exp.Keys))
	}
	if _, err := ImportKeys(ctx, dst, bk, exp); !errors.Is(err, ErrImportConflict) {
		t.Errorf("second import = %v, want ErrImportConflict", err)
	}

	g := openToken(t, dmod, dlabel, dpin)
	defer g.Close()
	if err := g.EnsureHierarchy(ctx); err != nil {
		t.Fatalf("hierarchy check on the imported keys: %v", err)
	}
	if pt, err := g.DecryptGCM(ctx, "k1", iv1, ct1, tag1, []byte("aad")); err != nil || string(pt) != "version one" {
		t.Errorf("decrypt v1 = %q, %v", pt, err)
	}
	if pt, err := g.DecryptGCM(ctx, VersionLabel("k1", 2), iv2, ct2, tag2, nil); err != nil || string(pt) != "version two" {
		t.Errorf("decrypt v2 = %q, %v", pt, err)
	}
	if pt, err := g.Unseal(ctx, sealed, []byte("ctx")); err != nil || string(pt) != "store secret" {
		t.Errorf("unseal = %q, %v", pt, err)
	}
	if got, err := g.PublicKey(ctx, SigningKeyLabel); err != nil || !bytes.Equal(got, pub) {
		t.Errorf("signing key after import differs: %v", err)
	}
	if vs, err := g.KeyVersions(ctx, "k1"); err != nil || len(vs) != 2 {
		t.Errorf("versions after import = %v, %v", vs, err)
	}
}

// TestUntrustedKeyCannotWrap attacks the boundary: a wrapping key the user
// makes (not marked trusted by the SO) must not export a token key.
func TestUntrustedKeyCannotWrap(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "victim", true, true); err != nil {
		t.Fatal(err)
	}
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		k, err := h.findKey(sh, "victim")
		if err != nil {
			return err
		}
		wk, err := h.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(aesTemplate(false, false, pkcs11.CKA_WRAP), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
		if err != nil {
			return err
		}
		defer destroy(h.p11, sh, wk)
		for _, m := range []uint{pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_KEY_WRAP} {
			if w, err := h.p11.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m, nil)}, wk, k.handle); err == nil {
				t.Errorf("untrusted key wrapped the token key with %s (%d bytes)", MechanismName(m), len(w))
			} else if !isCKR(err, pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_KEY_UNEXTRACTABLE) {
				t.Errorf("wrap with %s = %v, want CKR_KEY_NOT_WRAPPABLE", MechanismName(m), err)
			}
		}
		// Nor may the user mark a key trusted.
		_, err = h.p11.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
		})
		if err == nil {
			t.Error("the user made a CKA_TRUSTED key")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExportListsOldKeys: a key made before backups existed (not
// extractable) is not exported but named, for cloning with vendor tools;
// the keyworker still accepts it.
func TestExportListsOldKeys(t *testing.T) {
	ctx := t.Context()
	module, label, soPIN, pin := hsmtest.NewTokenSO(t)
	h := openToken(t, module, label, pin)
	old := aesKeyAttributes("old-key", true, true)
	for i, a := range old {
		switch a.Type {
		case pkcs11.CKA_EXTRACTABLE:
			old[i] = pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false)
		case pkcs11.CKA_WRAP_WITH_TRUSTED:
			old[i] = pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, false)
		}
	}
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := h.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, old)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := h.EncryptGCM(ctx, "old-key", []byte("x"), nil); err != nil {
		t.Fatalf("old key unusable: %v", err)
	}
	if _, err := h.CreateAESKey(ctx, "new-key", true, true); err != nil {
		t.Fatal(err)
	}
	// A key type the token will not wrap (SoftHSM 2.6: an EdDSA private
	// key) is named too; it does not stop the export.
	want := []string{"old-key"}
	if h.SupportsEdDSA() {
		if err := h.EnsureEd25519(ctx, "ed-key"); err != nil {
			t.Fatal(err)
		}
		want = []string{"ed-key", "old-key"}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	exp, err := ExportKeys(ctx, TokenLogin{ModulePath: module, TokenLabel: label, SOPIN: soPIN, PIN: pin}, randomKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(exp.CloneWithVendorTools, want) && !slices.Equal(exp.CloneWithVendorTools, []string{"old-key"}) {
		t.Errorf("clone with vendor tools = %v, want %v", exp.CloneWithVendorTools, want)
	}
	var got []string
	for _, k := range exp.Keys {
		got = append(got, k.Label+"/"+k.Class)
	}
	// An EdDSA private key the token can wrap is exported with its pair.
	if !slices.Equal(got, []string{"new-key/secret"}) && !slices.Equal(got, []string{"ed-key/public", "new-key/secret"}) &&
		!slices.Equal(got, []string{"ed-key/private", "ed-key/public", "new-key/secret"}) {
		t.Errorf("exported %v", got)
	}
}

// TestOldHierarchyStillOpens: a token whose domain key was made by a
// release before 2026-12-07 (not extractable) still passes the hierarchy
// check (the new build starts on old tokens).
func TestOldHierarchyStillOpens(t *testing.T) {
	ctx := t.Context()
	h := newTestHSM(t)
	old := append(aesTemplate(true, false, pkcs11.CKA_DERIVE), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyLabel))
	for i, a := range old {
		switch a.Type {
		case pkcs11.CKA_EXTRACTABLE:
			old[i] = pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false)
		case pkcs11.CKA_WRAP_WITH_TRUSTED:
			old[i] = pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, false)
		}
	}
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := h.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, old)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.EnsureHierarchy(ctx); err != nil {
		t.Fatalf("hierarchy with an old domain key: %v", err)
	}
	// A domain key extractable without the trusted-wrap restriction is refused.
	g := newTestHSM(t)
	leaky := append(aesTemplate(false, true, pkcs11.CKA_DERIVE), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyLabel))
	leaky[2] = pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)
	err = g.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := g.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, leaky)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.EnsureHierarchy(ctx); err == nil {
		t.Fatal("a domain key extractable under any key was accepted")
	}
}
