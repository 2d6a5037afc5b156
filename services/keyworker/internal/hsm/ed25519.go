package hsm

import (
	"context"
	"crypto/ed25519"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Ed25519 in the HSM (PKCS#11 3.0 CKM_EDDSA; SoftHSM 2.6 has it when built
// with OpenSSL >= 1.1.1). The audit signer adds an Ed25519 signature to
// its checkpoints where the token can make one, for witnesses that accept
// only Ed25519 log keys (C2SP signed-note type 0x01). miekg/pkcs11 predates
// 3.0, so the constants are here.
const (
	ckkECEdwards         = 0x40
	ckmECEdwardsKeyPair  = 0x1055
	ckmEdDSA             = 0x1057
	ed25519PublicKeySize = ed25519.PublicKeySize
)

// ed25519Params is CKA_EC_PARAMS for Ed25519: the DER OID 1.3.101.112.
var ed25519Params = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}

// SupportsEdDSA reports whether the token offers CKM_EDDSA.
func (h *HSM) SupportsEdDSA() bool {
	_, err := h.p11.GetMechanismInfo(uint(h.slot.Load()), []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)})
	return err == nil
}

func edTemplate(class uint, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// Ed25519PublicKey returns the public key of the Ed25519 pair labelled
// label, or an error wrapping ErrHierarchyMissing when there is none.
func (h *HSM) Ed25519PublicKey(ctx context.Context, label string) (ed25519.PublicKey, error) {
	var pub ed25519.PublicKey
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findOne(sh, edTemplate(pkcs11.CKO_PUBLIC_KEY, label))
		if err != nil {
			return err
		}
		attrs, err := h.p11.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil || len(attrs) != 1 {
			return fmt.Errorf("keyworker: read ed25519 key %q: %w", label, err)
		}
		pub, err = edPoint(attrs[0].Value)
		return err
	})
	return pub, err
}

// edPoint reads CKA_EC_POINT: a DER OCTET STRING of the 32-byte key (as
// PKCS#11 says, and SoftHSM does) or the raw key.
func edPoint(v []byte) (ed25519.PublicKey, error) {
	if len(v) == ed25519PublicKeySize {
		return ed25519.PublicKey(v), nil
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err != nil || len(rest) != 0 || len(raw) != ed25519PublicKeySize {
		return nil, fmt.Errorf("keyworker: ed25519 public key of %d bytes", len(v))
	}
	return ed25519.PublicKey(raw), nil
}

// EnsureEd25519 creates the Ed25519 pair labelled label unless it exists
// (callers serialise creation across processes, as for EnsureKeyPair).
func (h *HSM) EnsureEd25519(ctx context.Context, label string) error {
	return h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		if n, err := h.findObjects(sh, edTemplate(pkcs11.CKO_PUBLIC_KEY, label), 1); err != nil || len(n) > 0 {
			return err
		}
		id := randomID()
		common := func(private bool) []*pkcs11.Attribute {
			return []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, private),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			}
		}
		_, _, err := h.p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPair, nil)},
			append(common(false), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ed25519Params), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)),
			append(common(true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				// Leaves the HSM only wrapped under the trusted backup
				// key of `sovkeys hsm export-keys`, as the other keys.
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)))
		if err != nil {
			return fmt.Errorf("keyworker: create ed25519 key pair %q: %w", label, err)
		}
		return nil
	})
}

// SignEd25519 signs msg (pure Ed25519) with the private key labelled label.
func (h *HSM) SignEd25519(ctx context.Context, label string, msg []byte) ([]byte, error) {
	var sig []byte
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findOne(sh, edTemplate(pkcs11.CKO_PRIVATE_KEY, label))
		if err != nil {
			return err
		}
		if err := h.p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, o); err != nil {
			return fmt.Errorf("keyworker: eddsa sign init: %w", err)
		}
		if sig, err = h.p11.Sign(sh, msg); err != nil {
			return fmt.Errorf("keyworker: eddsa sign: %w", err)
		}
		if len(sig) != ed25519.SignatureSize {
			return fmt.Errorf("keyworker: eddsa sign: hsm returned %d bytes", len(sig))
		}
		return nil
	})
	return bytesOrNil(sig, err)
}
