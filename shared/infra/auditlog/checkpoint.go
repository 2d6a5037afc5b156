package auditlog

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// AlgES384SHA256 is the checkpoint signature algorithm: ECDSA on P-384 over
// the SHA-256 of the signed bytes, signature in ASN.1 DER (SEQUENCE {r, s}).
const AlgES384SHA256 = "ECDSA-P384-SHA256"

// ErrSignature: a checkpoint's signature does not verify, or it names
// another key.
var ErrSignature = errors.New("auditlog: checkpoint signature invalid")

// Checkpoint is a signed statement of a scope's head: record Seq has hash
// Head. The signed bytes are the canonical encoding of the checkpoint
// without its "sig" member; the stored bytes are the canonical encoding
// with it.
type Checkpoint struct {
	Version int    `json:"v"`
	Kind    string `json:"kind"`
	Scope   string `json:"scope"`
	Seq     uint64 `json:"seq"`
	Head    string `json:"head"` // hex SHA-256 of record Seq
	Time    string `json:"time"` // when it was signed, RFC 3339 UTC
	Alg     string `json:"alg"`
	Key     string `json:"key"`        // HSM key label, KeyLabel
	KeyID   string `json:"key_sha256"` // hex SHA-256 of the DER SubjectPublicKeyInfo
	Sig     string `json:"sig,omitempty"`
}

// NewCheckpoint returns the unsigned checkpoint of record seq with hash head.
func NewCheckpoint(s Scope, seq uint64, head Hash, at time.Time, spki []byte) Checkpoint {
	return Checkpoint{
		Version: Version, Kind: s.Kind, Scope: s.ID, Seq: seq, Head: head.String(),
		Time: formatTime(at), Alg: AlgES384SHA256, Key: KeyLabel, KeyID: KeyID(spki),
	}
}

// KeyID is the hex SHA-256 of a DER SubjectPublicKeyInfo.
func KeyID(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// ScopeOf returns the checkpoint's scope.
func (c *Checkpoint) ScopeOf() Scope { return Scope{Kind: c.Kind, ID: c.Scope} }

func (c *Checkpoint) value(withSig bool) map[string]any {
	m := map[string]any{
		"v": c.Version, "kind": c.Kind, "scope": c.Scope, "seq": c.Seq, "head": c.Head,
		"time": c.Time, "alg": c.Alg, "key": c.Key, "key_sha256": c.KeyID,
	}
	if withSig {
		m["sig"] = c.Sig
	}
	return m
}

// SignedBytes are the bytes the HSM signs (SHA-256, then ECDSA P-384).
func (c *Checkpoint) SignedBytes() ([]byte, error) { return Canonical(c.value(false)) }

// Encode returns the stored form: canonical, with the signature.
func (c *Checkpoint) Encode() ([]byte, error) {
	if c.Sig == "" {
		return nil, fmt.Errorf("%w: checkpoint is not signed", ErrFormat)
	}
	return Canonical(c.value(true))
}

// SetSignature stores a DER signature.
func (c *Checkpoint) SetSignature(der []byte) { c.Sig = base64.StdEncoding.EncodeToString(der) }

// ParseCheckpoint decodes canonical checkpoint bytes (ErrFormat otherwise).
func ParseCheckpoint(data []byte) (*Checkpoint, error) {
	var c Checkpoint
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: checkpoint: %v", ErrFormat, err)
	}
	if c.Version != Version {
		return nil, fmt.Errorf("%w: checkpoint version %d", ErrFormat, c.Version)
	}
	again, err := c.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: checkpoint is not in canonical (RFC 8785) form", ErrFormat)
	}
	if c.Seq == 0 {
		return nil, fmt.Errorf("%w: checkpoint sequence 0", ErrFormat)
	}
	if _, err := ParseHash(c.Head); err != nil {
		return nil, err
	}
	return &c, nil
}

// Verify checks the signature with pub and that the checkpoint names pub.
func (c *Checkpoint) Verify(pub *ecdsa.PublicKey) error {
	if c.Alg != AlgES384SHA256 {
		return fmt.Errorf("%w: algorithm %q", ErrSignature, c.Alg)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if c.KeyID != KeyID(spki) {
		return fmt.Errorf("%w: signed by key %s, not by the given public key %s", ErrSignature, c.KeyID, KeyID(spki))
	}
	sig, err := base64.StdEncoding.DecodeString(c.Sig)
	if err != nil {
		return fmt.Errorf("%w: signature encoding: %v", ErrSignature, err)
	}
	msg, err := c.SignedBytes()
	if err != nil {
		return err
	}
	digest := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return fmt.Errorf("%w: signature does not verify", ErrSignature)
	}
	return nil
}

// ParsePublicKey reads an ECDSA P-384 public key from PEM ("PUBLIC KEY") or
// DER SubjectPublicKeyInfo.
func ParsePublicKey(data []byte) (*ecdsa.PublicKey, error) {
	if blk, _ := pem.Decode(data); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("auditlog: PEM block %q, want PUBLIC KEY", blk.Type)
		}
		data = blk.Bytes
	}
	k, err := x509.ParsePKIXPublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("auditlog: public key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, errors.New("auditlog: public key is not ECDSA P-384")
	}
	return pub, nil
}

// PublicKeyPEM encodes a DER SubjectPublicKeyInfo as PEM.
func PublicKeyPEM(spki []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})
}

// SignRequest asks a keyworker pool to sign with the audit key (endpoint
// EndpointSign). Only Tlog checkpoints are signed, after a consistency
// check; Message (the version-1 checkpoint bytes) is refused since the
// transparency log replaced the hash chain's checkpoints.
type SignRequest struct {
	Message []byte           `json:"message,omitempty"`
	Tlog    *TlogSignRequest `json:"tlog,omitempty"`
}

// PublicKeyResponse is the answer of EndpointPublicKey.
type PublicKeyResponse struct {
	Key       string `json:"key"`
	PublicKey []byte `json:"public_key"` // DER SubjectPublicKeyInfo
}

// CheckpointRequest asks the audit service for a checkpoint of a scope's
// current head (EndpointCheckpoint).
type CheckpointRequest struct {
	Kind  string `json:"kind"`
	Scope string `json:"scope"`
}
