package hsm

// Sealing of service secrets under SealKeyLabel.

import (
	"context"
	"errors"
	"fmt"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	sealVersion    = 1
	sealHeaderSize = 1 + gcmIVSize
)

// Seal encrypts a service secret under SealKeyLabel (created if missing, never
// extractable). The blob is version (1 byte) | IV (12) | ciphertext | tag (16);
// the version byte is authenticated with aad.
func (h *HSM) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	iv, ct, tag, err := h.encryptCreating(ctx, SealKeyLabel, plaintext, sealAAD(aad))
	if err != nil {
		return nil, fmt.Errorf("keyworker: seal: %w", err)
	}
	blob := make([]byte, 0, sealHeaderSize+len(ct)+len(tag))
	blob = append(blob, sealVersion)
	blob = append(blob, iv...)
	blob = append(blob, ct...)
	return append(blob, tag...), nil
}

// Unseal reverses Seal. A blob sealed with other aad, altered, or of an
// unknown version gives shared.ErrInvalidCiphertext.
func (h *HSM) Unseal(ctx context.Context, blob, aad []byte) ([]byte, error) {
	if len(blob) < sealHeaderSize+gcmTagSize || blob[0] != sealVersion {
		return nil, invalidCiphertext()
	}
	iv := blob[1:sealHeaderSize]
	ct := blob[sealHeaderSize : len(blob)-gcmTagSize]
	tag := blob[len(blob)-gcmTagSize:]
	pt, err := h.DecryptGCM(ctx, SealKeyLabel, iv, ct, tag, sealAAD(aad))
	if err != nil {
		return nil, fmt.Errorf("keyworker: unseal: %w", err)
	}
	return pt, nil
}

func sealAAD(aad []byte) []byte {
	return append([]byte{sealVersion}, aad...)
}

// encryptCreating is EncryptGCM that first creates a missing service key.
func (h *HSM) encryptCreating(ctx context.Context, label string, plaintext, aad []byte) (iv, ct, tag []byte, err error) {
	iv, ct, tag, err = h.EncryptGCM(ctx, label, plaintext, aad)
	if !errors.Is(err, shared.ErrKeyNotFound) {
		return iv, ct, tag, err
	}
	if _, err := h.CreateAESKey(ctx, label, true, true); err != nil && !errors.Is(err, ErrKeyExists) {
		return nil, nil, nil, err
	}
	return h.EncryptGCM(ctx, label, plaintext, aad)
}
