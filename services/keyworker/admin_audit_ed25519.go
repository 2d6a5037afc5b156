package keyworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// AuditEd25519Label is the HSM label of the Ed25519 audit key pair: with
// --audit-ed25519, where the token has CKM_EDDSA, checkpoints carry its signature beside the
// ECDSA one (same key name, C2SP signed-note type 0x01), so witnesses that
// take only Ed25519 log keys can cosign (2026-12-07). Its public key is
// published write-once in KV sovkeys_pki under "<pool>.audit_key_ed25519"
// (raw 32 bytes); `auditlog.Ed25519VerifierKey` makes the note verifier key.
const AuditEd25519Label = "sovkeys-audit-ed25519-v1"

// AuditEd25519PKIKey is the PKI key of a pool's Ed25519 audit key.
func AuditEd25519PKIKey(pool string) string { return auditlog.PKIKey(pool) + "_ed25519" }

// auditEd25519Signer signs text with the pool's Ed25519 audit key,
// creating it on first use; nil (and no error) unless --audit-ed25519 is
// set and the HSM has CKM_EDDSA.
func (s *Service) auditEd25519Signer(ctx context.Context, deployment string, text []byte) (note.Signer, error) {
	if !s.cfg.AuditEd25519 || !s.hsm.SupportsEdDSA() {
		return nil, nil
	}
	pub, err := s.hsm.Ed25519PublicKey(ctx, AuditEd25519Label)
	for errors.Is(err, hsm.ErrHierarchyMissing) {
		if err = s.createAuditEd25519(ctx); err != nil {
			return nil, err
		}
		pub, err = s.hsm.Ed25519PublicKey(ctx, AuditEd25519Label)
	}
	if err != nil {
		return nil, err
	}
	sig, err := s.hsm.SignEd25519(ctx, AuditEd25519Label, text)
	if err != nil {
		return nil, err
	}
	name := auditlog.KeyName(deployment)
	return &auditlog.PresignedSigner{KeyName: name, Hash: auditlog.Ed25519KeyHash(name, pub), Text: text, Sig: sig}, nil
}

// createAuditEd25519 makes the pair under the pool's audit key lease (no
// two pairs with one label) and publishes its public key; it returns nil
// also when another keyworker holds the lease (the caller looks again).
func (s *Service) createAuditEd25519(ctx context.Context) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return err
	}
	release, err := s.auditKeyLease(ctx, kv)
	if err != nil {
		return err
	}
	if release == nil {
		select {
		case <-ctx.Done():
			return shared.NewError(shared.CodeDependencyTimeout, "the ed25519 audit key of pool %q is being created; retry", s.cfg.Pool)
		case <-time.After(100 * time.Millisecond):
		}
		return nil
	}
	defer release()
	if err := s.hsm.EnsureEd25519(ctx, AuditEd25519Label); err != nil {
		return err
	}
	pub, err := s.hsm.Ed25519PublicKey(ctx, AuditEd25519Label)
	if err != nil {
		return err
	}
	key := AuditEd25519PKIKey(s.cfg.Pool)
	if _, err := kv.Create(ctx, key, pub); err != nil {
		e, gerr := kv.Get(ctx, key)
		if gerr != nil || !bytes.Equal(e.Value(), pub) {
			return fmt.Errorf("keyworker: publish ed25519 audit key: %w", err)
		}
	}
	s.log.Info("ed25519 audit key created", "label", AuditEd25519Label)
	return nil
}
