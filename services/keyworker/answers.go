package keyworker

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Signed answers and boxed requests (shared/api/kwadmin/answers.go): the
// pool's signing key is pinned write-once in KV sovkeys_pins when the
// hierarchy is published; the answers of kwadmin.SignedAnswer endpoints
// carry the HSM's signature; seal requests arrive encrypted to the pool's
// box key, whose private half is sealed by the HSM and opened by every
// keyworker of the pool at start.

// boxKeyAAD binds the sealed box key to its pool.
func boxKeyAAD(pool string) []byte { return []byte("sovkeys box key v1\x00" + pool) }

// pinKeys pins the pool's signing key and makes (once) or opens its box
// key. An earlier build published the signing key in KV sovkeys_pki with a
// plain put: that value must be this HSM's key, or the keyworker refuses to
// start (someone replaced it, and instances may have pinned theirs).
func (s *Service) pinKeys(ctx context.Context, pki jetstream.KeyValue, signing []byte) error {
	pins, err := mesh.BindPins(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if e, err := pki.Get(ctx, shared.PKISigningKey(s.cfg.Pool)); err == nil {
		if !bytes.Equal(e.Value(), signing) {
			return fmt.Errorf("keyworker: the published signing key of pool %q is not this HSM's signing key: refusing to start (docs/operations.md, \"Signed answers\")", s.cfg.Pool)
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("keyworker: read signing key: %w", err)
	} else if _, err := pki.Create(ctx, shared.PKISigningKey(s.cfg.Pool), signing); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("keyworker: publish signing key: %w", err)
	}
	if err := mesh.Pin(ctx, pins, shared.PKISigningKey(s.cfg.Pool), signing); err != nil {
		return fmt.Errorf("keyworker: pool %q: the pinned signing key is not this HSM's: %w", s.cfg.Pool, err)
	}
	return s.ensureBoxKey(ctx, pins)
}

// ensureBoxKey opens the pool's box key, making and pinning it first if
// no keyworker of the pool has.
func (s *Service) ensureBoxKey(ctx context.Context, pins jetstream.KeyValue) error {
	e, err := pins.Get(ctx, kwadmin.PinBoxKey(s.cfg.Pool))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		if err := s.makeBoxKey(ctx, pins); err != nil {
			return err
		}
		e, err = pins.Get(ctx, kwadmin.PinBoxKey(s.cfg.Pool))
	}
	if err != nil {
		return fmt.Errorf("keyworker: box key: %w", err)
	}
	var bk kwadmin.BoxKey
	if err := json.Unmarshal(e.Value(), &bk); err != nil {
		return fmt.Errorf("keyworker: box key: %w", err)
	}
	raw, err := s.hsm.Unseal(ctx, bk.Sealed, boxKeyAAD(s.cfg.Pool))
	if err != nil {
		return fmt.Errorf("keyworker: the pinned box key of pool %q does not open with this HSM: %w", s.cfg.Pool, err)
	}
	defer clear(raw)
	key, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil || !bytes.Equal(key.PublicKey().Bytes(), bk.Public) {
		return fmt.Errorf("keyworker: the pinned box key of pool %q is inconsistent", s.cfg.Pool)
	}
	s.boxKey = key
	return nil
}

func (s *Service) makeBoxKey(ctx context.Context, pins jetstream.KeyValue) error {
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	raw := key.Bytes()
	defer clear(raw)
	sealed, err := s.hsm.Seal(ctx, raw, boxKeyAAD(s.cfg.Pool))
	if err != nil {
		return err
	}
	sig, err := s.signDigest(ctx, kwadmin.BoxKeyDigest(s.cfg.Pool, key.PublicKey().Bytes()))
	if err != nil {
		return err
	}
	b, _ := json.Marshal(kwadmin.BoxKey{Public: key.PublicKey().Bytes(), Sig: sig, Sealed: sealed})
	if _, err := pins.Create(ctx, kwadmin.PinBoxKey(s.cfg.Pool), b); err != nil {
		if _, gerr := pins.Get(ctx, kwadmin.PinBoxKey(s.cfg.Pool)); gerr == nil {
			return nil // another keyworker of the pool was first
		}
		return fmt.Errorf("keyworker: pin box key: %w", err)
	}
	s.log.Info("box key of the pool made and pinned")
	return nil
}

// signDigest signs a SHA-256 digest with the pool's HSM signing key.
func (s *Service) signDigest(ctx context.Context, digest []byte) ([]byte, error) {
	signer, err := s.hsm.Signer(ctx, hsm.SigningKeyLabel)
	if err != nil {
		return nil, err
	}
	return signer.Sign(rand.Reader, digest, crypto.SHA256)
}

// respond answers req with resp, signed when endpoint's answers are.
func (s *Service) respond(ctx context.Context, req micro.Request, endpoint string, resp any) error {
	body, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	if !kwadmin.SignedAnswer(endpoint) {
		return req.Respond(body)
	}
	sig, err := s.signDigest(ctx, kwadmin.AnswerDigest(s.cfg.Pool, endpoint, req.Headers().Get(kwadmin.HeaderAnswerNonce), body))
	if err != nil {
		return err
	}
	return req.Respond(body, micro.WithHeaders(micro.Headers{kwadmin.HeaderAnswerSignature: {base64.StdEncoding.EncodeToString(sig)}}))
}
