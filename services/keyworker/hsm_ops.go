package keyworker

// Crypto operations on an open HSM: AES key management, AES-256-GCM, the
// health round trip and sealing of service secrets.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// Reserved key labels. ListAESKeys returns them too; callers listing
// customer keys filter them out.
const (
	HealthKeyLabel = "sovkeys-health-v1" // HealthCheck's test key
	SealKeyLabel   = "sovkeys-seal-v1"   // Seal/Unseal's key
)

const (
	gcmIVSize      = 12
	gcmTagSize     = 16
	maxKeyLabel    = 128     // XKS key ids are at most 128 characters
	maxDataSize    = 1 << 20 // plaintext and AAD; XKS needs 4300 and 8192
	sealVersion    = 1
	sealHeaderSize = 1 + gcmIVSize
)

// ErrKeyExists is returned by CreateAESKey when the label is taken.
var ErrKeyExists = errors.New("keyworker: key already exists")

// KeyInfo describes an AES key in the HSM.
type KeyInfo struct {
	Label   string
	Encrypt bool
	Decrypt bool
	KeySpec string // "AES_256"
}

// KeyInfo returns the attributes of the key labelled label, or an error
// wrapping shared.ErrKeyNotFound.
func (h *HSM) KeyInfo(ctx context.Context, label string) (KeyInfo, error) {
	var info KeyInfo
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		k, err := h.resolveKey(sh, label)
		info = k.info
		return err
	})
	return info, err
}

// CreateAESKey generates an AES-256 token key that never leaves the HSM
// (CKA_SENSITIVE, not extractable, no wrap/unwrap) usable as asked. A taken
// label gives ErrKeyExists. Creation is serialised within this process only
// (it briefly excludes all other calls, see module.objMu); keyworker
// processes sharing one HSM must not create the same label at once.
func (h *HSM) CreateAESKey(ctx context.Context, label string, encrypt, decrypt bool) (KeyInfo, error) {
	if err := validateKeyLabel(label); err != nil {
		return KeyInfo{}, err
	}
	// A key with neither usage is allowed: XKS reports it and answers
	// InvalidKeyUsageException to both operations (a key parked by the operator).
	var info KeyInfo
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		h.keys.drop(label)
		// Ask the HSM, not the cache: another process may have created it.
		if _, err := h.findKey(sh, label); err == nil {
			return fmt.Errorf("keyworker: create key %q: %w", label, ErrKeyExists)
		} else if !errors.Is(err, shared.ErrKeyNotFound) {
			return err
		}
		handle, err := h.p11.GenerateKey(sh,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, encrypt),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, decrypt),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
				pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
				pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			})
		if err != nil {
			return fmt.Errorf("keyworker: create key %q: %w", label, err)
		}
		k, err := h.readKey(sh, handle)
		if err != nil {
			return err
		}
		h.keys.put(label, k)
		info = k.info
		return nil
	})
	if err == nil {
		h.logger.InfoContext(ctx, "aes key created", "label", label, "encrypt", encrypt, "decrypt", decrypt)
	}
	return info, err
}

// ListAESKeys returns every AES token key visible to the user, by label.
func (h *HSM) ListAESKeys(ctx context.Context) ([]KeyInfo, error) {
	var keys []KeyInfo
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		keys = keys[:0]
		handles, err := h.findObjects(sh, aesKeyTemplate(""), -1)
		if err != nil {
			return err
		}
		for _, handle := range handles {
			k, err := h.readKey(sh, handle)
			if isStaleHandle(err) {
				continue // destroyed since the search
			}
			if err != nil {
				return err
			}
			keys = append(keys, k.info)
		}
		return nil
	})
	slices.SortFunc(keys, func(a, b KeyInfo) int { return strings.Compare(a.Label, b.Label) })
	return keys, err
}

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

// withKey runs fn on a pooled session with the key labelled label. A cached
// handle the HSM no longer knows is dropped, looked up again, and fn retried.
func (h *HSM) withKey(ctx context.Context, label string, fn func(pkcs11.SessionHandle, cachedKey) error) error {
	return h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		k, err := h.resolveKey(sh, label)
		if err != nil {
			return err
		}
		err = fn(sh, k)
		if !isStaleHandle(err) {
			return err
		}
		h.keys.drop(label)
		if k, err = h.resolveKey(sh, label); err != nil {
			return err
		}
		return fn(sh, k)
	})
}

// resolveKey returns the cached key or looks it up and caches it.
func (h *HSM) resolveKey(sh pkcs11.SessionHandle, label string) (cachedKey, error) {
	if k, ok := h.keys.get(label); ok {
		return k, nil
	}
	k, err := h.findKey(sh, label)
	if err != nil {
		return cachedKey{}, err
	}
	h.keys.put(label, k)
	return k, nil
}

// findKey asks the HSM for the AES key labelled label. Two keys with one
// label are an error: using either would be a guess.
func (h *HSM) findKey(sh pkcs11.SessionHandle, label string) (cachedKey, error) {
	if err := validateKeyLabel(label); err != nil {
		return cachedKey{}, err
	}
	handles, err := h.findObjects(sh, aesKeyTemplate(label), 2)
	if err != nil {
		return cachedKey{}, err
	}
	switch len(handles) {
	case 0:
		return cachedKey{}, shared.NewError(shared.CodeKeyNotFound, "keyworker: key %q not found", label)
	case 1:
		return h.readKey(sh, handles[0])
	default:
		return cachedKey{}, fmt.Errorf("keyworker: more than one key labelled %q", label)
	}
}

// findObjects returns up to limit objects matching temp (limit < 0: all).
func (h *HSM) findObjects(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute, limit int) (handles []pkcs11.ObjectHandle, err error) {
	if err := h.p11.FindObjectsInit(sh, temp); err != nil {
		return nil, fmt.Errorf("keyworker: find keys: %w", err)
	}
	defer func() {
		if ferr := h.p11.FindObjectsFinal(sh); ferr != nil && err == nil {
			err = fmt.Errorf("keyworker: find keys: %w", ferr)
		}
	}()
	for limit < 0 || len(handles) < limit {
		batch := 64
		if limit >= 0 {
			batch = limit - len(handles)
		}
		got, _, err := h.p11.FindObjects(sh, batch)
		if err != nil {
			return nil, fmt.Errorf("keyworker: find keys: %w", err)
		}
		if len(got) == 0 {
			break
		}
		handles = append(handles, got...)
	}
	return handles, nil
}

func (h *HSM) readKey(sh pkcs11.SessionHandle, handle pkcs11.ObjectHandle) (cachedKey, error) {
	attrs, err := h.p11.GetAttributeValue(sh, handle, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
	})
	if err != nil {
		return cachedKey{}, fmt.Errorf("keyworker: read key attributes: %w", err)
	}
	var info KeyInfo
	for _, a := range attrs {
		switch a.Type {
		case pkcs11.CKA_LABEL:
			info.Label = string(a.Value)
		case pkcs11.CKA_ENCRYPT:
			info.Encrypt = len(a.Value) > 0 && a.Value[0] != 0
		case pkcs11.CKA_DECRYPT:
			info.Decrypt = len(a.Value) > 0 && a.Value[0] != 0
		case pkcs11.CKA_VALUE_LEN:
			info.KeySpec = keySpec(a.Value)
		}
	}
	return cachedKey{handle: handle, info: info}, nil
}

func aesKeyTemplate(label string) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
	}
	if label != "" {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	return t
}

// keySpec names the key size from CKA_VALUE_LEN, a native-endian CK_ULONG.
func keySpec(v []byte) string {
	var n uint64
	switch len(v) {
	case 8:
		n = binary.NativeEndian.Uint64(v)
	case 4:
		n = uint64(binary.NativeEndian.Uint32(v))
	}
	switch n {
	case 16:
		return "AES_128"
	case 24:
		return "AES_192"
	case 32:
		return "AES_256"
	}
	return "AES"
}

func validateKeyLabel(label string) error {
	if label == "" || len(label) > maxKeyLabel || !utf8.ValidString(label) ||
		strings.ContainsFunc(label, unicode.IsControl) {
		return shared.NewError(shared.CodeValidation, "keyworker: key label must be 1 to %d printable characters", maxKeyLabel)
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

// isAuthFailure: C_Decrypt results that mean the input does not
// authenticate. SoftHSMv2 2.6 reports a bad tag as CKR_GENERAL_ERROR (checked
// empirically); since IV and tag lengths are checked before the call, any of
// these after a successful C_DecryptInit means bad input, and no plaintext
// is released either way.
func isAuthFailure(err error) bool {
	return isCKR(err,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID,
		pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_SIGNATURE_INVALID,
		pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_FUNCTION_FAILED,
	)
}

func invalidCiphertext() error {
	return shared.NewError(shared.CodeInvalidCiphertext, "keyworker: ciphertext does not authenticate")
}
