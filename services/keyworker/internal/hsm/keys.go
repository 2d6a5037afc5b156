package hsm

// AES token keys: creation, lookup by label, listing.

import (
	"context"
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

const maxKeyLabel = 128 // XKS key ids are at most 128 characters

// maxVersionedLabel: a key label with its version suffix (#v and up to 7 digits).
const maxVersionedLabel = maxKeyLabel + 9

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
	if len(label) > maxKeyLabel || isVersionLabel(label) {
		return KeyInfo{}, shared.NewError(shared.CodeValidation, "keyworker: key label must be at most %d characters and not end in %q and digits (reserved for key versions)", maxKeyLabel, versionSep)
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
			aesKeyAttributes(label, encrypt, decrypt))
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

// aesKeyAttributes is the template of a new AES-256 token key that leaves
// the HSM only wrapped under a trusted backup key (CKA_SENSITIVE,
// CKA_WRAP_WITH_TRUSTED; no wrap/unwrap of its own).
func aesKeyAttributes(label string, encrypt, decrypt bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		// Extractable only under a key the security officer marked
		// CKA_TRUSTED: the backup key of `sovkeys hsm export-keys`.
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
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
	case 0:
		// SoftHSM 2.6 leaves CKA_VALUE_LEN 0 on a key made by C_UnwrapKey
		// (read-only in the template; checked empirically): the keys
		// `sovkeys hsm import-keys` restores. ImportKeys accepts only
		// 32-byte secret keys, and sovkeys makes no other size.
		return "AES_256"
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
	if label == "" || len(label) > maxVersionedLabel || !utf8.ValidString(label) ||
		strings.ContainsFunc(label, unicode.IsControl) {
		return shared.NewError(shared.CodeValidation, "keyworker: key label must be 1 to %d printable characters", maxKeyLabel)
	}
	return nil
}
