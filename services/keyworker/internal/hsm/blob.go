package hsm

// Context-bound blobs (docs/key-hierarchy.md):
//
//	version (1 byte) | nonce (16 bytes) | AES-KW(KEK, key) (40 bytes)
//
// Version 1: KEK = CKM_AES_ECB_ENCRYPT_DATA(parent, SHA-256(label | 0 |
// version | nonce | context)), a one-time session key derived in the HSM
// from an AES parent with CKA_DERIVE.
//
// Version 2, for HSMs without CKM_AES_ECB_ENCRYPT_DATA (CloudHSM, and any
// HSM that exposes no AES derivation): KEK = the SP 800-108 counter-mode KDF
// with HMAC-SHA256 as PRF, one block:
//
//	KEK = HMAC-SHA256(parent, be32(1) | label | 0 | version | nonce | context | be32(256))
//
// computed by the HSM (C_Sign, CKM_SHA256_HMAC) under a generic-secret
// parent with only CKA_SIGN, and imported as a one-time session AES key
// that can only wrap or only unwrap. The KEK passes through keyworker
// memory for that import (and is cleared); the parents and the wrapped
// keys never do. Only the mechanisms every supported HSM has are used:
// CKM_SHA256_HMAC, C_CreateObject, CKM_AES_KEY_WRAP.
//
// In both, change the version, nonce or context and the RFC 3394
// integrity check fails. The parent's kind follows the version (an EKT v2
// unwraps to a generic-secret CMK), so secrets have their EKT's version.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	blobV1         = 1
	blobV2         = 2
	blobNonceSize  = 16
	kwOverhead     = 8 // RFC 3394 integrity block
	blobSize       = 1 + blobNonceSize + hierKeySize + kwOverhead
	kdfLabelEKT    = "sovkeys/kek/ekt"
	kdfLabelSecret = "sovkeys/kek/secret"
)

// wrapBound wraps key under a one-time KEK derived from parent, label, a
// fresh nonce and bctx, and returns the versioned blob.
func wrapBound(p P11, sh pkcs11.SessionHandle, version byte, parent, key pkcs11.ObjectHandle, label string, bctx []byte) ([]byte, error) {
	blob := make([]byte, 1+blobNonceSize, blobSize)
	blob[0] = version
	_, _ = rand.Read(blob[1:]) // never fails; the runtime crashes rather than return short
	kek, err := deriveKEK(p, sh, parent, label, blob[:1+blobNonceSize], bctx, pkcs11.CKA_WRAP)
	if err != nil {
		return nil, err
	}
	defer destroy(p, sh, kek)
	w, err := p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, kek, key)
	if err != nil {
		return nil, fmt.Errorf("keyworker: aes key wrap: %w", err)
	}
	if len(w) != hierKeySize+kwOverhead {
		return nil, fmt.Errorf("keyworker: aes key wrap: hsm returned %d bytes, want %d", len(w), hierKeySize+kwOverhead)
	}
	return append(blob, w...), nil
}

// unwrapBound checks blob's shape and unwraps it, under the KEK its header
// and bctx select, into a session object made from template. Every failure
// that can stem from the blob or the context is CodeInvalidCiphertext.
func unwrapBound(p P11, sh pkcs11.SessionHandle, version byte, parent pkcs11.ObjectHandle, blob []byte, label string, bctx []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	what := map[string]string{kdfLabelEKT: "ekt", kdfLabelSecret: "encrypted secret"}[label]
	if len(blob) != blobSize || blob[0] != version {
		return 0, shared.NewError(shared.CodeInvalidCiphertext, "keyworker: %s is malformed or of an unknown version", what)
	}
	kek, err := deriveKEK(p, sh, parent, label, blob[:1+blobNonceSize], bctx, pkcs11.CKA_UNWRAP)
	if err != nil {
		return 0, err
	}
	defer destroy(p, sh, kek)
	obj, err := p.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, kek, blob[1+blobNonceSize:], template)
	switch {
	case err == nil:
		return obj, nil
	case isAuthFailure(err) || isCKR(err, pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE):
		// SoftHSM 2.6 answers a failed RFC 3394 integrity check with CKR_GENERAL_ERROR.
		return 0, shared.NewError(shared.CodeInvalidCiphertext, "keyworker: %s does not unwrap: altered, or bound to another context", what)
	default:
		return 0, fmt.Errorf("keyworker: unwrap %s: %w", what, err)
	}
}

// deriveKEK derives a one-time AES-256 session KEK, usable only for usage
// (CKA_WRAP or CKA_UNWRAP), with CKM_AES_ECB_ENCRYPT_DATA: the KEK is
// AES-ECB(parent, SHA-256(label | 0 | header | bctx)), two blocks.
func deriveKEK(p P11, sh pkcs11.SessionHandle, parent pkcs11.ObjectHandle, label string, header, bctx []byte, usage uint) (pkcs11.ObjectHandle, error) {
	if header[0] == blobV2 {
		return deriveKEKv2(p, sh, parent, label, header, bctx, usage)
	}
	d := sha256.Sum256(append(append(append([]byte(label), 0), header...), bctx...))
	data := d[:]
	var pin runtime.Pinner
	defer pin.Unpin()
	param, err := derivationStringData(data, &pin)
	if err != nil {
		return 0, err
	}
	kek, err := p.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, parent,
		append(aesTemplate(false, false, usage), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize)))
	if err != nil {
		return 0, fmt.Errorf("keyworker: derive kek: %w", err) // a stale parent handle stays detectable
	}
	return kek, nil
}

// derivationStringData encodes CK_KEY_DERIVATION_STRING_DATA {pData,
// ulLen}, which miekg/pkcs11 v1.1.2 has no helper for. miekg copies the
// parameter into C memory, which thus holds a pointer to data: data stays
// pinned (runtime.Pinner allows such pointers in C memory) until the
// caller's Unpin, after C_DeriveKey. LP64 only (CK_ULONG = pointer = 8).
func derivationStringData(data []byte, pin *runtime.Pinner) ([]byte, error) {
	if runtime.GOOS == "windows" || unsafe.Sizeof(uintptr(0)) != 8 {
		return nil, errors.New("keyworker: key derivation parameters need a 64-bit unix platform")
	}
	pin.Pin(&data[0])
	b := binary.NativeEndian.AppendUint64(nil, uint64(uintptr(unsafe.Pointer(&data[0]))))
	return binary.NativeEndian.AppendUint64(b, uint64(len(data))), nil
}

// deriveKEKv2 is the version 2 KEK: SP 800-108 counter mode, HMAC-SHA256,
// one 256-bit block, imported as a one-time session key for usage.
func deriveKEKv2(p P11, sh pkcs11.SessionHandle, parent pkcs11.ObjectHandle, label string, header, bctx []byte, usage uint) (pkcs11.ObjectHandle, error) {
	msg := binary.BigEndian.AppendUint32(nil, 1)
	msg = append(append(append(append(msg, label...), 0), header...), bctx...)
	msg = binary.BigEndian.AppendUint32(msg, hierKeySize*8)
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, parent); err != nil {
		return 0, fmt.Errorf("keyworker: derive kek (hmac): %w", err)
	}
	mac, err := p.Sign(sh, msg)
	if err != nil {
		return 0, fmt.Errorf("keyworker: derive kek (hmac): %w", err)
	}
	defer clear(mac)
	if len(mac) != hierKeySize {
		return 0, fmt.Errorf("keyworker: derive kek (hmac): hsm returned %d bytes", len(mac))
	}
	kek, err := p.CreateObject(sh, append(aesTemplate(false, false, usage), pkcs11.NewAttribute(pkcs11.CKA_VALUE, mac)))
	if err != nil {
		return 0, fmt.Errorf("keyworker: import kek: %w", err)
	}
	return kek, nil
}
