package kwadmin

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Signed answers (docs/security.md, "Trust boundaries"). A keyworker signs
// the answers of the endpoints that hand out or take secrets and keys
// (SignedAnswer) with its pool's HSM signing key (ECDSA P-384, DER, over
// SHA-256), over the pool, the endpoint, the caller's fresh nonce and the
// answer's bytes; the signature travels in HeaderAnswerSignature. The pool's
// public signing key is pinned write-once in KV sovkeys_pins
// (<pool>.signing_key, created when the pool's hierarchy is): a caller that
// puts AnswerKeys in its context (WithAnswerKeys) verifies every signed
// answer against the pinned key before it uses it, so a process holding a
// keyworker credential but not the HSM cannot answer in the pool's name.
//
// Seal requests are boxed: their secret is encrypted to the pool's box key
// (an X25519 key whose private half only the pool's keyworkers hold, sealed
// by the HSM; its public half pinned in sovkeys_pins as <pool>.box_key,
// signed by the pool's signing key), the same box as the answers use.

// HeaderAnswerNonce carries the caller's fresh nonce; HeaderAnswerSignature
// the keyworker's signature of the answer (base64 DER).
const (
	HeaderAnswerNonce     = "Sovkeys-Answer-Nonce"
	HeaderAnswerSignature = "Sovkeys-Answer-Sig"
)

// PinBoxKey is the pins bucket key of a pool's box key (BoxKey, JSON).
func PinBoxKey(pool string) string { return pool + ".box_key" }

// ErrAnswer is wrapped by every refusal of an answer's signature.
var ErrAnswer = errors.New("kwadmin: keyworker answer refused")

// SignedAnswer reports whether endpoint's answers are signed.
func SignedAnswer(endpoint string) bool {
	switch endpoint {
	case EndpointSeal, EndpointUnseal, EndpointIssueCert, EndpointKeyCreate, EndpointKeyInfo, EndpointKeyList,
		EndpointKeyVersion, EndpointKeyDestroy:
		return true
	}
	return false
}

// AnswerDigest is the SHA-256 an answer signature covers.
func AnswerDigest(pool, endpoint, nonce string, body []byte) []byte {
	h := sha256.New()
	var n [8]byte
	for _, f := range []string{"sovkeys-kwadmin-answer-v1", pool, endpoint, nonce} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	d := sha256.Sum256(body)
	h.Write(d[:])
	return h.Sum(nil)
}

// BoxKey is a pool's published box key.
type BoxKey struct {
	Public []byte `json:"public"` // X25519
	Sig    []byte `json:"sig"`    // by the pool's signing key over BoxKeyDigest
	// Sealed is the private key sealed by the pool's HSM (only its
	// keyworkers can open it).
	Sealed []byte `json:"sealed"`
}

// BoxKeyDigest is what a box key's signature covers.
func BoxKeyDigest(pool string, pub []byte) []byte {
	return AnswerDigest(pool, "box_key", "", pub)
}

// AnswerKeys reads and keeps (pins) the pools' signing and box keys from
// KV sovkeys_pins.
type AnswerKeys struct {
	KV jetstream.KeyValue

	mu      sync.Mutex
	signing map[string]*ecdsa.PublicKey
	box     map[string]*ecdh.PublicKey
}

type answerKeysKey struct{}

// WithAnswerKeys makes Call verify signed answers with keys.
func WithAnswerKeys(ctx context.Context, keys *AnswerKeys) context.Context {
	return context.WithValue(ctx, answerKeysKey{}, keys)
}

func answerKeysOf(ctx context.Context) *AnswerKeys {
	k, _ := ctx.Value(answerKeysKey{}).(*AnswerKeys)
	return k
}

// SigningKey returns pool's pinned signing key.
func (a *AnswerKeys) SigningKey(ctx context.Context, pool string) (*ecdsa.PublicKey, error) {
	a.mu.Lock()
	k := a.signing[pool]
	a.mu.Unlock()
	if k != nil {
		return k, nil
	}
	if a.KV == nil {
		// Fail closed: an answer that cannot be verified is not used.
		return nil, shared.NewError(shared.CodeDependencyTimeout,
			"the pinned keys (KV %s) are not readable: run `sovkeys init`, and use a credential of this version", shared.BucketPins)
	}
	e, err := a.KV.Get(ctx, shared.PKISigningKey(pool))
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the signing key of pool %q is not pinned yet: %v", pool, err)
	}
	pub, err := x509.ParsePKIXPublicKey(e.Value())
	ec, ok := pub.(*ecdsa.PublicKey)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: the pinned signing key of pool %q is not an ECDSA key", ErrAnswer, pool)
	}
	a.mu.Lock()
	if a.signing == nil {
		a.signing = map[string]*ecdsa.PublicKey{}
	}
	a.signing[pool] = ec
	a.mu.Unlock()
	return ec, nil
}

// BoxKey returns pool's box key, verified against its signing key.
func (a *AnswerKeys) BoxKey(ctx context.Context, pool string) (*ecdh.PublicKey, error) {
	a.mu.Lock()
	k := a.box[pool]
	a.mu.Unlock()
	if k != nil {
		return k, nil
	}
	signing, err := a.SigningKey(ctx, pool)
	if err != nil {
		return nil, err
	}
	e, err := a.KV.Get(ctx, PinBoxKey(pool))
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the box key of pool %q is not published yet (keyworkers of this version publish it)", pool)
	}
	var bk BoxKey
	if err := json.Unmarshal(e.Value(), &bk); err != nil {
		return nil, fmt.Errorf("%w: box key of pool %q: %v", ErrAnswer, pool, err)
	}
	if !ecdsa.VerifyASN1(signing, BoxKeyDigest(pool, bk.Public), bk.Sig) {
		return nil, fmt.Errorf("%w: the box key of pool %q is not signed by its signing key", ErrAnswer, pool)
	}
	pub, err := ecdh.X25519().NewPublicKey(bk.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: box key of pool %q: %v", ErrAnswer, pool, err)
	}
	a.mu.Lock()
	if a.box == nil {
		a.box = map[string]*ecdh.PublicKey{}
	}
	a.box[pool] = pub
	a.mu.Unlock()
	return pub, nil
}

// newAnswerNonce is a caller's fresh nonce.
func newAnswerNonce() string { return rand.Text() }

// verifyAnswer checks an answer's signature header.
func (a *AnswerKeys) verifyAnswer(ctx context.Context, pool, endpoint, nonce string, body []byte, header string) error {
	if header == "" {
		return fmt.Errorf("%w: the %s answer of pool %q is not signed", ErrAnswer, endpoint, pool)
	}
	sig, err := base64.StdEncoding.DecodeString(header)
	if err != nil {
		return fmt.Errorf("%w: the %s answer's signature is malformed", ErrAnswer, endpoint)
	}
	key, err := a.SigningKey(ctx, pool)
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(key, AnswerDigest(pool, endpoint, nonce, body), sig) {
		return fmt.Errorf("%w: the %s answer is not signed by pool %q's HSM key", ErrAnswer, endpoint, pool)
	}
	return nil
}

// boxContext is the endpoint name a boxed seal request is bound to.
const boxContext = EndpointSeal + ".request"

// boxRequest replaces req.Data by its encryption to pool's box key
// (pinned, verified); the caller's bytes are left as they are.
func boxRequest(ctx context.Context, pool string, req *SealRequest) error {
	keys := answerKeysOf(ctx)
	if keys == nil {
		return fmt.Errorf("%w: a seal request needs the pool's pinned keys (WithAnswerKeys): its secret is never sent in clear", ErrAnswer)
	}
	pub, err := keys.BoxKey(ctx, pool)
	if err != nil {
		return err
	}
	box, err := SealReply(pub.Bytes(), boxContext, req.RequestID, req.Data)
	if err != nil {
		return err
	}
	req.Data, req.DataBox = nil, box
	return nil
}

// OpenRequest decrypts a boxed seal request with the pool's box key.
func OpenRequest(key *ecdh.PrivateKey, req *SealRequest) ([]byte, error) {
	return OpenReply(key, boxContext, req.RequestID, req.DataBox)
}
