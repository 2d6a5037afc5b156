package hsm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestSealUnseal(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	secret, aad := []byte("nats-credentials"), []byte("kv:keystores/prod")
	blob, err := h.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	if blob[0] != sealVersion || len(blob) != 1+12+len(secret)+16 {
		t.Fatalf("blob: version %d, %d bytes", blob[0], len(blob))
	}
	if got, err := h.Unseal(ctx, blob, aad); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal = %q, %v", got, err)
	}
	checkKeyProtected(t, h, SealKeyLabel)

	flip := func(i int) []byte { c := bytes.Clone(blob); c[i] ^= 0x80; return c }
	tests := []struct {
		name      string
		blob, aad []byte
	}{
		{"wrong aad", blob, []byte("kv:keystores/dev")},
		{"no aad", blob, nil},
		{"version", flip(0), aad},
		{"iv", flip(1), aad},
		{"ciphertext", flip(14), aad},
		{"tag", flip(len(blob) - 1), aad},
		{"truncated", blob[:len(blob)-1], aad},
		{"too short", blob[:20], aad},
		{"empty", nil, aad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := h.Unseal(ctx, tt.blob, tt.aad); !errors.Is(err, shared.ErrInvalidCiphertext) || got != nil {
				t.Fatalf("Unseal = %q, %v; want ErrInvalidCiphertext", got, err)
			}
		})
	}
	t.Run("empty secret", func(t *testing.T) {
		b, err := h.Seal(ctx, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := h.Unseal(ctx, b, nil); err != nil || len(got) != 0 {
			t.Fatalf("Unseal = %q, %v", got, err)
		}
	})
}
