package hsm

// The volume-secret key hierarchy (docs/key-hierarchy.md): creating and
// checking its token keys, the domain key and the ECDSA P-384 key pairs.
// Signing: sign.go; EKTs and instance secrets: secrets.go; their blobs:
// blob.go; the caller's RSA-OAEP wrap: oaep.go; the CMK cache: cmkcache.go.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// Labels of the hierarchy's token objects. ListAESKeys returns the domain
// key too; callers listing customer keys filter out the "sovkeys-" prefix.
const (
	DomainKeyLabel = "sovkeys-domain-v1"
	// DomainKeyV2Label: the HMAC parent of blob format v2 (blob.go), a
	// generic secret that can only sign.
	DomainKeyV2Label = "sovkeys-domain-v2"
	SigningKeyLabel  = "sovkeys-signing-v1" // ECDSA P-384 key pair
	CAKeyLabel       = "sovkeys-ca-v1"      // ECDSA P-384 key pair
)

// ErrHierarchyMissing is wrapped when a key of the hierarchy is absent.
var ErrHierarchyMissing = errors.New("keyworker: key hierarchy not initialised (run EnsureHierarchy)")

// p384Params is CKA_EC_PARAMS for P-384: the DER OID 1.3.132.0.34.
var p384Params = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}

// hierarchyState is the HSM's hierarchy bookkeeping; its zero value is ready.
type hierarchyState struct {
	mu     sync.Mutex
	domain pkcs11.ObjectHandle // valid when hasDom
	hasDom bool
	// domain2: the v2 domain key, valid when hasDom2.
	domain2 pkcs11.ObjectHandle
	hasDom2 bool
	pairs   map[string]ecPair
	cmks    cmkCache
	oaep    atomic.Int32 // oaepUnknown, oaepInHSM or oaepInHost
	// oaepHash is the OAEP hash; zero means SHA-256. Tests set SHA-1 to run
	// the in-HSM wrap path on SoftHSM 2.6, which only does OAEP with SHA-1.
	oaepHash crypto.Hash
}

type ecPair struct {
	priv, pub pkcs11.ObjectHandle
	key       *ecdsa.PublicKey
	spki      []byte
}

func (s *hierarchyState) forgetTokenKeys() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hasDom, s.hasDom2 = false, false
	clear(s.pairs)
}

// withHierarchy runs fn on a pooled session; after a stale handle (a key
// destroyed behind the caches) it empties the caches and runs fn again.
func (h *HSM) withHierarchy(ctx context.Context, fn func(P11, pkcs11.SessionHandle) error) error {
	p := h.p11
	return h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		err := fn(p, sh)
		if !isStaleHandle(err) {
			return err
		}
		h.hier.forgetTokenKeys()
		h.hier.cmks.dropSession(p, sh)
		return fn(p, sh)
	})
}

// EnsureHierarchy creates the domain key and the signing and CA key pairs
// when missing, and checks the attributes of those that exist. It is
// idempotent and safe for concurrent callers in one process (it runs while
// no other call uses the module). Keyworker processes sharing one HSM must
// not run it for the first time at once: PKCS#11 has no cross-process lock,
// and two domain keys with one label make every later operation fail.
func (h *HSM) EnsureHierarchy(ctx context.Context) error {
	p := h.p11
	var created []string // for the log
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		created = created[:0]
		h.hier.forgetTokenKeys()
		for _, label := range []string{DomainKeyLabel, DomainKeyV2Label, SigningKeyLabel, CAKeyLabel} {
			ensure := h.ensurePair
			switch label {
			case DomainKeyLabel:
				ensure = h.ensureDomainKey
			case DomainKeyV2Label:
				ensure = h.ensureDomainKeyV2
			}
			made, err := ensure(p, sh, label)
			if err != nil {
				return err
			}
			if made {
				created = append(created, label)
			}
		}
		return nil
	})
	if err == nil && len(created) > 0 {
		h.logger.InfoContext(ctx, "key hierarchy created", "token", h.cfg.TokenLabel, "keys", created)
	}
	return err
}

func (h *HSM) ensureDomainKey(p P11, sh pkcs11.SessionHandle, _ string) (created bool, err error) {
	if _, err := h.domainKey(p, sh); !errors.Is(err, ErrHierarchyMissing) {
		return false, err
	}
	_, err = p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(aesTemplate(true, false, pkcs11.CKA_DERIVE),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyLabel)))
	if err != nil {
		return false, fmt.Errorf("keyworker: create domain key: %w", err)
	}
	return true, nil
}

func (h *HSM) ensureDomainKeyV2(p P11, sh pkcs11.SessionHandle, _ string) (created bool, err error) {
	if _, err := h.domainKeyV2(p, sh); !errors.Is(err, ErrHierarchyMissing) {
		return false, err
	}
	_, err = p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, append(genericTemplate(true, false, pkcs11.CKA_SIGN),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyV2Label)))
	if err != nil {
		return false, fmt.Errorf("keyworker: create domain key v2: %w", err)
	}
	return true, nil
}

// domainKeyFor returns the domain key of blob format version.
func (h *HSM) domainKeyFor(p P11, sh pkcs11.SessionHandle, version byte) (pkcs11.ObjectHandle, error) {
	if version == blobV2 {
		return h.domainKeyV2(p, sh)
	}
	return h.domainKey(p, sh)
}

// domainKeyV2 returns the v2 domain key, found and checked once: a 256-bit
// generic secret that signs (HMAC) and does nothing else, never extractable.
func (h *HSM) domainKeyV2(p P11, sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	h.hier.mu.Lock()
	d, ok := h.hier.domain2, h.hier.hasDom2
	h.hier.mu.Unlock()
	if ok {
		return d, nil
	}
	d, err := h.findOne(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyV2Label),
	})
	if err != nil {
		return 0, err
	}
	want := map[uint]bool{
		pkcs11.CKA_SIGN: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_DERIVE: false,
		pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_UNWRAP: false,
	}
	if err := checkDomainKey(p, sh, d, DomainKeyV2Label, want); err != nil {
		return 0, err
	}
	h.hier.mu.Lock()
	h.hier.domain2, h.hier.hasDom2 = d, true
	h.hier.mu.Unlock()
	return d, nil
}

// EnsureKeyPair creates the ECDSA P-384 key pair labelled label (such as
// the audit key) unless it exists, while no other call uses the module.
// The same cross-process caveat as for EnsureHierarchy applies: the caller
// serialises creators in other processes.
func (h *HSM) EnsureKeyPair(ctx context.Context, label string) error {
	return h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := h.ensurePair(h.p11, sh, label)
		return err
	})
}

// ensurePair creates the ECDSA P-384 key pair labelled label unless it exists.
func (h *HSM) ensurePair(p P11, sh pkcs11.SessionHandle, label string) (created bool, err error) {
	if _, err := h.pair(p, sh, label); !errors.Is(err, ErrHierarchyMissing) {
		return false, err
	}
	id := randomID()
	common := func(private bool) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, private),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		}
	}
	_, _, err = p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		append(common(false), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p384Params), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_WRAP, false)),
		append(common(true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false)))
	if err != nil {
		return false, fmt.Errorf("keyworker: create key pair %q: %w", label, err)
	}
	return true, nil
}

// domainKey returns the domain key's handle, found and checked once:
// refused is a key under its label that could leak derived keys, one
// allowing encrypt (ECB of chosen data is exactly the KEK derivation),
// wrap or extraction.
func (h *HSM) domainKey(p P11, sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	h.hier.mu.Lock()
	d, ok := h.hier.domain, h.hier.hasDom
	h.hier.mu.Unlock()
	if ok {
		return d, nil
	}
	d, err := h.findOne(sh, aesKeyTemplate(DomainKeyLabel))
	if err != nil {
		return 0, err
	}
	want := map[uint]bool{
		pkcs11.CKA_DERIVE: true, pkcs11.CKA_SENSITIVE: true,
		pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_UNWRAP: false,
	}
	if err := checkDomainKey(p, sh, d, DomainKeyLabel, want); err != nil {
		return 0, err
	}
	h.hier.mu.Lock()
	h.hier.domain, h.hier.hasDom = d, true
	h.hier.mu.Unlock()
	return d, nil
}

// checkDomainKey refuses the key d found under label unless it is an
// AES-256 key whose boolean attributes are exactly want.
func checkDomainKey(p P11, sh pkcs11.SessionHandle, d pkcs11.ObjectHandle, label string, want map[uint]bool) error {
	query := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)}
	for a := range want {
		query = append(query, pkcs11.NewAttribute(a, nil))
	}
	attrs, err := p.GetAttributeValue(sh, d, query)
	if err != nil {
		return fmt.Errorf("keyworker: read attributes of %q: %w", label, err)
	}
	for _, a := range attrs {
		if a.Type == pkcs11.CKA_VALUE_LEN && keySpec(a.Value) != "AES_256" ||
			a.Type != pkcs11.CKA_VALUE_LEN && attrBool(attrs, a.Type) != want[a.Type] {
			return fmt.Errorf("keyworker: key %q has the wrong attribute %#x: not a domain key", label, a.Type)
		}
	}
	return trustedOnlyExport(p, sh, d, label)
}

// pair returns the ECDSA key pair labelled label, found and checked once,
// down to signing a probe and verifying it with the public half.
func (h *HSM) pair(p P11, sh pkcs11.SessionHandle, label string) (ecPair, error) {
	h.hier.mu.Lock()
	cached, ok := h.hier.pairs[label]
	h.hier.mu.Unlock()
	if ok {
		return cached, nil
	}
	if err := validateKeyLabel(label); err != nil {
		return ecPair{}, err
	}
	priv, errPriv := h.findOne(sh, ecKeyTemplate(pkcs11.CKO_PRIVATE_KEY, label))
	pub, errPub := h.findOne(sh, ecKeyTemplate(pkcs11.CKO_PUBLIC_KEY, label))
	switch missPriv, missPub := errors.Is(errPriv, ErrHierarchyMissing), errors.Is(errPub, ErrHierarchyMissing); {
	case missPriv && missPub:
		return ecPair{}, errPriv
	case missPriv || missPub: // not "missing": EnsureHierarchy must not add a second half
		return ecPair{}, fmt.Errorf("keyworker: key pair %q is incomplete", label)
	case errPriv != nil || errPub != nil:
		return ecPair{}, errors.Join(errPriv, errPub)
	}
	k, err := h.readPair(p, sh, label, priv, pub)
	if err != nil {
		return ecPair{}, err
	}
	if err := trustedOnlyExport(p, sh, priv, label); err != nil {
		return ecPair{}, err
	}
	probe := sha256.Sum256([]byte("sovkeys key pair check " + label))
	sig, err := signRaw(p, sh, priv, probe[:])
	if err != nil {
		return ecPair{}, err
	}
	if !ecdsa.VerifyASN1(k.key, probe[:], sig) {
		return ecPair{}, fmt.Errorf("keyworker: key pair %q: private and public keys do not match", label)
	}
	h.hier.mu.Lock()
	if h.hier.pairs == nil {
		h.hier.pairs = make(map[string]ecPair)
	}
	h.hier.pairs[label] = k
	h.hier.mu.Unlock()
	return k, nil
}

// findOne returns the one object matching temp, an error wrapping
// ErrHierarchyMissing when there is none. Two are an error: using either
// would be a guess.
func (h *HSM) findOne(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	handles, err := h.findObjects(sh, temp, 2)
	label := attrString(temp, pkcs11.CKA_LABEL)
	switch {
	case err != nil:
		return 0, err
	case len(handles) == 0:
		return 0, fmt.Errorf("keyworker: key %q not found: %w", label, ErrHierarchyMissing)
	case len(handles) > 1:
		return 0, fmt.Errorf("keyworker: more than one key object labelled %q", label)
	}
	return handles[0], nil
}

// readPair reads the public point; SoftHSM returns CKA_EC_POINT as a DER
// OCTET STRING (as PKCS#11 says), some HSMs as the raw point.
func (h *HSM) readPair(p P11, sh pkcs11.SessionHandle, label string, priv, pub pkcs11.ObjectHandle) (ecPair, error) {
	attrs, err := p.GetAttributeValue(sh, pub, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
	})
	if err != nil {
		return ecPair{}, fmt.Errorf("keyworker: read public key %q: %w", label, err)
	}
	if attrString(attrs, pkcs11.CKA_EC_PARAMS) != string(p384Params) {
		return ecPair{}, fmt.Errorf("keyworker: key pair %q is not on P-384", label)
	}
	point := []byte(attrString(attrs, pkcs11.CKA_EC_POINT))
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		point = inner
	}
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), point)
	if err != nil {
		return ecPair{}, fmt.Errorf("keyworker: public key %q: %w", label, err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return ecPair{}, fmt.Errorf("keyworker: public key %q: %w", label, err)
	}
	return ecPair{priv: priv, pub: pub, key: key, spki: spki}, nil
}

func ecKeyTemplate(class uint, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}
