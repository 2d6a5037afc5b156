package roster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// Signed admin requests
//
// Every admin action is a request signed by the person who asks: the
// operation, a digest of its parameters (the request body as sent), a fresh
// nonce and the time, signed with the Ed25519 key of the person's NATS
// credential. It travels in the HeaderSignature header of the request whose
// body it covers. The service that applies the request verifies it against
// the roster (key, role, freshness), refuses a replayed nonce, and audits
// the person's name before it changes anything.

// HeaderSignature carries a Signature (JSON) on an admin request.
const HeaderSignature = kwadmin.HeaderSignature

// MaxSkew is how far a signed request's time may be from the verifier's.
const MaxSkew = 2 * time.Minute

// Signature is a person's signature over one admin request.
type Signature struct {
	Op     string    `json:"op"`
	Digest string    `json:"digest"` // hex SHA-256 of the request body
	Person string    `json:"person"`
	Key    string    `json:"key"` // the signer's public user nkey
	Nonce  string    `json:"nonce"`
	Time   time.Time `json:"time"`
	Sig    string    `json:"sig"` // base64url Ed25519 over signedBytes
}

// signedBytes is what the signature covers: every field but Sig, in a fixed
// order, each length-prefixed so no two requests share the bytes.
func (s *Signature) signedBytes() []byte {
	var b []byte
	for _, f := range []string{"sovkeys-admin-request-v1", s.Op, s.Digest, s.Person, s.Key, s.Nonce, s.Time.UTC().Format(time.RFC3339Nano)} {
		b = fmt.Appendf(b, "%d:%s\n", len(f), f)
	}
	return b
}

// Digest is the hex SHA-256 of a request body.
func Digest(body []byte) string {
	d := sha256.Sum256(body)
	return hex.EncodeToString(d[:])
}

// Signer signs admin requests as one person.
type Signer struct {
	Person string
	kp     nkeys.KeyPair
	now    func() time.Time
}

// NewSigner signs as person with key pair kp.
func NewSigner(person string, kp nkeys.KeyPair, now func() time.Time) *Signer {
	if now == nil {
		now = time.Now
	}
	return &Signer{Person: person, kp: kp, now: now}
}

// SignerFromCreds reads a person's NATS credential file: its user JWT names
// the person (natsauth.PersonUser), its seed signs.
func SignerFromCreds(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: credential: %v", ErrRoster, err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return nil, fmt.Errorf("%w: credential %s: %v", ErrRoster, path, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("%w: credential %s: %v", ErrRoster, path, err)
	}
	kp, err := jwt.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: credential %s: %v", ErrRoster, path, err)
	}
	pub, _ := kp.PublicKey()
	if pub != uc.Subject {
		return nil, fmt.Errorf("%w: credential %s: seed and JWT disagree", ErrRoster, path)
	}
	name, ok := PersonOfUser(uc.Name)
	if !ok {
		return nil, shared.NewError(shared.CodeAccessDenied,
			"credential %s belongs to %q, not to a person: admin actions need a personal credential (sovkeys operator add)", path, uc.Name)
	}
	return NewSigner(name, kp, nil), nil
}

// PersonOfUser returns the person whose NATS user name is user.
func PersonOfUser(user string) (string, bool) {
	name := user[min(len(user), len(shared.PersonUserPrefix)):]
	return name, natsauth.PersonUser(name) == user && shared.ValidPersonName(name)
}

// Sign signs a request for op whose body is body.
func (s *Signer) Sign(op string, body []byte) (*Signature, error) {
	pub, err := s.kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	sig := &Signature{Op: op, Digest: Digest(body), Person: s.Person, Key: pub, Nonce: rand.Text(), Time: s.now().UTC()}
	raw, err := s.kp.Sign(sig.signedBytes())
	if err != nil {
		return nil, fmt.Errorf("%w: sign: %v", ErrRoster, err)
	}
	sig.Sig = base64.RawURLEncoding.EncodeToString(raw)
	return sig, nil
}

// SignRequest signs op and body and renders the signature for
// HeaderSignature (kwadmin.RequestSigner).
func (s *Signer) SignRequest(op string, body []byte) (string, error) {
	sig, err := s.Sign(op, body)
	if err != nil {
		return "", err
	}
	return sig.Header(), nil
}

var _ kwadmin.RequestSigner = (*Signer)(nil)

// Header renders the signature for HeaderSignature.
func (s *Signature) Header() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ParseSignature reads a HeaderSignature value.
func ParseSignature(h string) (*Signature, error) {
	if h == "" {
		return nil, shared.NewError(shared.CodeAccessDenied, "admin request is not signed: admin actions need a person's signature (a personal credential: sovkeys operator add)")
	}
	if len(h) > 4096 {
		return nil, shared.NewError(shared.CodeValidation, "admin signature too large")
	}
	var s Signature
	dec := json.NewDecoder(strings.NewReader(h))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, shared.NewError(shared.CodeValidation, "admin signature malformed: %v", err)
	}
	return &s, nil
}

// verifySig checks s's Ed25519 signature with the key it names.
func (s *Signature) verifySig() error {
	raw, err := base64.RawURLEncoding.DecodeString(s.Sig)
	if err != nil {
		return shared.NewError(shared.CodeAccessDenied, "admin signature of %s is not base64url", s.Person)
	}
	pk, err := nkeys.FromPublicKey(s.Key)
	if err != nil {
		return shared.NewError(shared.CodeAccessDenied, "admin signature names no user key")
	}
	if err := pk.Verify(s.signedBytes(), raw); err != nil {
		return shared.NewError(shared.CodeAccessDenied, "admin signature of %s does not verify", s.Person)
	}
	return nil
}

// Verifier checks signed admin requests against the roster and records
// their nonces (KV sovkeys_admin: a nonce is used once).
type Verifier struct {
	Roster *Roster
	Admin  jetstream.KeyValue
	Now    func() time.Time
}

// Verify checks that sig signs op with body, by a person on the roster
// whose key it is and who holds role, within MaxSkew of now. It does not
// use the nonce (Consume does, once the request is accepted).
func (v *Verifier) Verify(ctx context.Context, op string, body []byte, sig *Signature, role natsauth.Role) (*Person, error) {
	now := v.Now()
	switch {
	case sig.Op != op:
		return nil, shared.NewError(shared.CodeAccessDenied, "admin signature is for %q, not %q", sig.Op, op)
	case sig.Digest != Digest(body):
		return nil, shared.NewError(shared.CodeAccessDenied, "admin signature does not cover this request's parameters")
	case sig.Nonce == "" || len(sig.Nonce) > 64:
		return nil, shared.NewError(shared.CodeValidation, "admin signature without a nonce")
	case sig.Time.Before(now.Add(-MaxSkew)) || sig.Time.After(now.Add(MaxSkew)):
		return nil, shared.NewError(shared.CodeAccessDenied, "admin request signed at %s is stale (now %s, ±%s allowed)",
			sig.Time.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), MaxSkew)
	}
	if err := sig.verifySig(); err != nil {
		return nil, err
	}
	p, err := v.Roster.Get(ctx, sig.Person)
	if err != nil {
		return nil, err
	}
	if p.PublicKey != sig.Key {
		return nil, shared.NewError(shared.CodeAccessDenied, "admin request signed by a key that is not %s's", sig.Person)
	}
	if role != "" && !p.Has(role) {
		return nil, shared.NewError(shared.CodeAccessDenied, "%s (roles %s) may not %s: it needs the %s role", p.Name, p.RoleNames(), op, role)
	}
	return p, nil
}

// Consume records sig's nonce as used: a second request with it is a
// replay and refused (cluster-wide: a KV create, not process memory).
func (v *Verifier) Consume(ctx context.Context, sig *Signature) error {
	d := sha256.Sum256([]byte(sig.Person + "\x00" + sig.Nonce))
	_, err := v.Admin.Create(ctx, "nonce."+hex.EncodeToString(d[:16]), []byte(sig.Time.UTC().Format(time.RFC3339Nano)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return shared.NewError(shared.CodeAccessDenied, "admin request of %s replayed (nonce already used)", sig.Person)
	}
	if err != nil {
		return fmt.Errorf("%w: nonce: %v", ErrRoster, err)
	}
	return nil
}
