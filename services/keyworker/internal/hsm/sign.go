package hsm

// ECDSA P-384 signing with the hierarchy's key pairs, and a crypto.Signer.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"

	"github.com/miekg/pkcs11"
)

const p384SigSize = 96 // raw r || s from CKM_ECDSA

// PublicKey returns the DER SubjectPublicKeyInfo of the ECDSA key pair
// labelled label (SigningKeyLabel or CAKeyLabel).
func (h *HSM) PublicKey(ctx context.Context, label string) ([]byte, error) {
	k, err := h.lookupPair(ctx, label)
	return bytesOrNil(bytes.Clone(k.spki), err)
}

func (h *HSM) lookupPair(ctx context.Context, label string) (k ecPair, err error) {
	err = h.withHierarchy(ctx, func(p P11, sh pkcs11.SessionHandle) (err error) {
		k, err = h.pair(p, sh, label)
		return err
	})
	return k, err
}

// SignSHA256 signs SHA-256(msg) with the private key labelled label in the
// HSM and returns the DER (ASN.1 SEQUENCE of r, s) signature.
func (h *HSM) SignSHA256(ctx context.Context, label string, msg []byte) ([]byte, error) {
	digest := sha256.Sum256(msg)
	return h.signDigest(ctx, label, digest[:])
}

func (h *HSM) signDigest(ctx context.Context, label string, digest []byte) ([]byte, error) {
	var sig []byte
	err := h.withHierarchy(ctx, func(p P11, sh pkcs11.SessionHandle) error {
		k, err := h.pair(p, sh, label)
		if err != nil {
			return err
		}
		sig, err = signRaw(p, sh, k.priv, digest)
		return err
	})
	return bytesOrNil(sig, err)
}

// signRaw runs CKM_ECDSA (the digest is computed by the caller, which
// every HSM supports) and converts the raw r || s to DER.
func signRaw(p P11, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, digest []byte) ([]byte, error) {
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, priv); err != nil {
		return nil, fmt.Errorf("keyworker: ecdsa sign init: %w", err) // a stale handle stays detectable
	}
	raw, err := p.Sign(sh, digest)
	if err != nil {
		return nil, fmt.Errorf("keyworker: ecdsa sign: %w", err)
	}
	if len(raw) != p384SigSize {
		return nil, fmt.Errorf("keyworker: ecdsa sign: hsm returned %d bytes, want %d", len(raw), p384SigSize)
	}
	n := len(raw) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
}

// Signer returns a crypto.Signer backed by the key pair labelled label, for
// x509.CreateCertificate with CAKeyLabel. Every Sign runs under ctx (its
// deadline and cancellation), so hand it a context that lives as long as
// the signer is used.
func (h *HSM) Signer(ctx context.Context, label string) (crypto.Signer, error) {
	k, err := h.lookupPair(ctx, label)
	if err != nil {
		return nil, err
	}
	return &hsmSigner{h: h, ctx: ctx, label: label, pub: k.key}, nil
}

type hsmSigner struct {
	h     *HSM
	ctx   context.Context //nolint:containedctx // crypto.Signer.Sign takes no context
	label string
	pub   *ecdsa.PublicKey
}

var _ crypto.Signer = (*hsmSigner)(nil)

func (s *hsmSigner) Public() crypto.PublicKey { return s.pub }

// Sign signs digest, which must be a SHA-256 or SHA-384 digest as opts says;
// rand is unused (the HSM draws the nonce).
func (s *hsmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		opts = crypto.Hash(0)
	}
	switch hf := opts.HashFunc(); {
	case hf != crypto.SHA256 && hf != crypto.SHA384:
		return nil, fmt.Errorf("keyworker: hsm signer: unsupported hash %v (want SHA-256 or SHA-384)", hf)
	case len(digest) != hf.Size():
		return nil, fmt.Errorf("keyworker: hsm signer: digest is %d bytes, %v needs %d", len(digest), hf, hf.Size())
	}
	return s.h.signDigest(s.ctx, s.label, digest)
}
