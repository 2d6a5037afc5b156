package keyworker

// The volume-secret key hierarchy, part two: EKTs, instance secrets, their
// context-bound blobs and the CMK cache. Blob (docs/key-hierarchy.md):
//
//	version (1 byte, 1) | nonce (16 bytes) | AES-KW(KEK, key) (40 bytes)
//
// KEK = CKM_AES_ECB_ENCRYPT_DATA(parent, SHA-256(label | 0 | version | nonce
// | context)), a one-time session key derived in the HSM: change the
// version, nonce or context and the RFC 3394 integrity check fails.

import (
	"cmp"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	blobVersion    = 1
	blobNonceSize  = 16
	hierKeySize    = 32 // CMKs, KEKs and secrets are AES-256 keys
	kwOverhead     = 8  // RFC 3394 integrity block
	blobSize       = 1 + blobNonceSize + hierKeySize + kwOverhead
	maxContextSize = 4096
	minRSABits     = 2048
	maxRSABits     = 8192
	kdfLabelEKT    = "sovkeys/kek/ekt"
	kdfLabelSecret = "sovkeys/kek/secret"
)

// How wrapForCaller does RSA-OAEP, settled by the first wrap.
const (
	oaepUnknown = iota
	oaepInHSM   // C_WrapKey, CKM_RSA_PKCS_OAEP with SHA-256 / MGF1-SHA-256
	oaepInHost  // SoftHSM only: the secret is exported here and wrapped by crypto/rsa
)

// NewEKT generates a CMK in the HSM and returns it wrapped under the domain
// key, bound to ektCtx (EKTContext). The CMK never exists outside the HSM.
func (h *HSM) NewEKT(ctx context.Context, ektCtx []byte) ([]byte, error) {
	if err := validateContext("ekt", ektCtx); err != nil {
		return nil, err
	}
	var ekt []byte
	err := h.withHierarchy(ctx, func(p hierarchyP11, sh pkcs11.SessionHandle) error {
		dom, err := h.domainKey(p, sh)
		if err != nil {
			return err
		}
		cmk, err := generateAES(p, sh, true) // extractable only to be wrapped, here, once
		if err != nil {
			return fmt.Errorf("keyworker: generate cmk: %w", err)
		}
		defer destroy(p, sh, cmk)
		ekt, err = wrapBound(p, sh, dom, cmk, kdfLabelEKT, ektCtx)
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
	err = h.withCMK(ctx, ekt, ektCtx, func(p hierarchyP11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := generateAES(p, sh, true)
		if err != nil {
			return fmt.Errorf("keyworker: generate secret: %w", err)
		}
		defer destroy(p, sh, secret)
		if encryptedSecret, err = wrapBound(p, sh, cmk, secret, kdfLabelSecret, secretCtx); err != nil {
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
	err := h.withCMK(ctx, ekt, ektCtx, func(p hierarchyP11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := unwrapBound(p, sh, cmk, encryptedSecret, kdfLabelSecret, secretCtx, aesTemplate(false, true))
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
	err := h.withCMK(ctx, ekt, ektCtx, func(p hierarchyP11, sh pkcs11.SessionHandle, cmk pkcs11.ObjectHandle) error {
		secret, err := unwrapBound(p, sh, cmk, encryptedSecret, kdfLabelSecret, fromCtx, aesTemplate(false, true))
		if err != nil {
			return err
		}
		defer destroy(p, sh, secret)
		out, err = wrapBound(p, sh, cmk, secret, kdfLabelSecret, toCtx)
		return err
	})
	return bytesOrNil(out, err)
}

// withCMK runs fn with the EKT's CMK as a session object: cached for this
// session, or unwrapped from the EKT (which checks ektCtx) and cached.
func (h *HSM) withCMK(ctx context.Context, ekt, ektCtx []byte, fn func(hierarchyP11, pkcs11.SessionHandle, pkcs11.ObjectHandle) error) error {
	key := cmkKey(ekt, ektCtx)
	return h.withHierarchy(ctx, func(p hierarchyP11, sh pkcs11.SessionHandle) error {
		if cmk, ok := h.hier.cmks.get(p, sh, key); ok {
			return fn(p, sh, cmk)
		}
		dom, err := h.domainKey(p, sh)
		if err != nil {
			return err
		}
		id := randomID()
		// Not extractable: an unwrapped CMK only derives KEKs.
		cmk, err := unwrapBound(p, sh, dom, ekt, kdfLabelEKT, ektCtx,
			append(aesTemplate(false, false, pkcs11.CKA_DERIVE), pkcs11.NewAttribute(pkcs11.CKA_ID, id)))
		if err != nil {
			return err
		}
		if !h.hier.cmks.put(p, sh, key, cmkEntry{handle: cmk, id: id, born: h.hier.cmks.clock()}) {
			defer destroy(p, sh, cmk)
		}
		return fn(p, sh, cmk)
	})
}

// wrapBound wraps key under a one-time KEK derived from parent, label, a
// fresh nonce and bctx, and returns the versioned blob.
func wrapBound(p hierarchyP11, sh pkcs11.SessionHandle, parent, key pkcs11.ObjectHandle, label string, bctx []byte) ([]byte, error) {
	blob := make([]byte, 1+blobNonceSize, blobSize)
	blob[0] = blobVersion
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
func unwrapBound(p hierarchyP11, sh pkcs11.SessionHandle, parent pkcs11.ObjectHandle, blob []byte, label string, bctx []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	what := map[string]string{kdfLabelEKT: "ekt", kdfLabelSecret: "encrypted secret"}[label]
	if len(blob) != blobSize || blob[0] != blobVersion {
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
func deriveKEK(p hierarchyP11, sh pkcs11.SessionHandle, parent pkcs11.ObjectHandle, label string, header, bctx []byte, usage uint) (pkcs11.ObjectHandle, error) {
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

// wrapForCaller wraps the secret under rsaPub with RSA-OAEP SHA-256. It
// uses C_WrapKey; on the first refusal of those OAEP parameters by
// SoftHSM (2.6 does OAEP with SHA-1 only) it switches, for good, to
// exporting the secret to this process and wrapping it with crypto/rsa.
// SoftHSM runs in this process, so its keys are in this memory anyway; any
// other HSM refusing fails the call rather than let the secret out.
func (h *HSM) wrapForCaller(p hierarchyP11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey) ([]byte, error) {
	hash := cmp.Or(h.hier.oaepHash, crypto.SHA256)
	if h.hier.oaep.Load() != oaepInHost {
		out, err := wrapOAEPInHSM(p, sh, secret, pub, hash)
		if err == nil {
			h.hier.oaep.CompareAndSwap(oaepUnknown, oaepInHSM)
			return out, nil
		}
		refused := isCKR(err, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID)
		if !refused || h.hier.oaep.Load() == oaepInHSM || !h.isSoftHSM() {
			return nil, fmt.Errorf("keyworker: rsa-oaep wrap of the secret: %w", err)
		}
		if h.hier.oaep.CompareAndSwap(oaepUnknown, oaepInHost) {
			h.logger.Warn("softhsm cannot wrap with RSA-OAEP SHA-256; secrets pass through keyworker memory to be wrapped", "token", h.cfg.TokenLabel)
		}
	}
	return wrapOAEPInHost(p, sh, secret, pub, hash)
}

func wrapOAEPInHSM(p hierarchyP11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey, hash crypto.Hash) ([]byte, error) {
	hashMech, mgf := uint(pkcs11.CKM_SHA256), uint(pkcs11.CKG_MGF1_SHA256)
	if hash == crypto.SHA1 {
		hashMech, mgf = pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1
	}
	rsaKey, err := p.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, pub.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(pub.E)).Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
	})
	if err != nil {
		return nil, fmt.Errorf("keyworker: import rsa wrapping key: %w", err)
	}
	defer destroy(p, sh, rsaKey)
	params := pkcs11.NewOAEPParams(hashMech, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil)
	return p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, rsaKey, secret)
}

// wrapOAEPInHost exports the secret under a one-time transport key (so no
// hierarchy object is ever CKA_SENSITIVE false; CKM_AES_CBC is enough for
// this in-process hand-over), decrypts it here and RSA-OAEP encrypts it;
// the clear secret lives in this process for microseconds and is zeroed.
func wrapOAEPInHost(p hierarchyP11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey, hash crypto.Hash) ([]byte, error) {
	tk := make([]byte, hierKeySize)
	_, _ = rand.Read(tk)
	defer clear(tk)
	tkObj, err := p.CreateObject(sh, append(aesTemplate(false, false, pkcs11.CKA_WRAP), pkcs11.NewAttribute(pkcs11.CKA_VALUE, tk)))
	if err != nil {
		return nil, fmt.Errorf("keyworker: create transport key: %w", err)
	}
	defer destroy(p, sh, tkObj)
	iv := make([]byte, aes.BlockSize) // one-time key: a fixed IV is fine
	pt, err := p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, iv)}, tkObj, secret)
	defer clear(pt)
	if err == nil && len(pt) != hierKeySize {
		err = fmt.Errorf("hsm returned %d bytes", len(pt))
	}
	if err != nil {
		return nil, fmt.Errorf("keyworker: export secret: %w", err)
	}
	block, _ := aes.NewCipher(tk) // 32 bytes: cannot fail
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, pt)
	out, err := rsa.EncryptOAEP(hash.New(), rand.Reader, pub, pt, nil)
	if err != nil {
		return nil, fmt.Errorf("keyworker: rsa-oaep wrap of the secret: %w", err)
	}
	return out, nil
}

// isSoftHSM reports whether the token is a SoftHSMv2 one.
func (h *HSM) isSoftHSM() bool {
	info, err := h.p11.GetTokenInfo(h.slot)
	return err == nil && strings.TrimSpace(info.ManufacturerID) == "SoftHSM project"
}

func validateContext(what string, c []byte) error {
	if len(c) == 0 || len(c) > maxContextSize {
		return shared.NewError(shared.CodeValidation, "keyworker: %s context must be 1 to %d bytes", what, maxContextSize)
	}
	return nil
}

// validateSecretArgs checks what the caller sends, before any HSM work.
// ConvertSecret passes no RSA key (wantRSA false).
func validateSecretArgs(ekt, ektCtx, secretCtx []byte, rsaPub *rsa.PublicKey, wantRSA bool) error {
	if err := errors.Join(validateContext("ekt", ektCtx), validateContext("secret", secretCtx)); err != nil {
		return err
	}
	if len(ekt) != blobSize || ekt[0] != blobVersion {
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

// cmkCache keeps unwrapped CMKs as session objects, per session: an entry
// made in session S is only used while S is held, so no other goroutine can
// destroy it mid-use and eviction needs no reference counts. Each object
// carries a random CKA_ID, checked before every use or destroy: when a
// session is lost its objects vanish, and an HSM may give their handle
// numbers to other objects, never to be taken for (or destroyed as) a CMK.
// Bounded in count over all sessions and in age; a session's expired
// entries are destroyed at its next miss (idle sessions keep theirs).
type cmkCache struct {
	mu  sync.Mutex
	m   map[cmkSlot]cmkEntry
	max int              // zero: cmkCacheMax; negative: no caching
	ttl time.Duration    // zero: cmkCacheTTL
	now func() time.Time // nil: time.Now
}

type cmkSlot struct {
	sh  pkcs11.SessionHandle
	key [32]byte // cmkKey
}

type cmkEntry struct {
	handle pkcs11.ObjectHandle
	id     []byte
	born   time.Time
}

// cmkKey covers the EKT and its context: a hit skips the unwrap, which is
// what checks the context.
func cmkKey(ekt, ektCtx []byte) [32]byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(ekt)+len(ektCtx)), uint32(len(ekt)))
	return sha256.Sum256(append(append(b, ekt...), ektCtx...))
}

func (c *cmkCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// get returns the live, verified CMK cached for key in session sh. Only
// the goroutine holding sh touches sh's entries.
func (c *cmkCache) get(p hierarchyP11, sh pkcs11.SessionHandle, key [32]byte) (pkcs11.ObjectHandle, bool) {
	c.mu.Lock()
	e, ok := c.m[cmkSlot{sh, key}]
	c.mu.Unlock()
	if !ok {
		return 0, false
	}
	if c.clock().Sub(e.born) < cmp.Or(c.ttl, cmkCacheTTL) && ownsCached(p, sh, e) {
		return e.handle, true
	}
	c.mu.Lock()
	delete(c.m, cmkSlot{sh, key})
	c.mu.Unlock()
	destroyCached(p, sh, e)
	return 0, false
}

// put caches a fresh CMK for session sh, first destroying the session's
// expired entries and, when the cache is full, its oldest. false: not
// cached (full of other sessions' entries); the caller destroys it.
func (c *cmkCache) put(p hierarchyP11, sh pkcs11.SessionHandle, key [32]byte, e cmkEntry) bool {
	limit := cmp.Or(c.max, cmkCacheMax)
	if limit < 0 {
		return false
	}
	var victims []cmkEntry
	c.mu.Lock()
	var oldest cmkSlot
	found := false
	for s, old := range c.m {
		switch {
		case s.sh != sh:
		case e.born.Sub(old.born) >= cmp.Or(c.ttl, cmkCacheTTL):
			victims = append(victims, old)
			delete(c.m, s)
		case !found || old.born.Before(c.m[oldest].born):
			oldest, found = s, true
		}
	}
	if len(c.m) >= limit && found {
		victims = append(victims, c.m[oldest])
		delete(c.m, oldest)
	}
	cached := len(c.m) < limit
	if cached {
		if c.m == nil {
			c.m = make(map[cmkSlot]cmkEntry)
		}
		c.m[cmkSlot{sh, key}] = e
	}
	c.mu.Unlock()
	for _, v := range victims {
		destroyCached(p, sh, v)
	}
	return cached
}

// dropSession forgets (and, when still ours, destroys) sh's entries.
func (c *cmkCache) dropSession(p hierarchyP11, sh pkcs11.SessionHandle) {
	var victims []cmkEntry
	c.mu.Lock()
	for s, e := range c.m {
		if s.sh == sh {
			victims = append(victims, e)
			delete(c.m, s)
		}
	}
	c.mu.Unlock()
	for _, e := range victims {
		destroyCached(p, sh, e)
	}
}

func ownsCached(p hierarchyP11, sh pkcs11.SessionHandle, e cmkEntry) bool {
	attrs, err := p.GetAttributeValue(sh, e.handle, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	return err == nil && len(attrs) == 1 && string(attrs[0].Value) == string(e.id)
}

func destroyCached(p hierarchyP11, sh pkcs11.SessionHandle, e cmkEntry) {
	if ownsCached(p, sh, e) {
		destroy(p, sh, e.handle)
	}
}
