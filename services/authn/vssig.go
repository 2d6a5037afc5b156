package authn

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// nonceCacheSize bounds the request-signature nonces one authn remembers
// (SignatureMaxAge x 2 of traffic at ~3,000 signed calls/s).
const nonceCacheSize = 1 << 20

// checkRequestSignature verifies the instance's request signature
// (vs.VerifyRequest, RFC 9421) with the key of the certificate whose chain
// was verified: the caller holds that key now, not only a copy of the
// public certificate the gateway forwarded. A signature that is present
// must verify and must not be replayed; an unsigned request passes only
// for a tenant that does not require signatures (tenants made before
// 2026-12-07 keep working until an operator turns it on).
func (s *Service) checkRequestSignature(env *shared.Envelope, leaf *x509.Certificate, tn registry.Tenant) error {
	first := func(k string) string {
		if v := env.Evidence.Header[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	h := vs.SignedHeaders{ContentDigest: first(vs.HeaderContentDigest), SignatureInput: first(vs.HeaderSignatureInput), Signature: first(vs.HeaderSignature)}
	if !h.Present() {
		if tn.RequireRequestSignatures {
			return shared.NewError(shared.CodeAuthenticationFailed, "tenant %q requires requests signed with the instance key (RFC 9421, docs/volume-secrets.md)", tn.ID)
		}
		return nil
	}
	now := s.now()
	p, err := vs.VerifyRequest(env.Evidence.Method, env.Evidence.Path, env.Body, h, leaf.PublicKey, now)
	if err != nil {
		return shared.NewError(shared.CodeAuthenticationFailed, "%v", err)
	}
	fp := sha256.Sum256(leaf.Raw)
	if !s.nonces.Use(hex.EncodeToString(fp[:]), p.Nonce, now) {
		return shared.NewError(shared.CodeAuthenticationFailed, "request signature replayed (nonce seen within %s)", 2*vs.SignatureMaxAge)
	}
	return nil
}
