package auditlog

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoints of the transparency log are C2SP signed notes
// (https://c2sp.org/tlog-checkpoint, https://c2sp.org/signed-note):
//
//	<deployment>/audit/<kind>/<token>
//	<tree size>
//	<base64 root hash>
//
//	— <deployment>/audit <base64(key ID || DER ECDSA signature)>
//
// The log key is the HSM's ECDSA P-384 key. Its signature type is C2SP
// signed-note type 0x02 ("ECDSA signatures as implemented by
// github.com/transparency-dev/witness"): ECDSA over SHA-256 of the note
// text, ASN.1 DER signature, key ID = the first 4 bytes of SHA-256 of the
// DER SubjectPublicKeyInfo. Witnesses add C2SP tlog-cosignature/v1 lines
// (type 0x04, Ed25519).

// Signature type identifiers (C2SP signed-note).
const (
	SigTypeECDSA       = 0x02
	SigTypeCosignature = 0x04
)

// TreeHead is a checkpoint's body.
type TreeHead struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Text is the checkpoint note text (three lines, each ending in "\n").
func (t TreeHead) Text() []byte {
	return []byte(t.Origin + "\n" + strconv.FormatInt(t.Size, 10) + "\n" + base64.StdEncoding.EncodeToString(t.Root[:]) + "\n")
}

// ParseTreeHead reads a checkpoint note text. Extension lines are refused:
// this log writes none.
func ParseTreeHead(text []byte) (TreeHead, error) {
	lines := strings.Split(string(text), "\n")
	if len(lines) != 4 || lines[3] != "" {
		return TreeHead{}, fmt.Errorf("%w: checkpoint must be three lines", ErrTlog)
	}
	var t TreeHead
	t.Origin = lines[0]
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != lines[1] {
		return TreeHead{}, fmt.Errorf("%w: checkpoint size %q", ErrTlog, lines[1])
	}
	t.Size = n
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return TreeHead{}, fmt.Errorf("%w: checkpoint root %q", ErrTlog, lines[2])
	}
	copy(t.Root[:], root)
	if t.Origin == "" {
		return TreeHead{}, fmt.Errorf("%w: empty origin", ErrTlog)
	}
	return t, nil
}

// ECDSAKeyHash is the note key ID of an ECDSA key (type 0x02).
func ECDSAKeyHash(spki []byte) uint32 {
	sum := sha256.Sum256(spki)
	return binary.BigEndian.Uint32(sum[:4])
}

// ecdsaVerifier verifies type-0x02 note signatures.
type ecdsaVerifier struct {
	name string
	hash uint32
	pub  *ecdsa.PublicKey
}

// NewECDSAVerifier returns the note verifier of the HSM audit key under
// the key name KeyName(deployment).
func NewECDSAVerifier(name string, pub *ecdsa.PublicKey) (note.Verifier, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	return &ecdsaVerifier{name: name, hash: ECDSAKeyHash(spki), pub: pub}, nil
}

func (v *ecdsaVerifier) Name() string    { return v.name }
func (v *ecdsaVerifier) KeyHash() uint32 { return v.hash }
func (v *ecdsaVerifier) Verify(msg, sig []byte) bool {
	d := sha256.Sum256(msg)
	return ecdsa.VerifyASN1(v.pub, d[:], sig)
}

// PresignedSigner is a note.Signer that returns a signature made elsewhere
// (the HSM) over the exact note text it is given to Sign.
type PresignedSigner struct {
	KeyName string
	Hash    uint32
	Text    []byte // the text the signature covers
	Sig     []byte
}

func (p *PresignedSigner) Name() string    { return p.KeyName }
func (p *PresignedSigner) KeyHash() uint32 { return p.Hash }
func (p *PresignedSigner) Sign(msg []byte) ([]byte, error) {
	if !bytes.Equal(msg, p.Text) {
		return nil, fmt.Errorf("%w: presigned signature covers another text", ErrTlog)
	}
	return p.Sig, nil
}

// cosignature/v1 (C2SP tlog-cosignature): Ed25519 over
// "cosignature/v1\ntime <t>\n" + note text; signature = u64 t || sig.

// CosignatureKeyHash is the key ID of an Ed25519 cosigner.
func CosignatureKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write([]byte{SigTypeCosignature})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil)[:4])
}

func cosignedMessage(t uint64, msg []byte) []byte {
	return append([]byte("cosignature/v1\ntime "+strconv.FormatUint(t, 10)+"\n"), msg...)
}

// Cosigner makes cosignature/v1 note signatures.
type Cosigner struct {
	name string
	key  ed25519.PrivateKey
	now  func() time.Time
}

// NewCosigner returns a cosigner named name (a schema-less URL).
func NewCosigner(name string, key ed25519.PrivateKey, now func() time.Time) *Cosigner {
	return &Cosigner{name: name, key: key, now: now}
}

func (c *Cosigner) Name() string { return c.name }
func (c *Cosigner) KeyHash() uint32 {
	return CosignatureKeyHash(c.name, c.key.Public().(ed25519.PublicKey))
}
func (c *Cosigner) Sign(msg []byte) ([]byte, error) {
	t := uint64(c.now().Unix())
	sig := ed25519.Sign(c.key, cosignedMessage(t, msg))
	return append(binary.BigEndian.AppendUint64(nil, t), sig...), nil
}

// Verifier returns the matching verifier.
func (c *Cosigner) Verifier() note.Verifier {
	return NewCosignatureVerifier(c.name, c.key.Public().(ed25519.PublicKey))
}

type cosigVerifier struct {
	name string
	pub  ed25519.PublicKey
}

// NewCosignatureVerifier verifies cosignature/v1 signatures of one witness.
func NewCosignatureVerifier(name string, pub ed25519.PublicKey) note.Verifier {
	return &cosigVerifier{name: name, pub: pub}
}

func (v *cosigVerifier) Name() string    { return v.name }
func (v *cosigVerifier) KeyHash() uint32 { return CosignatureKeyHash(v.name, v.pub) }
func (v *cosigVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<63-1 {
		return false
	}
	return ed25519.Verify(v.pub, cosignedMessage(t, msg), sig[8:])
}

// Witness key strings: "<name>+<hex key id>+<base64(0x04 || Ed25519 key)>"
// (C2SP vkey form, as note.NewVerifier reads for type 0x01).

// CosignerVKey encodes a cosigner's public key.
func CosignerVKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, CosignatureKeyHash(name, pub),
		base64.StdEncoding.EncodeToString(append([]byte{SigTypeCosignature}, pub...)))
}

// ParseCosignerVKey reads a CosignerVKey string.
func ParseCosignerVKey(vkey string) (note.Verifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: witness key %q: want name+id+key", ErrTlog, vkey)
	}
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != SigTypeCosignature {
		return nil, fmt.Errorf("%w: witness key %q: not a cosignature/v1 Ed25519 key", ErrTlog, vkey)
	}
	v := NewCosignatureVerifier(parts[0], ed25519.PublicKey(key[1:]))
	if fmt.Sprintf("%08x", v.KeyHash()) != parts[1] {
		return nil, fmt.Errorf("%w: witness key %q: key id does not match", ErrTlog, vkey)
	}
	return v, nil
}

// errQuorum: too few witness cosignatures.
var errQuorum = errors.New("witness quorum not met")

// Trust is what a verifier of checkpoints is configured with.
type Trust struct {
	Deployment string           // origin prefix and key name of the log
	LogKey     *ecdsa.PublicKey // the HSM audit key
	Witnesses  []note.Verifier  // witnesses whose cosignatures count
	Quorum     int              // cosignatures required (0: none)
}

// OpenCheckpoint verifies a signed checkpoint of scope s: the log key's
// signature, the origin, and at least Quorum cosignatures of distinct
// witnesses. It returns the tree head and the witnesses that cosigned.
func (tr Trust) OpenCheckpoint(signed []byte, s Scope) (TreeHead, []string, error) {
	logV, err := NewECDSAVerifier(KeyName(tr.Deployment), tr.LogKey)
	if err != nil {
		return TreeHead{}, nil, err
	}
	vs := append([]note.Verifier{logV}, tr.Witnesses...)
	n, err := note.Open(signed, note.VerifierList(vs...))
	if err != nil {
		return TreeHead{}, nil, fmt.Errorf("%w: checkpoint signature: %v", ErrSignature, err)
	}
	var logSigned bool
	seen := map[string]bool{}
	var cosigners []string
	for _, sig := range n.Sigs {
		if sig.Name == logV.Name() {
			// The log's own signatures (ECDSA; Ed25519 if a verifier for it
			// was passed as a witness) never count as cosignatures.
			logSigned = logSigned || sig.Hash == logV.KeyHash()
			continue
		}
		id := fmt.Sprintf("%s+%08x", sig.Name, sig.Hash)
		if !seen[id] {
			seen[id] = true
			cosigners = append(cosigners, sig.Name)
		}
	}
	if !logSigned {
		return TreeHead{}, nil, fmt.Errorf("%w: checkpoint is not signed by the audit key %s", ErrSignature, logV.Name())
	}
	th, err := ParseTreeHead([]byte(n.Text))
	if err != nil {
		return TreeHead{}, nil, err
	}
	if want := s.Origin(tr.Deployment); th.Origin != want {
		return TreeHead{}, nil, fmt.Errorf("%w: checkpoint origin %q, want %q", ErrSignature, th.Origin, want)
	}
	if len(cosigners) < tr.Quorum {
		return TreeHead{}, nil, fmt.Errorf("%w: %w: %d witness cosignatures, %d required", ErrSignature, errQuorum, len(cosigners), tr.Quorum)
	}
	return th, cosigners, nil
}

// Ed25519 log signatures (C2SP signed-note type 0x01), made by HSMs that
// have CKM_EDDSA, beside the ECDSA one: witnesses that take only Ed25519
// log keys can cosign with them.

// Ed25519KeyHash is the note key ID of an Ed25519 key: the first 4 bytes
// of SHA-256(name || "\n" || 0x01 || key).
func Ed25519KeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write([]byte{0x01})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// Ed25519VerifierKey is the note verifier key of an Ed25519 log key
// ("<name>+<hash>+<base64(0x01 || key)>"), as golang.org/x/mod/sumdb/note's
// NewVerifier takes it.
func Ed25519VerifierKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, Ed25519KeyHash(name, pub), base64.StdEncoding.EncodeToString(append([]byte{0x01}, pub...)))
}
