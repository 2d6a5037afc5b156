package hsm

// AES-256-GCM under a token key, and the health round trip.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	gcmIVSize   = 12
	gcmTagSize  = 16
	maxDataSize = 1 << 20 // plaintext and AAD; XKS needs 4300 and 8192
)

// EncryptGCM encrypts plaintext with AES-GCM under the key labelled label,
// authenticating aad. The IV (12 bytes) comes from crypto/rand, or from the
// HSM when IVFromHSM is set; the tag is 16 bytes.
func (h *HSM) EncryptGCM(ctx context.Context, label string, plaintext, aad []byte) (iv, ciphertext, tag []byte, err error) {
	if len(plaintext) > maxDataSize || len(aad) > maxDataSize {
		return nil, nil, nil, shared.NewError(shared.CodeValidation, "keyworker: plaintext or aad longer than %d bytes", maxDataSize)
	}
	err = h.withKey(ctx, label, func(sh pkcs11.SessionHandle, k cachedKey) error {
		if !k.info.Encrypt {
			return shared.NewError(shared.CodeInvalidKeyUsage, "keyworker: key %q does not allow encrypt", label)
		}
		var e error
		iv, ciphertext, tag, e = h.encryptGCM(sh, k, plaintext, aad)
		return e
	})
	if err != nil {
		return nil, nil, nil, err
	}
	return iv, ciphertext, tag, nil
}

func (h *HSM) encryptGCM(sh pkcs11.SessionHandle, k cachedKey, plaintext, aad []byte) (iv, ciphertext, tag []byte, err error) {
	ivBuf := make([]byte, gcmIVSize) // stays zero for the HSM to overwrite
	if !h.cfg.IVFromHSM {
		_, _ = rand.Read(ivBuf) // never fails; the runtime crashes rather than return short
	}
	// miekg/pkcs11 copies the IV into C memory it only frees in Free, so
	// that an HSM which writes its own IV there (CloudHSM, Luna) can be read
	// back with IV() after C_Encrypt. Free after reading, never before.
	params := pkcs11.NewGCMParams(ivBuf, aad, gcmTagSize*8)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if err := h.p11.EncryptInit(sh, mech, k.handle); err != nil {
		return nil, nil, nil, initError("encrypt", k.info.Label, err)
	}
	out, err := h.p11.Encrypt(sh, plaintext)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("keyworker: encrypt with key %q: %w", k.info.Label, err)
	}
	used := params.IV()
	if h.cfg.IVFromHSM {
		// Fail closed: an HSM that ignores the request leaves ivBuf's zeros,
		// and reusing one IV under a key breaks GCM.
		if len(used) != gcmIVSize || bytes.Equal(used, ivBuf) {
			return nil, nil, nil, fmt.Errorf("keyworker: encrypt with key %q: hsm returned no usable iv (is IVFromHSM right for this hsm?)", k.info.Label)
		}
		iv = used
	} else {
		// An HSM that silently substitutes its own IV would make our
		// ciphertext undecryptable.
		if !bytes.Equal(used, ivBuf) {
			return nil, nil, nil, fmt.Errorf("keyworker: encrypt with key %q: hsm replaced the iv (set IVFromHSM)", k.info.Label)
		}
		iv = ivBuf
	}
	n := len(plaintext)
	if len(out) != n+gcmTagSize {
		return nil, nil, nil, fmt.Errorf("keyworker: encrypt with key %q: hsm returned %d bytes for %d", k.info.Label, len(out), n)
	}
	return iv, out[:n:n], out[n:], nil
}

// DecryptGCM checks tag and aad and decrypts. A wrong tag, IV, ciphertext or
// aad gives shared.ErrInvalidCiphertext; a key without CKA_DECRYPT gives
// shared.ErrInvalidKeyUsage.
func (h *HSM) DecryptGCM(ctx context.Context, label string, iv, ciphertext, tag, aad []byte) ([]byte, error) {
	if len(iv) != gcmIVSize || len(tag) != gcmTagSize {
		return nil, invalidCiphertext()
	}
	if len(ciphertext) > maxDataSize || len(aad) > maxDataSize {
		return nil, shared.NewError(shared.CodeValidation, "keyworker: ciphertext or aad longer than %d bytes", maxDataSize)
	}
	in := make([]byte, 0, len(ciphertext)+gcmTagSize)
	in = append(append(in, ciphertext...), tag...)
	var plaintext []byte
	err := h.withKey(ctx, label, func(sh pkcs11.SessionHandle, k cachedKey) error {
		if !k.info.Decrypt {
			return shared.NewError(shared.CodeInvalidKeyUsage, "keyworker: key %q does not allow decrypt", label)
		}
		var e error
		plaintext, e = h.decryptGCM(sh, k, iv, in, aad)
		return e
	})
	if err != nil {
		return nil, err
	}
	return plaintext, nil
}

func (h *HSM) decryptGCM(sh pkcs11.SessionHandle, k cachedKey, iv, in, aad []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(iv, aad, gcmTagSize*8)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if err := h.p11.DecryptInit(sh, mech, k.handle); err != nil {
		if isCKR(err, pkcs11.CKR_MECHANISM_PARAM_INVALID) {
			return nil, invalidCiphertext()
		}
		return nil, initError("decrypt", k.info.Label, err)
	}
	pt, err := h.p11.Decrypt(sh, in)
	switch {
	case err == nil:
	case isAuthFailure(err):
		return nil, invalidCiphertext()
	default:
		return nil, fmt.Errorf("keyworker: decrypt with key %q: %w", k.info.Label, err)
	}
	if len(pt) != len(in)-gcmTagSize {
		clear(pt)
		return nil, fmt.Errorf("keyworker: decrypt with key %q: hsm returned %d bytes for %d", k.info.Label, len(pt), len(in)-gcmTagSize)
	}
	return pt, nil
}

// HealthCheck makes a real round trip through the HSM: encrypt and decrypt a
// random probe under HealthKeyLabel, creating that key if missing.
func (h *HSM) HealthCheck(ctx context.Context) error {
	probe := make([]byte, 32)
	_, _ = rand.Read(probe)
	aad := []byte("sovkeys-health")
	iv, ct, tag, err := h.encryptCreating(ctx, HealthKeyLabel, probe, aad)
	if err != nil {
		return fmt.Errorf("keyworker: health check: %w", err)
	}
	got, err := h.DecryptGCM(ctx, HealthKeyLabel, iv, ct, tag, aad)
	if err != nil {
		return fmt.Errorf("keyworker: health check: %w", err)
	}
	defer clear(got)
	if !bytes.Equal(got, probe) {
		return errors.New("keyworker: health check: decrypted probe differs")
	}
	return nil
}

// initError maps a C_EncryptInit/C_DecryptInit failure; stale handles stay
// raw so withKey can retry.
func initError(op, label string, err error) error {
	if isCKR(err, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_TYPE_INCONSISTENT) {
		return shared.NewError(shared.CodeInvalidKeyUsage, "keyworker: key %q does not allow %s", label, op)
	}
	return fmt.Errorf("keyworker: %s with key %q: %w", op, label, err)
}

func invalidCiphertext() error {
	return shared.NewError(shared.CodeInvalidCiphertext, "keyworker: ciphertext does not authenticate")
}
