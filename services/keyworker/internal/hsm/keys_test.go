package hsm

import (
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/sovkeys/sovkeys/shared"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestCreateAESKey(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	tests := []struct {
		label            string
		encrypt, decrypt bool
	}{
		{"both", true, true},
		{"encrypt-only", true, false},
		{"decrypt-only", false, true},
		{"no-usage", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.label, func(t *testing.T) {
			want := KeyInfo{Label: tt.label, Encrypt: tt.encrypt, Decrypt: tt.decrypt, KeySpec: "AES_256"}
			got, err := h.CreateAESKey(ctx, tt.label, tt.encrypt, tt.decrypt)
			if err != nil || got != want {
				t.Fatalf("CreateAESKey = %+v, %v; want %+v", got, err, want)
			}
			h.keys.clear() // read back from the HSM, not the cache
			if got, err := h.KeyInfo(ctx, tt.label); err != nil || got != want {
				t.Fatalf("KeyInfo = %+v, %v; want %+v", got, err, want)
			}
			if _, err := h.CreateAESKey(ctx, tt.label, true, true); !errors.Is(err, ErrKeyExists) {
				t.Fatalf("second CreateAESKey = %v, want ErrKeyExists", err)
			}
			checkKeyProtected(t, h, tt.label)
		})
	}
	t.Run("invalid", func(t *testing.T) {
		for _, label := range []string{"", strings.Repeat("x", maxKeyLabel+1), "bad\nlabel"} {
			if _, err := h.CreateAESKey(ctx, label, true, false); !errors.Is(err, shared.ErrValidation) {
				t.Errorf("CreateAESKey(%q) = %v, want ErrValidation", label, err)
			}
		}
	})
}

// checkKeyProtected reads the key's attributes straight from the HSM.
func checkKeyProtected(t *testing.T, h *HSM, label string) {
	t.Helper()
	err := h.withSession(t.Context(), func(sh pkcs11.SessionHandle) error {
		k, err := h.findKey(sh, label)
		if err != nil {
			return err
		}
		attrs, err := h.p11.GetAttributeValue(sh, k.handle, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, nil),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
		})
		if err != nil {
			return err
		}
		// Extractable only under a trusted key (backup.go), never in clear.
		want := []bool{true, true, true, true, false, false, false, true}
		for i, a := range attrs {
			if got := a.Value[0] != 0; got != want[i] {
				t.Errorf("attribute %#x = %t, want %t", a.Type, got, want[i])
			}
		}
		_, err = h.p11.GetAttributeValue(sh, k.handle, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if !isCKR(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
			t.Errorf("reading CKA_VALUE = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestListAESKeys(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if keys, err := h.ListAESKeys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("ListAESKeys on a new token = %v, %v", keys, err)
	}
	for _, l := range []string{"c", "a", "b"} {
		if _, err := h.CreateAESKey(ctx, l, l != "b", true); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := h.ListAESKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []KeyInfo{
		{Label: "a", Encrypt: true, Decrypt: true, KeySpec: "AES_256"},
		{Label: "b", Encrypt: false, Decrypt: true, KeySpec: "AES_256"},
		{Label: "c", Encrypt: true, Decrypt: true, KeySpec: "AES_256"},
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("ListAESKeys = %+v, want %+v", keys, want)
	}
}
