package vs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Request signatures (issue 20, item 3; 2026-12-07): an instance proves it
// holds the key of its certificate to authn itself, not only to the TLS
// terminator. HTTP Message Signatures (RFC 9421) over "@method", "@path"
// and Content-Digest (RFC 9530, sha-256 of the body), with the created
// time and a nonce as signature parameters; label "sk". Algorithms by key
// type: ecdsa-p256-sha256 (r||s, 64 bytes, RFC 9421 §3.3.4) and ed25519.
// A signature is good for SignatureMaxAge around authn's clock and once:
// the nonce is remembered that long (NonceCache).

// Header names.
const (
	HeaderContentDigest  = "Content-Digest"
	HeaderSignatureInput = "Signature-Input"
	HeaderSignature      = "Signature"
)

// SignatureLabel is the label of the one signature sovkeys reads.
const SignatureLabel = "sk"

// SignatureMaxAge bounds |now - created| of a request signature.
const SignatureMaxAge = 5 * time.Minute

// sigComponents are the covered components, in order.
var sigComponents = []string{"@method", "@path", "content-digest"}

// ErrSignature is wrapped by every refusal of a request signature.
var ErrSignature = errors.New("vs: request signature refused")

// ContentDigest is the RFC 9530 Content-Digest value of body (sha-256).
func ContentDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
}

// SigParams are the signature parameters of a signed request.
type SigParams struct {
	Created time.Time
	Nonce   string
	Alg     string
}

func (p SigParams) serialize() string {
	var b strings.Builder
	b.WriteString("(")
	for i, c := range sigComponents {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(strconv.Quote(c))
	}
	b.WriteString(")")
	fmt.Fprintf(&b, ";created=%d;nonce=%s;alg=%s", p.Created.Unix(), strconv.Quote(p.Nonce), strconv.Quote(p.Alg))
	return b.String()
}

// signatureBase is the RFC 9421 §2.5 signature base.
func signatureBase(method, path, digest, params string) []byte {
	return []byte(fmt.Sprintf("\"@method\": %s\n\"@path\": %s\n\"content-digest\": %s\n\"@signature-params\": %s",
		strings.ToUpper(method), path, digest, params))
}

func algOf(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().Name == "P-256" {
			return "ecdsa-p256-sha256", nil
		}
	case ed25519.PublicKey:
		return "ed25519", nil
	}
	return "", fmt.Errorf("%w: key type %T is not ECDSA P-256 or Ed25519", ErrSignature, pub)
}

// SignRequest sets Content-Digest, Signature-Input and Signature on h for
// a request of method to path with body, signed by key at now.
func SignRequest(h http.Header, method, path string, body []byte, key crypto.Signer, now time.Time) error {
	alg, err := algOf(key.Public())
	if err != nil {
		return err
	}
	nb := make([]byte, 16)
	if _, err := rand.Read(nb); err != nil {
		return err
	}
	p := SigParams{Created: now, Nonce: hex.EncodeToString(nb), Alg: alg}
	params := p.serialize()
	digest := ContentDigest(body)
	base := signatureBase(method, path, digest, params)
	var sig []byte
	switch alg {
	case "ed25519":
		if sig, err = key.Sign(rand.Reader, base, crypto.Hash(0)); err != nil {
			return err
		}
	default:
		sum := sha256.Sum256(base)
		der, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
		if err != nil {
			return err
		}
		if sig, err = ecdsaRaw(der); err != nil {
			return err
		}
	}
	h.Set(HeaderContentDigest, digest)
	h.Set(HeaderSignatureInput, SignatureLabel+"="+params)
	h.Set(HeaderSignature, SignatureLabel+"=:"+base64.StdEncoding.EncodeToString(sig)+":")
	return nil
}

// SignedHeaders are the three headers of a signed request as received.
type SignedHeaders struct {
	ContentDigest, SignatureInput, Signature string
}

// Present reports whether the request carries a signature at all.
func (s SignedHeaders) Present() bool { return s.SignatureInput != "" || s.Signature != "" }

// VerifyRequest checks the signature of a request (method, path, body,
// headers) with the instance's public key pub at now: the covered
// components must be exactly @method, @path and content-digest, the digest
// must be the body's, created within SignatureMaxAge of now. It returns the
// parameters (the caller refuses a nonce seen before).
func VerifyRequest(method, path string, body []byte, s SignedHeaders, pub crypto.PublicKey, now time.Time) (SigParams, error) {
	var p SigParams
	alg, err := algOf(pub)
	if err != nil {
		return p, err
	}
	if s.ContentDigest != ContentDigest(body) {
		return p, fmt.Errorf("%w: Content-Digest is not the body's sha-256", ErrSignature)
	}
	params, ok := strings.CutPrefix(s.SignatureInput, SignatureLabel+"=")
	if !ok {
		return p, fmt.Errorf("%w: no Signature-Input labelled %q", ErrSignature, SignatureLabel)
	}
	if p, err = parseParams(params); err != nil {
		return p, err
	}
	if p.Alg != alg {
		return p, fmt.Errorf("%w: alg %q does not match the certificate's key (%s)", ErrSignature, p.Alg, alg)
	}
	// The base is rebuilt from our own serialization: parameters in another
	// order or with extras do not verify.
	if p.serialize() != params {
		return p, fmt.Errorf("%w: Signature-Input must be exactly %s", ErrSignature, p.serialize())
	}
	if d := now.Sub(p.Created); d > SignatureMaxAge || d < -SignatureMaxAge {
		return p, fmt.Errorf("%w: created %s is more than %s from now", ErrSignature, p.Created.UTC().Format(time.RFC3339), SignatureMaxAge)
	}
	enc, ok := strings.CutPrefix(s.Signature, SignatureLabel+"=:")
	if !ok || !strings.HasSuffix(enc, ":") {
		return p, fmt.Errorf("%w: no Signature labelled %q", ErrSignature, SignatureLabel)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(enc, ":"))
	if err != nil {
		return p, fmt.Errorf("%w: signature is not base64", ErrSignature)
	}
	base := signatureBase(method, path, s.ContentDigest, params)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, base, sig)
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(base)
		ok = len(sig) == 64 && ecdsa.Verify(k, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	}
	if !ok {
		return p, fmt.Errorf("%w: signature does not verify with the certificate's key", ErrSignature)
	}
	return p, nil
}

// parseParams reads ("@method" "@path" "content-digest");created=N;nonce="..";alg="..".
func parseParams(s string) (SigParams, error) {
	var p SigParams
	want := "(\"@method\" \"@path\" \"content-digest\")"
	rest, ok := strings.CutPrefix(s, want)
	if !ok {
		return p, fmt.Errorf("%w: the signature must cover exactly %s", ErrSignature, want)
	}
	for _, kv := range strings.Split(strings.TrimPrefix(rest, ";"), ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "created":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return p, fmt.Errorf("%w: created %q", ErrSignature, v)
			}
			p.Created = time.Unix(n, 0)
		case "nonce", "alg":
			u, err := strconv.Unquote(v)
			if err != nil || u == "" || len(u) > 64 {
				return p, fmt.Errorf("%w: %s %q", ErrSignature, k, v)
			}
			if k == "nonce" {
				p.Nonce = u
			} else {
				p.Alg = u
			}
		default:
			return p, fmt.Errorf("%w: unexpected signature parameter %q", ErrSignature, k)
		}
	}
	if p.Created.IsZero() || p.Nonce == "" || p.Alg == "" {
		return p, fmt.Errorf("%w: created, nonce and alg are required", ErrSignature)
	}
	return p, nil
}

// ecdsaRaw converts an ASN.1 ECDSA P-256 signature to r||s.
func ecdsaRaw(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

// NonceCache remembers the nonces of accepted signatures for twice
// SignatureMaxAge (a created time may be that far from now on either
// side), per key.
type NonceCache struct {
	mu   sync.Mutex
	seen map[string]time.Time
	max  int
}

// NewNonceCache keeps at most max nonces (then it refuses new ones: a
// flood cannot evict a nonce to replay it).
func NewNonceCache(max int) *NonceCache { return &NonceCache{seen: map[string]time.Time{}, max: max} }

// Use records nonce of key (a certificate fingerprint) at now; false when
// it was seen within the window, or the cache is full.
func (c *NonceCache) Use(key, nonce string, now time.Time) bool {
	k := key + "\x00" + nonce
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.seen[k]; ok && now.Before(until) {
		return false
	}
	if len(c.seen) >= c.max {
		for k, until := range c.seen {
			if !now.Before(until) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return false
		}
	}
	c.seen[k] = now.Add(2 * SignatureMaxAge)
	return true
}
