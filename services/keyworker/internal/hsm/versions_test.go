package hsm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

func TestRotateKeyVersions(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	const label = "rot"
	if _, err := h.CreateAESKey(ctx, label, true, true); err != nil {
		t.Fatal(err)
	}
	pt, aad := randBytes(64), []byte("aad")
	type sealed struct{ iv, ct, tag []byte }
	made := map[int]sealed{}
	for want := 1; want <= 3; want++ {
		if want > 1 {
			kv, err := h.RotateKey(ctx, label)
			if err != nil || kv.Version != want || kv.Label != VersionLabel(label, want) || kv.State != VersionActive {
				t.Fatalf("RotateKey = %+v, %v; want version %d", kv, err, want)
			}
			checkKeyProtected(t, h, kv.Label)
		}
		v, err := h.NewestVersion(ctx, label)
		if err != nil || v != want {
			t.Fatalf("NewestVersion = %d, %v; want %d", v, err, want)
		}
		iv, ct, tag, err := h.EncryptGCM(ctx, VersionLabel(label, v), pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		made[v] = sealed{iv, ct, tag}
	}
	for v, s := range made {
		got, err := h.DecryptGCM(ctx, VersionLabel(label, v), s.iv, s.ct, s.tag, aad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("version %d: decrypt = %v", v, err)
		}
		// Another version's key never opens it.
		other := v%3 + 1
		if _, err := h.DecryptGCM(ctx, VersionLabel(label, other), s.iv, s.ct, s.tag, aad); !errors.Is(err, shared.ErrInvalidCiphertext) {
			t.Fatalf("version %d ciphertext under version %d: %v, want ErrInvalidCiphertext", v, other, err)
		}
	}
	vs, err := h.KeyVersions(ctx, label)
	if err != nil || len(vs) != 3 || vs[0].State != VersionEnabled || vs[2].State != VersionActive {
		t.Fatalf("KeyVersions = %+v, %v", vs, err)
	}

	// The newest version is never narrowed or destroyed.
	if _, err := h.SetVersionState(ctx, label, 3, SetDisabled); !errors.Is(err, ErrNewestVersion) {
		t.Fatalf("disable newest = %v, want ErrNewestVersion", err)
	}
	if _, _, err := h.DestroyVersion(ctx, label, 3, ""); !errors.Is(err, ErrNewestVersion) {
		t.Fatalf("destroy newest = %v, want ErrNewestVersion", err)
	}
	// Decrypt-only: the HSM refuses to encrypt under it, still decrypts.
	if kv, err := h.SetVersionState(ctx, label, 2, SetDecryptOnly); err != nil || kv.State != VersionDecryptOnly {
		t.Fatalf("decrypt-only = %+v, %v", kv, err)
	}
	if _, _, _, err := h.EncryptGCM(ctx, VersionLabel(label, 2), pt, aad); !errors.Is(err, shared.ErrInvalidKeyUsage) {
		t.Fatalf("encrypt under decrypt-only version = %v, want ErrInvalidKeyUsage", err)
	}
	if _, err := h.DecryptGCM(ctx, VersionLabel(label, 2), made[2].iv, made[2].ct, made[2].tag, aad); err != nil {
		t.Fatalf("decrypt under decrypt-only version: %v", err)
	}
	// Destroy needs disabled first, then the code from step one.
	if _, _, err := h.DestroyVersion(ctx, label, 2, ""); !errors.Is(err, ErrNotDisabled) {
		t.Fatalf("destroy enabled version = %v, want ErrNotDisabled", err)
	}
	if kv, err := h.SetVersionState(ctx, label, 2, SetDisabled); err != nil || kv.State != VersionDisabled {
		t.Fatalf("disable = %+v, %v", kv, err)
	}
	if _, err := h.DecryptGCM(ctx, VersionLabel(label, 2), made[2].iv, made[2].ct, made[2].tag, aad); !errors.Is(err, shared.ErrInvalidKeyUsage) {
		t.Fatalf("decrypt under disabled version = %v, want ErrInvalidKeyUsage", err)
	}
	code, destroyed, err := h.DestroyVersion(ctx, label, 2, "")
	if err != nil || destroyed || len(code) != 12 {
		t.Fatalf("destroy step one = %q, %t, %v", code, destroyed, err)
	}
	if _, destroyed, err := h.DestroyVersion(ctx, label, 2, "000000000000"); !errors.Is(err, ErrConfirm) || destroyed {
		t.Fatalf("destroy with wrong code = %t, %v; want ErrConfirm", destroyed, err)
	}
	if _, destroyed, err := h.DestroyVersion(ctx, label, 2, code); err != nil || !destroyed {
		t.Fatalf("destroy step two = %t, %v", destroyed, err)
	}
	if _, err := h.DecryptGCM(ctx, VersionLabel(label, 2), made[2].iv, made[2].ct, made[2].tag, aad); !errors.Is(err, shared.ErrKeyNotFound) {
		t.Fatalf("decrypt under destroyed version = %v, want ErrKeyNotFound", err)
	}
	if _, err := h.SetVersionState(ctx, label, 2, SetEnabled); !errors.Is(err, ErrNoSuchVersion) {
		t.Fatalf("enable destroyed version = %v, want ErrNoSuchVersion", err)
	}
	// Numbers are not reused after a destroy.
	if kv, err := h.RotateKey(ctx, label); err != nil || kv.Version != 4 {
		t.Fatalf("rotate after destroy = %+v, %v; want version 4", kv, err)
	}
	// Re-enable a disabled version for decrypt.
	if _, err := h.SetVersionState(ctx, label, 1, SetDisabled); err != nil {
		t.Fatal(err)
	}
	if kv, err := h.SetVersionState(ctx, label, 1, SetEnabled); err != nil || kv.State != VersionDecryptOnly {
		t.Fatalf("re-enable = %+v, %v", kv, err)
	}
	if _, err := h.DecryptGCM(ctx, label, made[1].iv, made[1].ct, made[1].tag, aad); err != nil {
		t.Fatalf("decrypt under re-enabled version 1: %v", err)
	}
}

func TestVersionLabelsReserved(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	for _, label := range []string{"k#v2", "k#v10"} {
		if _, err := h.CreateAESKey(ctx, label, true, true); !errors.Is(err, shared.ErrValidation) {
			t.Errorf("CreateAESKey(%q) = %v, want ErrValidation", label, err)
		}
	}
	// "#v" not followed by digits only is an ordinary label.
	if _, err := h.CreateAESKey(ctx, "k#vx", true, true); err != nil {
		t.Fatal(err)
	}
	// A key that merely carries CKA_ID = label of another key is never taken
	// for one of its versions unless labelled label#v<n>: covered by
	// keyVersions' prefix check; a missing key is KeyNotFound.
	if _, err := h.RotateKey(ctx, "missing"); !errors.Is(err, shared.ErrKeyNotFound) {
		t.Fatalf("RotateKey(missing) = %v, want ErrKeyNotFound", err)
	}
}

// twinP11 makes a second object for every key version it generates, as a
// keyworker in another process rotating the same key at the same moment.
type twinP11 struct{ P11 }

func (p twinP11) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	o, err := p.P11.GenerateKey(sh, m, temp)
	if err == nil && isVersionLabel(attrString(temp, pkcs11.CKA_LABEL)) {
		_, err = p.P11.GenerateKey(sh, m, temp)
	}
	return o, err
}

func TestConcurrentRotationLeavesOneVersion(t *testing.T) {
	h := newTestHSM(t, func(c *Config) { c.WrapP11 = func(p P11) P11 { return twinP11{p} } })
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "race", true, true); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RotateKey(ctx, "race"); !errors.Is(err, ErrConcurrentRotation) {
		t.Fatalf("RotateKey racing another process = %v, want ErrConcurrentRotation", err)
	}
	// The loser removed its object: one version 2 remains and the key works.
	vs, err := h.KeyVersions(ctx, "race")
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions = %+v, %v; want 1 and one 2", vs, err)
	}
	if _, _, _, err := h.EncryptGCM(ctx, VersionLabel("race", 2), []byte("pt"), nil); err != nil {
		t.Fatal(err)
	}
}
