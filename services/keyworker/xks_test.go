package keyworker

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

// xksFixture is a keyworker's XKS handlers on a fresh SoftHSM token, called
// directly (the mesh around them is tested in cmd/sovkeys).
type xksFixture struct {
	s      *Service
	faults *hsm.FaultP11
}

// newXKSFixture opens the token as the named HSM profile would behave
// (optional; default SoftHSM): its missing mechanisms refused, and the
// GCM IV written by the "HSM" when the profile says so.
func newXKSFixture(t testing.TB, profile ...string) *xksFixture {
	t.Helper()
	module, label, pin := hsmtest.NewToken(t)
	name := ""
	if len(profile) > 0 {
		name = profile[0]
	}
	prof, err := hsm.LookupProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	f := &xksFixture{}
	h, err := OpenHSM(t.Context(), HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 2, Profile: name,
		WrapP11: func(p hsm.P11) hsm.P11 {
			f.faults = hsm.NewFaultP11(p)
			f.faults.Refuse(prof.Lacks...)
			if prof.IVFromHSM {
				f.faults.EmulateHSMIV()
			}
			return f.faults
		}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	f.s = &Service{hsm: h, log: slog.New(slog.DiscardHandler)}
	return f
}

func (f *xksFixture) createKey(t testing.TB, label string, encrypt, decrypt bool) {
	t.Helper()
	if _, err := f.s.hsm.CreateAESKey(t.Context(), label, encrypt, decrypt); err != nil {
		t.Fatal(err)
	}
}

func xksEnv(t testing.TB, label string, api shared.API, body any) *shared.Envelope {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return &shared.Envelope{ID: "r1", API: api, KeyID: label, Body: b,
		Authz: &shared.Authz{KeyLabel: label, KeyStatus: registry.StatusEnabled}}
}

var testMeta = xks.RequestMetadata{AWSPrincipalArn: "arn:aws:iam::123456789012:user/x", KMSOperation: "Encrypt",
	KMSRequestID: "4112f4d6-db54-4af4-ae30-c55a22a8dfae", KMSKeyArn: "arn:aws:kms:us-east-1:123456789012:key/k"}

func (f *xksFixture) encrypt(t testing.TB, label string, pt, aad []byte, cdiv bool) (xks.EncryptResponse, map[string]string, error) {
	t.Helper()
	req := xks.EncryptRequest{RequestMetadata: testMeta, Plaintext: pt, EncryptionAlgorithm: "AES_GCM", AdditionalAuthenticatedData: aad}
	if cdiv {
		req.CiphertextDataIntegrityValueAlgorithm = xks.CDIVAlgorithmSHA256
	}
	params := map[string]string{}
	out, err := f.s.xksEncrypt(t.Context(), xksEnv(t, label, shared.APIXKSEncrypt, req), params)
	var resp xks.EncryptResponse
	if err == nil {
		if jerr := json.Unmarshal(out, &resp); jerr != nil {
			t.Fatal(jerr)
		}
	}
	return resp, params, err
}

func (f *xksFixture) decrypt(t testing.TB, label string, e xks.EncryptResponse, aad []byte) ([]byte, map[string]string, error) {
	t.Helper()
	req := xks.DecryptRequest{RequestMetadata: testMeta, EncryptionAlgorithm: "AES_GCM", Ciphertext: e.Ciphertext,
		InitializationVector: e.InitializationVector, AuthenticationTag: e.AuthenticationTag,
		AdditionalAuthenticatedData: aad, CiphertextMetadata: e.CiphertextMetadata}
	params := map[string]string{}
	out, err := f.s.xksDecrypt(t.Context(), xksEnv(t, label, shared.APIXKSDecrypt, req), params)
	if err != nil {
		return nil, params, err
	}
	var resp xks.DecryptResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatal(err)
	}
	return resp.Plaintext, params, nil
}

func TestXKSEncryptCDIV(t *testing.T) {
	for _, profile := range xksProfiles {
		t.Run(profile, func(t *testing.T) {
			testXKSEncryptCDIV(t, newXKSFixture(t, profile))
		})
	}
}

func testXKSEncryptCDIV(t *testing.T, f *xksFixture) {
	f.createKey(t, "both", true, true)
	f.createKey(t, "enc-only", true, false)
	pt, aad := []byte("the plaintext"), []byte("the aad")

	resp, params, err := f.encrypt(t, "both", pt, aad, true)
	if err != nil {
		t.Fatal(err)
	}
	want := xks.CDIV(aad, resp.CiphertextMetadata, resp.InitializationVector, resp.Ciphertext, resp.AuthenticationTag)
	if !bytes.Equal(resp.CiphertextDataIntegrityValue, want) {
		t.Fatal("CDIV does not cover aad, metadata, iv, ciphertext and tag")
	}
	if params["cdiv_verified"] != "true" || params["cdiv"] != xks.CDIVAlgorithmSHA256 || f.faults.Calls("Decrypt") == 0 {
		t.Fatalf("audit params %v, decrypts %d: the check must run and be recorded", params, f.faults.Calls("Decrypt"))
	}
	// Without the algorithm: no CDIV, no check.
	before := f.faults.Calls("Decrypt")
	if resp, params, err := f.encrypt(t, "both", pt, aad, false); err != nil || resp.CiphertextDataIntegrityValue != nil || params["cdiv_verified"] != "" {
		t.Fatalf("encrypt without CDIV = %+v, %v, %v", resp, params, err)
	}
	if f.faults.Calls("Decrypt") != before {
		t.Fatal("a decrypt ran for an encrypt that asked for no CDIV")
	}
	// A key that cannot decrypt cannot be checked: refused before encrypting.
	encBefore := f.faults.Calls("Encrypt")
	if _, _, err := f.encrypt(t, "enc-only", pt, aad, true); !errors.Is(err, shared.ErrInvalidKeyUsage) {
		t.Fatalf("CDIV on encrypt-only key = %v, want InvalidKeyUsage", err)
	}
	if f.faults.Calls("Encrypt") != encBefore {
		t.Fatal("encrypt ran although the CDIV could not be checked")
	}
	if _, _, err := f.encrypt(t, "enc-only", pt, aad, false); err != nil {
		t.Fatalf("plain encrypt on encrypt-only key: %v", err)
	}
}

func TestXKSEncryptCDIVCheckFails(t *testing.T) {
	flip := func(b []byte) []byte { b[0] ^= 1; return b }
	tests := []struct {
		name     string
		faults   []hsm.Fault
		wantCode shared.Code
		attempts string
	}{
		{"round trip differs once: retried", []hsm.Fault{{Op: "Decrypt", Mutate: flip, Times: 1}}, "", "2"},
		{"hsm corrupts the ciphertext once: retried", []hsm.Fault{{Op: "Encrypt", Mutate: flip, Times: 1}}, "", "2"},
		{"round trip differs twice: internal", []hsm.Fault{{Op: "Decrypt", Mutate: flip, Times: 2}}, shared.CodeInternal, "2"},
		{"tag check fails twice: internal", []hsm.Fault{{Op: "Decrypt", CKR: 0x40 /* CKR_ENCRYPTED_DATA_INVALID */, Times: 2}}, shared.CodeInternal, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newXKSFixture(t)
			f.createKey(t, "k", true, true)
			f.faults.Inject(tt.faults...)
			resp, params, err := f.encrypt(t, "k", []byte("pt"), nil, true)
			if shared.CodeOf(err) != tt.wantCode && !(tt.wantCode == "" && err == nil) {
				t.Fatalf("err = %v, want code %q", err, tt.wantCode)
			}
			if params["cdiv_attempts"] != tt.attempts {
				t.Fatalf("attempts = %q, want %q", params["cdiv_attempts"], tt.attempts)
			}
			if err != nil {
				if resp.Ciphertext != nil || params["cdiv_verified"] != "false" {
					t.Fatalf("failed check released %+v / params %v", resp, params)
				}
				return
			}
			if pt, _, err := f.decrypt(t, "k", resp, nil); err != nil || string(pt) != "pt" {
				t.Fatalf("released ciphertext does not decrypt: %v", err)
			}
		})
	}
}

// TestXKSRotation is the done-when check: a key rotated twice decrypts
// ciphertexts of all three versions, and new encrypts carry version 3, at
// the specification's size limits.
func TestXKSRotation(t *testing.T) {
	for _, profile := range xksProfiles {
		t.Run(profile, func(t *testing.T) {
			testXKSRotation(t, newXKSFixture(t, profile))
		})
	}
}

// xksProfiles: the XKS suites run as SoftHSM and as a CloudHSM-like HSM
// (no AES derivation, IV generated by the HSM) on SoftHSM.
var xksProfiles = []string{"softhsm", "cloudhsm"}

func testXKSRotation(t *testing.T, f *xksFixture) {
	ctx := t.Context()
	const label = "rot"
	f.createKey(t, label, true, true)
	pt, aad := bytes.Repeat([]byte{0x5a}, 4300), bytes.Repeat([]byte{0xa5}, 8192)

	// A ciphertext from before sovkeys wrote metadata: version 1, no metadata.
	iv, ct, tag, err := f.s.hsm.EncryptGCM(ctx, label, pt, xks.EncodeAAD(aad, nil))
	if err != nil {
		t.Fatal(err)
	}
	legacy := xks.EncryptResponse{InitializationVector: iv, Ciphertext: ct, AuthenticationTag: tag}

	var byVersion []xks.EncryptResponse
	for v := 1; v <= 3; v++ {
		if v > 1 {
			if _, err := f.s.hsm.RotateKey(ctx, label); err != nil {
				t.Fatal(err)
			}
		}
		resp, params, err := f.encrypt(t, label, pt, aad, true)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := xks.DecodeKeyVersion(resp.CiphertextMetadata); err != nil || got != v || params["key_version"] != string(rune('0'+v)) {
			t.Fatalf("after %d rotations: metadata % x (version %d, %v), audit %q", v-1, resp.CiphertextMetadata, got, err, params["key_version"])
		}
		byVersion = append(byVersion, resp)
	}
	for i, resp := range append(byVersion, legacy) {
		got, params, err := f.decrypt(t, label, resp, aad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("ciphertext %d: %v", i, err)
		}
		if want := min(i+1, 3); i == 3 && params["key_version"] != "1" || i < 3 && params["key_version"] != string(rune('0'+want)) {
			t.Fatalf("ciphertext %d decrypted as version %q", i, params["key_version"])
		}
	}
	// GetKeyMetadata stays AES_256 with the newest version's usage.
	out, err := f.s.xksMetadata(ctx, xksEnv(t, label, shared.APIXKSMetadata, xks.MetadataRequest{RequestMetadata: testMeta}))
	if err != nil || !bytes.Contains(out, []byte(`"keySpec":"AES_256"`)) || !bytes.Contains(out, []byte(`"DECRYPT"`)) {
		t.Fatalf("metadata = %s, %v", out, err)
	}
}

// TestXKSMetadataConfusion: ciphertextMetadata is bound into the AAD, so a
// swapped, forged or stripped version never opens a ciphertext under
// another version's key.
func TestXKSMetadataConfusion(t *testing.T) {
	for _, profile := range xksProfiles {
		t.Run(profile, func(t *testing.T) {
			testXKSMetadataConfusion(t, newXKSFixture(t, profile))
		})
	}
}

func testXKSMetadataConfusion(t *testing.T, f *xksFixture) {
	ctx := t.Context()
	f.createKey(t, "a", true, true)
	f.createKey(t, "b", true, true)
	if _, err := f.s.hsm.RotateKey(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.hsm.RotateKey(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	aad := []byte("aad")
	v3, _, err := f.encrypt(t, "a", []byte("secret"), aad, false)
	if err != nil {
		t.Fatal(err)
	}
	with := func(md []byte) xks.EncryptResponse { c := v3; c.CiphertextMetadata = md; return c }
	cases := map[string]xks.EncryptResponse{
		"version 2 named":        with(xks.EncodeKeyVersion(2)),
		"version 1 named":        with(xks.EncodeKeyVersion(1)),
		"metadata stripped":      with(nil),
		"version never made":     with(xks.EncodeKeyVersion(9)),
		"unknown format byte":    with([]byte{0x02, 0, 0, 0, 3}),
		"trailing byte":          with(append(xks.EncodeKeyVersion(3), 0)),
		"format byte only":       with([]byte{xks.MetadataFormatV1}),
		"metadata moved to aad":  {InitializationVector: v3.InitializationVector, Ciphertext: v3.Ciphertext, AuthenticationTag: v3.AuthenticationTag},
		"aws-sized random bytes": with(bytes.Repeat([]byte{3}, 20)),
	}
	for name, c := range cases {
		a := aad
		if name == "metadata moved to aad" {
			a = append(append([]byte{}, aad...), v3.CiphertextMetadata...)
		}
		if pt, _, err := f.decrypt(t, "a", c, a); !errors.Is(err, shared.ErrInvalidCiphertext) {
			t.Errorf("%s: plaintext %q, err %v; want InvalidCiphertextException", name, pt, err)
		}
	}
	// Another key's output with valid-looking metadata never opens under "a".
	vb, _, err := f.encrypt(t, "b", []byte("other"), aad, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.decrypt(t, "a", vb, aad); !errors.Is(err, shared.ErrInvalidCiphertext) {
		t.Fatalf("key b's ciphertext under key a: %v", err)
	}
	if pt, _, err := f.decrypt(t, "a", v3, aad); err != nil || string(pt) != "secret" {
		t.Fatalf("the genuine ciphertext: %v", err)
	}
}

func TestXKSDestroyedVersion(t *testing.T) {
	f := newXKSFixture(t)
	ctx := t.Context()
	f.createKey(t, "k", true, true)
	old, _, err := f.encrypt(t, "k", []byte("old"), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.hsm.RotateKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.hsm.SetVersionState(ctx, "k", 1, hsm.SetDisabled); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.decrypt(t, "k", old, nil); !errors.Is(err, shared.ErrInvalidKeyUsage) {
		t.Fatalf("decrypt under disabled version = %v, want InvalidKeyUsage", err)
	}
	code, _, err := f.s.hsm.DestroyVersion(ctx, "k", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.s.hsm.DestroyVersion(ctx, "k", 1, code); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.decrypt(t, "k", old, nil); !errors.Is(err, shared.ErrInvalidCiphertext) {
		t.Fatalf("decrypt under destroyed version = %v, want InvalidCiphertext", err)
	}
	if _, _, err := f.encrypt(t, "k", []byte("new"), nil, true); err != nil {
		t.Fatalf("the key still encrypts with version 2: %v", err)
	}
}

// BenchmarkXKSEncrypt measures what the CDIV check costs: one more HSM
// round trip per encrypt (docs/BENCHMARKS.md).
func BenchmarkXKSEncrypt(b *testing.B) {
	f := newXKSFixture(b)
	f.createKey(b, "bench", true, true)
	pt, aad := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 64)
	for _, cdiv := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "cdiv"}[cdiv]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := f.encrypt(b, "bench", pt, aad, cdiv); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
