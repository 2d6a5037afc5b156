package keyworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// The audit key: an ECDSA P-384 pair labelled auditlog.KeyLabel in the
// pool's HSM, created on first use, that signs audit checkpoints (never
// individual records: SoftHSM signs ~1k/s per core). Its public key is
// published in KV sovkeys_pki under "<pool>.audit_key".
//
// PKCS#11 has no cross-process lock, and two pairs with one label would
// make every later use fail, so keyworkers of a pool create it under a
// lease in KV ("<pool>.audit_key_lock", taken with a KV create, stolen
// when older than auditKeyLockTTL).

const (
	maxAuditSignMessage = 64 << 10
	auditKeyLockTTL     = time.Minute
)

// AuditKeyLabel is the HSM label of the audit key pair.
const AuditKeyLabel = auditlog.KeyLabel

func (s *Service) adminAuditSign(ctx context.Context, data []byte) (any, error) {
	var req auditlog.SignRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if len(req.Message) == 0 || len(req.Message) > maxAuditSignMessage {
		return nil, shared.NewError(shared.CodeValidation, "audit sign: message must be 1..%d bytes", maxAuditSignMessage)
	}
	spki, err := s.auditKey(ctx)
	if err != nil {
		return nil, err
	}
	sig, err := s.hsm.SignSHA256(ctx, AuditKeyLabel, req.Message)
	if err != nil {
		return nil, err
	}
	return auditlog.SignResponse{Key: AuditKeyLabel, PublicKey: spki, Signature: sig}, nil
}

// adminAuditPublicKey returns the audit public key, creating the key pair
// and publishing it in KV when needed.
func (s *Service) adminAuditPublicKey(ctx context.Context, _ []byte) (any, error) {
	spki, err := s.auditKey(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.publishAuditKey(ctx, spki); err != nil {
		return nil, err
	}
	return auditlog.PublicKeyResponse{Key: AuditKeyLabel, PublicKey: spki}, nil
}

// auditKey returns the audit key's DER SubjectPublicKeyInfo, creating the
// pair first if the token has none.
func (s *Service) auditKey(ctx context.Context) ([]byte, error) {
	spki, err := s.hsm.PublicKey(ctx, AuditKeyLabel)
	if err == nil || !errors.Is(err, hsm.ErrHierarchyMissing) {
		return spki, err
	}
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return nil, err
	}
	var release func()
	for release == nil {
		if release, err = s.auditKeyLease(ctx, kv); err != nil {
			return nil, err
		}
		if release != nil {
			break
		}
		// Another keyworker is creating it: wait for the key to appear.
		select {
		case <-ctx.Done():
			return nil, shared.NewError(shared.CodeDependencyTimeout, "the audit key of pool %q is being created; retry", s.cfg.Pool)
		case <-time.After(100 * time.Millisecond):
		}
		if spki, err = s.hsm.PublicKey(ctx, AuditKeyLabel); err == nil || !errors.Is(err, hsm.ErrHierarchyMissing) {
			return spki, err
		}
	}
	defer release()
	// Another keyworker may have created it before we took the lease.
	if spki, err = s.hsm.PublicKey(ctx, AuditKeyLabel); err == nil || !errors.Is(err, hsm.ErrHierarchyMissing) {
		return spki, err
	}
	if err := s.hsm.EnsureKeyPair(ctx, AuditKeyLabel); err != nil {
		return nil, err
	}
	if spki, err = s.hsm.PublicKey(ctx, AuditKeyLabel); err != nil {
		return nil, err
	}
	s.log.Info("audit key created", "label", AuditKeyLabel, "key_sha256", auditlog.KeyID(spki))
	if err := s.publishAuditKey(ctx, spki); err != nil {
		return nil, err
	}
	return spki, nil
}

// auditKeyLease takes the pool's creation lease; release gives it back. A
// nil release and nil error mean another keyworker holds it.
func (s *Service) auditKeyLease(ctx context.Context, kv jetstream.KeyValue) (release func(), err error) {
	key := auditlog.PKIKey(s.cfg.Pool) + "_lock"
	now := s.now()
	rev, err := kv.Create(ctx, key, []byte(now.UTC().Format(time.RFC3339Nano)))
	if err == nil {
		return func() { _ = kv.Delete(context.WithoutCancel(ctx), key, jetstream.LastRevision(rev)) }, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("keyworker: audit key lease: %w", err)
	}
	if e, gerr := kv.Get(ctx, key); gerr == nil {
		if at, perr := time.Parse(time.RFC3339Nano, string(e.Value())); perr != nil || now.Sub(at) > auditKeyLockTTL {
			// A keyworker died while creating; free the lease for the retry.
			_ = kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
		}
	}
	return nil, nil
}

// publishAuditKey makes KV hold spki under <pool>.audit_key; a different
// key already published fails closed.
func (s *Service) publishAuditKey(ctx context.Context, spki []byte) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return err
	}
	key := auditlog.PKIKey(s.cfg.Pool)
	if _, err := kv.Create(ctx, key, spki); err == nil || !errors.Is(err, jetstream.ErrKeyExists) {
		if err != nil {
			return fmt.Errorf("keyworker: publish audit key: %w", err)
		}
		return nil
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("keyworker: read audit key: %w", err)
	}
	if !bytes.Equal(e.Value(), spki) {
		return fmt.Errorf("keyworker: the published audit key of pool %q (%s) is not this HSM's (%s)",
			s.cfg.Pool, auditlog.KeyID(e.Value()), auditlog.KeyID(spki))
	}
	return nil
}
