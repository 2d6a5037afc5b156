package hsm

// Key versions: rotation of an AES token key. The HSM itself is the record,
// so every keyworker of a pool sees the same versions and the HSM enforces
// their state:
//
//   - version 1 is the key labelled L (every key made before rotation);
//   - version n >= 2 is the key labelled L#v<n> with CKA_ID = L, made with
//     the usage of the version before it;
//   - an older version is narrowed by clearing CKA_ENCRYPT (decrypt-only) and
//     then CKA_DECRYPT (disabled); only a disabled version can be destroyed.
//
// The newest version encrypts and is never narrowed or destroyed: rotate
// first. Version numbers are never reused.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// versionSep separates a key label from its version number. Labels ending in
// versionSep and digits are reserved (CreateAESKey refuses them).
const versionSep = "#v"

// Version states, as KeyVersion.State reports them.
const (
	VersionActive      = "ACTIVE"       // the newest: encrypts and decrypts
	VersionEnabled     = "ENABLED"      // older, usage unchanged (decrypts; never chosen to encrypt)
	VersionDecryptOnly = "DECRYPT_ONLY" // older, CKA_ENCRYPT cleared
	VersionDisabled    = "DISABLED"     // older, CKA_ENCRYPT and CKA_DECRYPT cleared
)

var (
	// ErrNewestVersion: the operation would take the encrypting version out of use.
	ErrNewestVersion = errors.New("keyworker: the newest key version cannot be narrowed or destroyed; rotate first")
	// ErrNoSuchVersion: the key has no such version (never made, or destroyed).
	ErrNoSuchVersion = errors.New("keyworker: no such key version")
	// ErrConfirm: a destroy named the wrong confirmation code (or none).
	ErrConfirm = errors.New("keyworker: destroy needs the confirmation code from the first step")
	// ErrConcurrentRotation: another process made the same version at once; retry.
	ErrConcurrentRotation = errors.New("keyworker: the key was rotated concurrently; list its versions and retry")
	// ErrNotDisabled: only a disabled version can be destroyed.
	ErrNotDisabled = errors.New("keyworker: disable the version before destroying it")
)

// KeyVersion describes one version of a key.
type KeyVersion struct {
	Version int
	Label   string // HSM label of this version
	Encrypt bool
	Decrypt bool
	State   string
}

// VersionLabel is the HSM label of version v of the key labelled label.
func VersionLabel(label string, v int) string {
	if v <= 1 {
		return label
	}
	return label + versionSep + strconv.Itoa(v)
}

// isVersionLabel reports whether label has the reserved version suffix.
func isVersionLabel(label string) bool {
	i := strings.LastIndex(label, versionSep)
	if i < 0 || i+len(versionSep) == len(label) {
		return false
	}
	for _, c := range label[i+len(versionSep):] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// IsVersionLabel reports whether label names a key version (N >= 2) rather
// than a key.
func IsVersionLabel(label string) bool { return isVersionLabel(label) }

// KeyVersions lists the versions of the key labelled label, oldest first.
// Version 1 may be missing (destroyed); the newest is ACTIVE. A label with
// no version at all gives shared.ErrKeyNotFound.
func (h *HSM) KeyVersions(ctx context.Context, label string) ([]KeyVersion, error) {
	var out []KeyVersion
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		out, err = h.keyVersions(sh, label)
		return err
	})
	return out, err
}

func (h *HSM) keyVersions(sh pkcs11.SessionHandle, label string) ([]KeyVersion, error) {
	if err := validateKeyLabel(label); err != nil {
		return nil, err
	}
	var out []KeyVersion
	v1, err := h.findKey(sh, label)
	switch {
	case err == nil:
		kv, rerr := h.readVersion(sh, v1.handle, 1)
		if rerr != nil {
			return nil, rerr
		}
		out = append(out, kv)
	case !errors.Is(err, shared.ErrKeyNotFound):
		return nil, err
	}
	handles, err := h.findObjects(sh, append(aesKeyTemplate(""), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label))), -1)
	if err != nil {
		return nil, err
	}
	prefix := label + versionSep
	for _, handle := range handles {
		k, err := h.readKey(sh, handle)
		if isStaleHandle(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		n, perr := strconv.Atoi(strings.TrimPrefix(k.info.Label, prefix))
		if !strings.HasPrefix(k.info.Label, prefix) || perr != nil || n < 2 {
			continue // CKA_ID = label but not one of ours: never guess
		}
		kv, err := h.readVersion(sh, handle, n)
		if err != nil {
			return nil, err
		}
		out = append(out, kv)
	}
	if len(out) == 0 {
		return nil, shared.NewError(shared.CodeKeyNotFound, "keyworker: key %q not found", label)
	}
	slices.SortFunc(out, func(a, b KeyVersion) int { return a.Version - b.Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("keyworker: key %q has two objects for version %d", label, out[i].Version)
		}
	}
	for i := range out {
		switch {
		case i == len(out)-1:
			out[i].State = VersionActive
		case out[i].Encrypt:
			out[i].State = VersionEnabled
		case out[i].Decrypt:
			out[i].State = VersionDecryptOnly
		default:
			out[i].State = VersionDisabled
		}
	}
	return out, nil
}

func (h *HSM) readVersion(sh pkcs11.SessionHandle, handle pkcs11.ObjectHandle, n int) (KeyVersion, error) {
	k, err := h.readKey(sh, handle)
	if err != nil {
		return KeyVersion{}, err
	}
	return KeyVersion{Version: n, Label: k.info.Label, Encrypt: k.info.Encrypt, Decrypt: k.info.Decrypt}, nil
}

// RotateKey makes the next version of the key labelled label, with the
// usage of the current newest version, and returns it. Like CreateAESKey it
// briefly excludes all other calls through the module.
func (h *HSM) RotateKey(ctx context.Context, label string) (KeyVersion, error) {
	var made KeyVersion
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		vs, err := h.keyVersions(sh, label)
		if err != nil {
			return err
		}
		cur := vs[len(vs)-1]
		n := cur.Version + 1
		if n > maxKeyVersion {
			return shared.NewError(shared.CodeValidation, "keyworker: key %q has reached %d versions", label, maxKeyVersion)
		}
		vl := VersionLabel(label, n)
		attrs := append(aesKeyAttributes(vl, cur.Encrypt, cur.Decrypt), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)))
		handle, err := h.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, attrs)
		if err != nil {
			return fmt.Errorf("keyworker: rotate key %q: %w", label, err)
		}
		// PKCS#11 has no cross-process lock: a keyworker in another process
		// may have made the same version at the same moment. Two objects for
		// one version would stop the key, so the loser removes its own.
		same, err := h.findObjects(sh, aesKeyTemplate(vl), 3)
		if err != nil {
			return err
		}
		if len(same) > 1 {
			if derr := h.p11.DestroyObject(sh, handle); derr != nil {
				return fmt.Errorf("keyworker: rotate key %q: concurrent rotation, and removing ours failed: %w", label, derr)
			}
			return ErrConcurrentRotation
		}
		if made, err = h.readVersion(sh, handle, n); err != nil {
			return err
		}
		made.State = VersionActive
		return nil
	})
	h.versions.drop(label)
	if err == nil {
		h.logger.InfoContext(ctx, "aes key rotated", "label", label, "version", made.Version)
	}
	return made, err
}

// Version state changes SetVersionState accepts.
const (
	SetDecryptOnly = "decrypt-only" // clear CKA_ENCRYPT
	SetDisabled    = "disable"      // clear CKA_ENCRYPT and CKA_DECRYPT
	SetEnabled     = "enable"       // a disabled version decrypts again (never encrypts)
)

// SetVersionState narrows (or re-enables for decrypt) an older version.
func (h *HSM) SetVersionState(ctx context.Context, label string, version int, change string) (KeyVersion, error) {
	var attrs []*pkcs11.Attribute
	switch change {
	case SetDecryptOnly:
		attrs = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false)}
	case SetDisabled:
		attrs = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false)}
	case SetEnabled:
		attrs = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}
	default:
		return KeyVersion{}, shared.NewError(shared.CodeValidation, "keyworker: unknown version state change %q", change)
	}
	var out KeyVersion
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		kv, handle, err := h.olderVersion(sh, label, version)
		if err != nil {
			return err
		}
		if err := h.p11.SetAttributeValue(sh, handle, attrs); err != nil {
			return fmt.Errorf("keyworker: key %q version %d: %s: %w", label, version, change, err)
		}
		h.keys.drop(kv.Label)
		out, err = h.readVersion(sh, handle, version)
		out.State = map[bool]string{true: VersionDecryptOnly, false: VersionDisabled}[out.Decrypt]
		return err
	})
	if err == nil {
		h.logger.InfoContext(ctx, "key version state changed", "label", label, "version", version, "change", change)
	}
	return out, err
}

// DestroyConfirmation is the code the second step of a destroy must repeat.
// It names the label and the version, so a code for one version never
// destroys another. It guards against a slip of the operator's hand, not
// against an operator: anyone allowed to call destroy may destroy.
func DestroyConfirmation(kv KeyVersion) string {
	sum := sha256.Sum256([]byte("sovkeys/destroy-key-version/v1\x00" + kv.Label + "\x00" + strconv.Itoa(kv.Version)))
	return hex.EncodeToString(sum[:6])
}

// DestroyVersion destroys a disabled older version. With an empty confirm it
// destroys nothing and returns the confirmation code (step one); with the
// right code it destroys the HSM object (step two). Ciphertexts of that
// version can never be decrypted again.
func (h *HSM) DestroyVersion(ctx context.Context, label string, version int, confirm string) (code string, destroyed bool, err error) {
	err = h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		kv, handle, err := h.olderVersion(sh, label, version)
		if err != nil {
			return err
		}
		if kv.Encrypt || kv.Decrypt {
			return ErrNotDisabled
		}
		code = DestroyConfirmation(kv)
		if confirm == "" {
			return nil
		}
		if confirm != code {
			return ErrConfirm
		}
		if err := h.p11.DestroyObject(sh, handle); err != nil {
			return fmt.Errorf("keyworker: destroy key %q version %d: %w", label, version, err)
		}
		h.keys.drop(kv.Label)
		destroyed = true
		return nil
	})
	if destroyed {
		h.logger.WarnContext(ctx, "key version destroyed", "label", label, "version", version)
	}
	return code, destroyed, err
}

// olderVersion finds version of label and refuses the newest.
func (h *HSM) olderVersion(sh pkcs11.SessionHandle, label string, version int) (KeyVersion, pkcs11.ObjectHandle, error) {
	vs, err := h.keyVersions(sh, label)
	if err != nil {
		return KeyVersion{}, 0, err
	}
	i := slices.IndexFunc(vs, func(kv KeyVersion) bool { return kv.Version == version })
	switch {
	case i < 0:
		return KeyVersion{}, 0, fmt.Errorf("%w: key %q version %d", ErrNoSuchVersion, label, version)
	case i == len(vs)-1:
		return KeyVersion{}, 0, ErrNewestVersion
	}
	k, err := h.findKey(sh, vs[i].Label)
	if err != nil {
		return KeyVersion{}, 0, err
	}
	return vs[i], k.handle, nil
}

// maxKeyVersion matches xks.MaxKeyVersion (the metadata format's bound).
const maxKeyVersion = 1 << 20
