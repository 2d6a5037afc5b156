package hsm

// EKTs (CMKs wrapped under the domain key) and the instance secrets under them.

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	minRSABits = 2048
	maxRSABits = 8192
)

// NewEKT generates a CMK in the HSM and returns it wrapped under the domain
// key, bound to ektCtx (EKTContext). The CMK never exists outside the HSM.
func (h *HSM) NewEKT(ctx context.Context, ektCtx []byte) ([]byte, error) {
	if err := validateContext("ekt", ektCtx); err != nil {
		return nil, err
	}
	var ekt []byte
	err := h.withHierarchy(ctx, func(p P11, sh pkcs11.SessionHandle) error {
		version := h.blobVersionToWrite()
		dom, err := h.domainKeyFor(p, sh, version)
		if err != nil {
			return err
		}
		gen := generateAES
		if version == blobV2 {
			gen = generateGeneric // the v2 CMK is an HMAC parent
		}
		cmk, err := gen(p, sh, true) // extractable only to be wrapped, here, once
		if err != nil {
			return fmt.Errorf("keyworker: generate cmk: %w", err)
		}
		defer destroy(p, sh, cmk)
		ekt, err = wrapBound(p, sh, version, dom, cmk, kdfLabelEKT, ektCtx)
		return err
	})
	return bytesOrNil(ekt, err)
}

// GenerateSecret unwraps the EKT (checking ektCtx), generates a 32-byte
// secret in the HSM and returns it wrapped under the CMK bound to secretCtx
// (SecretContext), and under rsaPub with RSA-OAEP SHA-256 / MGF1-SHA-256,
// no label.
func (h *HSM) GenerateSecret(ctx context.Context, ekt, ektCtx, secretCtx []byte, rsaPub *rsa.PublicKey) (encryptedSecret, wrappedSecret []byte, err error) {
	if err := validateSecretArgs(ekt, ektCtx, secretCtx, rsaPub, true); err != nil {
		return nil, nil, err
	}
	err = h.withCMK(ctx, ekt, ektCtx, func(p P11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := generateAES(p, sh, true)
		if err != nil {
			return fmt.Errorf("keyworker: generate secret: %w", err)
		}
		defer destroy(p, sh, secret)
		if encryptedSecret, err = wrapBound(p, sh, ekt[0], cmk, secret, kdfLabelSecret, secretCtx); err != nil {
			return err
		}
		wrappedSecret, err = h.wrapForCaller(p, sh, secret, rsaPub)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return encryptedSecret, wrappedSecret, nil
}

// DecryptSecret unwraps encryptedSecret (bound to secretCtx) under the CMK
// in the HSM and returns it wrapped under rsaPub (RSA-OAEP SHA-256).
func (h *HSM) DecryptSecret(ctx context.Context, ekt, ektCtx, encryptedSecret, secretCtx []byte, rsaPub *rsa.PublicKey) ([]byte, error) {
	if err := validateSecretArgs(ekt, ektCtx, secretCtx, rsaPub, true); err != nil {
		return nil, err
	}
	var wrapped []byte
	err := h.withCMK(ctx, ekt, ektCtx, func(p P11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := unwrapBound(p, sh, ekt[0], cmk, encryptedSecret, kdfLabelSecret, secretCtx, aesTemplate(false, true))
		if err != nil {
			return err
		}
		defer destroy(p, sh, secret)
		wrapped, err = h.wrapForCaller(p, sh, secret, rsaPub)
		return err
	})
	return bytesOrNil(wrapped, err)
}

// ConvertSecret re-binds encryptedSecret from fromCtx to toCtx under the
// same CMK, inside the HSM. The blob bound to fromCtx stays valid.
func (h *HSM) ConvertSecret(ctx context.Context, ekt, ektCtx, encryptedSecret, fromCtx, toCtx []byte) ([]byte, error) {
	if err := errors.Join(validateSecretArgs(ekt, ektCtx, fromCtx, nil, false), validateContext("target secret", toCtx)); err != nil {
		return nil, err
	}
	var out []byte
	err := h.withCMK(ctx, ekt, ektCtx, func(p P11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := unwrapBound(p, sh, ekt[0], cmk, encryptedSecret, kdfLabelSecret, fromCtx, aesTemplate(false, true))
		if err != nil {
			return err
		}
		defer destroy(p, sh, secret)
		out, err = wrapBound(p, sh, ekt[0], cmk, secret, kdfLabelSecret, toCtx)
		return err
	})
	return bytesOrNil(out, err)
}

// withCMK runs fn with the EKT's CMK as a session object: cached for this
// session, or unwrapped from the EKT (which checks ektCtx) and cached.
func (h *HSM) withCMK(ctx context.Context, ekt, ektCtx []byte, fn func(P11, pkcs11.SessionHandle, pkcs11.ObjectHandle) error) error {
	key := cmkKey(ekt, ektCtx)
	return h.withHierarchy(ctx, func(p P11, sh pkcs11.SessionHandle) error {
		if cmk, ok := h.hier.cmks.get(p, sh, key); ok {
			return fn(p, sh, cmk)
		}
		version := ekt[0] // checked by validateSecretArgs
		dom, err := h.domainKeyFor(p, sh, version)
		if err != nil {
			return err
		}
		id := randomID()
		// Not extractable: an unwrapped CMK only derives KEKs (v1: AES
		// CKA_DERIVE; v2: generic secret, CKA_SIGN for the HMAC KDF).
		template := aesTemplate(false, false, pkcs11.CKA_DERIVE)
		if version == blobV2 {
			template = genericTemplate(false, false, pkcs11.CKA_SIGN)
		}
		cmk, err := unwrapBound(p, sh, version, dom, ekt, kdfLabelEKT, ektCtx, append(template, pkcs11.NewAttribute(pkcs11.CKA_ID, id)))
		if err != nil {
			return err
		}
		if !h.hier.cmks.put(p, sh, key, cmkEntry{handle: cmk, id: id, born: h.hier.cmks.clock()}) {
			defer destroy(p, sh, cmk)
		}
		return fn(p, sh, cmk)
	})
}

// validateSecretArgs checks what the caller sends, before any HSM work.
// ConvertSecret passes no RSA key (wantRSA false).
func validateSecretArgs(ekt, ektCtx, secretCtx []byte, rsaPub *rsa.PublicKey, wantRSA bool) error {
	if err := errors.Join(validateContext("ekt", ektCtx), validateContext("secret", secretCtx)); err != nil {
		return err
	}
	if len(ekt) != blobSize || (ekt[0] != blobV1 && ekt[0] != blobV2) {
		return shared.NewError(shared.CodeInvalidCiphertext, "keyworker: ekt is malformed or of an unknown version")
	}
	if !wantRSA {
		return nil
	}
	if rsaPub == nil || rsaPub.N == nil || rsaPub.N.Sign() <= 0 {
		return shared.NewError(shared.CodeValidation, "keyworker: rsa wrapping key is missing or invalid")
	}
	switch bits := rsaPub.N.BitLen(); {
	case bits < minRSABits || bits > maxRSABits:
		return shared.NewError(shared.CodeValidation, "keyworker: rsa wrapping key has %d bits, want %d to %d", bits, minRSABits, maxRSABits)
	case rsaPub.E < 3 || rsaPub.E%2 == 0:
		return shared.NewError(shared.CodeValidation, "keyworker: rsa wrapping key has an invalid public exponent")
	}
	return nil
}
