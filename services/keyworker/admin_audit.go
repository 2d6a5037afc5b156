package keyworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

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

const auditKeyLockTTL = time.Minute

// AuditKeyLabel is the HSM label of the audit key pair.
const AuditKeyLabel = auditlog.KeyLabel

// adminAuditSign signs the checkpoint of a scope's transparency log, and
// nothing else: the request names the tree (size, root) and carries a
// consistency proof from the last checkpoint this pool signed for the
// scope (state in KV shared.BucketAuditSigner, which only keyworkers may
// write). A tree that does not extend the signed one is refused, so the
// HSM never signs two diverging views of a log nor a rolled-back one.
// Arbitrary messages are refused: the signed bytes are built here.
func (s *Service) adminAuditSign(ctx context.Context, data []byte) (any, error) {
	var req auditlog.SignRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if req.Tlog == nil || len(req.Message) != 0 {
		return nil, shared.NewError(shared.CodeValidation, "audit sign: only transparency log checkpoints are signed")
	}
	r := req.Tlog
	sc := auditlog.Scope{Kind: r.Kind, ID: r.Scope}
	if err := sc.Validate(); err != nil || !auditlog.ValidDeployment(r.Deployment) || len(r.Root) != len(tlog.Hash{}) {
		return nil, shared.NewError(shared.CodeValidation, "audit sign: invalid scope, deployment or root")
	}
	var root tlog.Hash
	copy(root[:], r.Root)
	origin := sc.Origin(r.Deployment)
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketAuditSigner, "sovkeys: last audit checkpoint signed per log", s.cfg.Topology)
	if err != nil {
		return nil, err
	}
	key := auditlog.SignerStateKey(s.cfg.Pool, sc)
	spki, err := s.auditKey(ctx)
	if err != nil {
		return nil, err
	}
	// admin_audit_state.go: the token's state, or a newer one in KV this
	// HSM signed; KV behind it is restored.
	st, err := s.loadSignerState(ctx, kv, key, sc, r.Deployment, spki)
	if err != nil {
		return nil, err
	}
	s.repairSignerState(ctx, kv, key, &st)
	if st.exists && st.Origin != origin {
		return nil, shared.NewError(shared.CodeValidation, "audit sign: %s is signed under origin %q, not %q", sc, st.Origin, origin)
	}
	var lastRoot tlog.Hash
	copy(lastRoot[:], st.Root)
	err = auditlog.CheckAdvance(st.Size, lastRoot, r.OldSize, r.Proof, r.Size, root)
	switch {
	case errors.Is(err, auditlog.ErrOldSize):
		return auditlog.TlogSignResponse{Conflict: true, SignedSize: st.Size}, nil
	case err != nil:
		s.log.Error("refusing to sign an audit checkpoint", "origin", origin, "size", r.Size, "signed_size", st.Size, "err", err)
		return nil, shared.NewError(shared.CodeValidation, "audit sign: %v", err)
	case st.exists && r.Size == st.Size:
		return auditlog.TlogSignResponse{Checkpoint: st.Checkpoint, SignedSize: st.Size}, nil
	}
	text := auditlog.TreeHead{Origin: origin, Size: r.Size, Root: root}.Text()
	sig, err := s.hsm.SignSHA256(ctx, AuditKeyLabel, text)
	if err != nil {
		return nil, err
	}
	signers := []note.Signer{&auditlog.PresignedSigner{
		KeyName: auditlog.KeyName(r.Deployment), Hash: auditlog.ECDSAKeyHash(spki), Text: text, Sig: sig,
	}}
	if ed, err := s.auditEd25519Signer(ctx, r.Deployment, text); err != nil { // admin_audit_ed25519.go
		return nil, err
	} else if ed != nil {
		signers = append(signers, ed)
	}
	signed, err := note.Sign(&note.Note{Text: string(text)}, signers...)
	if err != nil {
		return nil, fmt.Errorf("keyworker: audit checkpoint: %w", err)
	}
	// The state moves before the signature leaves: a lost reply costs a
	// retry, never a second tree.
	next := auditlog.SignerState{Origin: origin, Size: r.Size, Root: root[:], Checkpoint: signed}
	if err := s.storeSignerState(ctx, kv, key, st, next); err != nil {
		// Another keyworker signed meanwhile: the caller asks again.
		if errors.Is(err, errSignerRace) {
			if now, lerr := s.loadSignerState(ctx, kv, key, sc, r.Deployment, spki); lerr == nil {
				s.log.Warn("audit signer state moved meanwhile", "key", key, "err", err)
				return auditlog.TlogSignResponse{Conflict: true, SignedSize: now.Size}, nil
			}
		}
		return nil, fmt.Errorf("keyworker: audit signer state: %w", err)
	}
	return auditlog.TlogSignResponse{Checkpoint: signed, SignedSize: r.Size}, nil
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
