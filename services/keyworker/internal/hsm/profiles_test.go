package hsm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestLookupProfile(t *testing.T) {
	for in, want := range map[string]string{
		"": "softhsm", "SoftHSMv2": "softhsm", "cloudhsm": "cloudhsm", "AWS CloudHSM": "cloudhsm",
		"Thales Luna 7": "luna", "Eviden Proteccio": "proteccio", "Entrust nShield Connect XC": "nshield",
	} {
		if p, err := LookupProfile(in); err != nil || p.Name != want {
			t.Errorf("LookupProfile(%q) = %q, %v; want %q", in, p.Name, err, want)
		}
	}
	if _, err := LookupProfile("Acme HSM 9000"); !errors.Is(err, shared.ErrConfigValidation) {
		t.Fatalf("unknown model = %v, want ErrConfigValidation", err)
	}
}

// newProfileHSM opens a SoftHSM token as the named HSM family would
// behave: the mechanisms the profile lacks are refused, and for a family
// that generates GCM IVs the "HSM" writes them (and refuses a host IV).
func newProfileHSM(t *testing.T, profile string, module ...string) (*HSM, *FaultP11) {
	t.Helper()
	p, err := LookupProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	var f *FaultP11
	h := newTestHSM(t, func(c *Config) {
		c.Profile = profile
		c.WrapP11 = func(inner P11) P11 {
			f = NewFaultP11(inner)
			f.Refuse(p.Lacks...)
			if p.IVFromHSM {
				f.EmulateHSMIV()
			}
			return f
		}
		if len(module) == 3 {
			c.ModulePath, c.TokenLabel, c.PIN = module[0], module[1], module[2]
		}
	})
	if err := h.EnsureHierarchy(t.Context()); err != nil {
		t.Fatalf("%s: EnsureHierarchy: %v", profile, err)
	}
	return h, f
}

// TestProfileSuites runs the volume-secret and XKS paths under every
// profile's mechanism set on SoftHSM.
func TestProfileSuites(t *testing.T) {
	for name, p := range profiles {
		t.Run(name, func(t *testing.T) {
			h, _ := newProfileHSM(t, name)
			ctx := t.Context()
			wantVersion := byte(blobV1)
			if !p.ECBDerive {
				wantVersion = blobV2
			}
			// Volume secrets.
			pub := &testRSAKey().PublicKey
			ektCtx := EKTContext("vpc-1")
			ekt := newEKT(t, h, "vpc-1")
			if len(ekt) != blobSize || ekt[0] != wantVersion {
				t.Fatalf("ekt: %d bytes, version %d; want %d, %d", len(ekt), ekt[0], blobSize, wantVersion)
			}
			ctxA, ctxB := SecretContext("vpc-1", "i-a", "vol-1"), SecretContext("vpc-1", "i-b", "vol-1")
			enc, wrapped, err := h.GenerateSecret(ctx, ekt, ektCtx, ctxA, pub)
			if err != nil || enc[0] != wantVersion {
				t.Fatalf("GenerateSecret: %v", err)
			}
			secret := openWrapped(t, wrapped)
			if got, err := h.DecryptSecret(ctx, ekt, ektCtx, enc, ctxA, pub); err != nil || !bytes.Equal(openWrapped(t, got), secret) {
				t.Fatalf("DecryptSecret: %v", err)
			}
			conv, err := h.ConvertSecret(ctx, ekt, ektCtx, enc, ctxA, ctxB)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := h.DecryptSecret(ctx, ekt, ektCtx, conv, ctxB, pub); err != nil || !bytes.Equal(openWrapped(t, got), secret) {
				t.Fatalf("converted: %v", err)
			}
			// The attacker's moves: another context, another EKT context,
			// a flipped byte anywhere, a version byte set to the other format.
			_, err = h.DecryptSecret(ctx, ekt, ektCtx, enc, ctxB, pub)
			wantCode(t, err, shared.CodeInvalidCiphertext)
			_, err = h.DecryptSecret(ctx, ekt, EKTContext("vpc-2"), enc, ctxA, pub)
			wantCode(t, err, shared.CodeInvalidCiphertext)
			for i := range enc {
				b := bytes.Clone(enc)
				b[i] ^= 0x01
				_, err = h.DecryptSecret(ctx, ekt, ektCtx, b, ctxA, pub)
				wantCode(t, err, shared.CodeInvalidCiphertext)
			}
			other := bytes.Clone(enc)
			other[0] = blobV1 + blobV2 - wantVersion
			_, err = h.DecryptSecret(ctx, ekt, ektCtx, other, ctxA, pub)
			wantCode(t, err, shared.CodeInvalidCiphertext)

			// XKS: AES-GCM under a rotated key, at the spec's limits.
			if _, err := h.CreateAESKey(ctx, "xks", true, true); err != nil {
				t.Fatal(err)
			}
			pt, aad := bytes.Repeat([]byte{1}, 4300), bytes.Repeat([]byte{2}, 8192)
			for v := 1; v <= 2; v++ {
				if v == 2 {
					if _, err := h.RotateKey(ctx, "xks"); err != nil {
						t.Fatal(err)
					}
				}
				iv, ct, tag, err := h.EncryptGCM(ctx, VersionLabel("xks", v), pt, aad)
				if err != nil {
					t.Fatalf("EncryptGCM v%d: %v", v, err)
				}
				if got, err := h.DecryptGCM(ctx, VersionLabel("xks", v), iv, ct, tag, aad); err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("DecryptGCM v%d: %v", v, err)
				}
				tag[0] ^= 1
				if _, err := h.DecryptGCM(ctx, VersionLabel("xks", v), iv, ct, tag, aad); !errors.Is(err, shared.ErrInvalidCiphertext) {
					t.Fatalf("tampered tag v%d: %v", v, err)
				}
			}
			if err := h.HealthCheck(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBlobV2ReadableBesideV1: on one token, a SoftHSM-profile keyworker
// (writes v1) reads both formats; a CloudHSM-profile keyworker (writes v2)
// reads v2 and cannot read v1, which needs a mechanism it lacks.
func TestBlobV2ReadableBesideV1(t *testing.T) {
	soft := newHierarchyHSM(t)
	cloud, _ := newProfileHSM(t, "cloudhsm", soft.cfg.ModulePath, soft.cfg.TokenLabel, soft.cfg.PIN)
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	ektCtx, secCtx := EKTContext("t"), SecretContext("t", "i", "v")
	ekt1, ekt2 := newEKT(t, soft, "t"), newEKT(t, cloud, "t")
	if ekt1[0] != blobV1 || ekt2[0] != blobV2 {
		t.Fatalf("versions %d, %d; want 1, 2", ekt1[0], ekt2[0])
	}
	enc2, wrapped, err := cloud.GenerateSecret(ctx, ekt2, ektCtx, secCtx, pub)
	if err != nil {
		t.Fatal(err)
	}
	secret := openWrapped(t, wrapped)
	if got, err := soft.DecryptSecret(ctx, ekt2, ektCtx, enc2, secCtx, pub); err != nil || !bytes.Equal(openWrapped(t, got), secret) {
		t.Fatalf("softhsm profile reading v2: %v", err)
	}
	enc1, _, err := soft.GenerateSecret(ctx, ekt1, ektCtx, secCtx, pub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := soft.DecryptSecret(ctx, ekt1, ektCtx, enc1, secCtx, pub); err != nil {
		t.Fatalf("softhsm profile reading v1: %v", err)
	}
	if _, err := cloud.DecryptSecret(ctx, ekt1, ektCtx, enc1, secCtx, pub); err == nil {
		t.Fatal("cloudhsm profile read a v1 blob: the refusing wrapper let CKM_AES_ECB_ENCRYPT_DATA through")
	}
	// A v1 secret under a v2 EKT (or the reverse) never opens.
	_, err = soft.DecryptSecret(ctx, ekt2, ektCtx, enc1, secCtx, pub)
	wantCode(t, err, shared.CodeInvalidCiphertext)
}
