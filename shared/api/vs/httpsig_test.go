package vs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// RFC 9530 Appendix D.1: the sha-256 Content-Digest of {"hello": "world"}.
func TestContentDigestRFC9530(t *testing.T) {
	const want = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
	if got := ContentDigest([]byte(`{"hello": "world"}`)); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func signedFor(t *testing.T, key crypto.Signer, method, path string, body []byte, at time.Time) SignedHeaders {
	t.Helper()
	h := http.Header{}
	if err := SignRequest(h, method, path, body, key, at); err != nil {
		t.Fatal(err)
	}
	return SignedHeaders{ContentDigest: h.Get(HeaderContentDigest), SignatureInput: h.Get(HeaderSignatureInput), Signature: h.Get(HeaderSignature)}
}

// A request signature binds method, path, body and time to the instance
// key; every change, another key, a stale time or a replay is refused.
func TestRequestSignature(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	const path = "/v1/encryption/i-1/decrypt-secret"
	body := []byte(`{"volume_uuid":"v-1"}`)
	for name, key := range map[string]crypto.Signer{"ecdsa-p256": ec, "ed25519": ed} {
		t.Run(name, func(t *testing.T) {
			good := signedFor(t, key, "POST", path, body, now)
			p, err := VerifyRequest("POST", path, body, good, key.Public(), now.Add(time.Minute))
			if err != nil || p.Nonce == "" || !p.Created.Equal(now) {
				t.Fatalf("good signature: %+v %v", p, err)
			}
			if !strings.Contains(good.SignatureInput, `("@method" "@path" "content-digest");created=`) {
				t.Fatalf("Signature-Input %s", good.SignatureInput)
			}
			bad := func(s SignedHeaders) SignedHeaders { return s }
			for what, tc := range map[string]struct {
				method, path string
				body         []byte
				s            SignedHeaders
				pub          crypto.PublicKey
				at           time.Time
			}{
				"other body":        {"POST", path, []byte(`{"volume_uuid":"v-2"}`), good, key.Public(), now},
				"other body+digest": {"POST", path, []byte(`{"volume_uuid":"v-2"}`), bad(SignedHeaders{ContentDigest: ContentDigest([]byte(`{"volume_uuid":"v-2"}`)), SignatureInput: good.SignatureInput, Signature: good.Signature}), key.Public(), now},
				"other path":        {"POST", "/v1/encryption/i-2/decrypt-secret", body, good, key.Public(), now},
				"other method":      {"PUT", path, body, good, key.Public(), now},
				"other key":         {"POST", path, body, good, other.Public(), now},
				"stale":             {"POST", path, body, good, key.Public(), now.Add(SignatureMaxAge + time.Second)},
				"from the future":   {"POST", path, body, good, key.Public(), now.Add(-SignatureMaxAge - time.Second)},
				"unsigned":          {"POST", path, body, SignedHeaders{ContentDigest: good.ContentDigest}, key.Public(), now},
				"fewer components":  {"POST", path, body, SignedHeaders{ContentDigest: good.ContentDigest, SignatureInput: strings.Replace(good.SignatureInput, ` "content-digest"`, "", 1), Signature: good.Signature}, key.Public(), now},
				"extra parameter":   {"POST", path, body, SignedHeaders{ContentDigest: good.ContentDigest, SignatureInput: good.SignatureInput + `;keyid="x"`, Signature: good.Signature}, key.Public(), now},
				"other label":       {"POST", path, body, SignedHeaders{ContentDigest: good.ContentDigest, SignatureInput: "sig1" + strings.TrimPrefix(good.SignatureInput, "sk"), Signature: "sig1" + strings.TrimPrefix(good.Signature, "sk")}, key.Public(), now},
			} {
				if _, err := VerifyRequest(tc.method, tc.path, tc.body, tc.s, tc.pub, tc.at); !errors.Is(err, ErrSignature) {
					t.Errorf("%s: err = %v", what, err)
				}
			}
		})
	}
	// Replays: a nonce is good once per key within the window.
	c := NewNonceCache(2)
	if !c.Use("k", "n1", now) || c.Use("k", "n1", now.Add(time.Minute)) {
		t.Fatal("replayed nonce accepted")
	}
	if !c.Use("k2", "n1", now) {
		t.Fatal("another key's nonce refused")
	}
	if c.Use("k", "n3", now) {
		t.Fatal("a full cache accepted a nonce (a flood could evict one to replay)")
	}
	if !c.Use("k", "n1", now.Add(2*SignatureMaxAge+time.Second)) {
		t.Fatal("nonce refused after the window")
	}
}

// The cost authn adds per volume-secret call, against the floor of one
// bare ECDSA P-256 verification (docs/BENCHMARKS.md).
func BenchmarkVerifyRequest(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	body := []byte(`{"encrypted_secret":"` + strings.Repeat("A", 200) + `","rsa_wrapping_key":"` + strings.Repeat("B", 550) + `","volume_uuid":"v-1"}`)
	const path = "/v1/encryption/i-1/decrypt-secret"
	now := time.Now()
	h := http.Header{}
	if err := SignRequest(h, "POST", path, body, key, now); err != nil {
		b.Fatal(err)
	}
	s := SignedHeaders{ContentDigest: h.Get(HeaderContentDigest), SignatureInput: h.Get(HeaderSignatureInput), Signature: h.Get(HeaderSignature)}
	b.Run("floor-ecdsa-verify", func(b *testing.B) {
		sum := make([]byte, 32)
		r, sg, _ := ecdsa.Sign(rand.Reader, key, sum)
		for b.Loop() {
			ecdsa.Verify(&key.PublicKey, sum, r, sg)
		}
	})
	b.Run("verify-request", func(b *testing.B) {
		for b.Loop() {
			if _, err := VerifyRequest("POST", path, body, s, &key.PublicKey, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
