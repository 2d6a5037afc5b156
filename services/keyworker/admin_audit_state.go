package keyworker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// The audit signer's state, out of every NATS credential's reach
// (2026-12-07)
//
// The last tree signed per log (origin, size, root, signed note) is kept
// in two places:
//
//   - a token data object in the pool's HSM (label auditStateLabel), the
//     one no NATS credential can touch: a keyworker credential may write
//     KV shared.BucketAuditSigner (the signer publishes there), so KV alone
//     could be rewound or deleted by anyone holding one;
//   - KV shared.BucketAuditSigner, the public view the audit service reads
//     (and the compare-and-set that orders keyworkers of a pool).
//
// The state a signature must extend is the larger of the two, counting
// the KV value only when its note carries this HSM's signature over
// exactly that size and root: a credential can replay an older genuine
// state there, which is smaller and so changes nothing, and cannot forge a
// newer one. A KV state ahead of the token (a keyworker died between its
// two writes, or a token written by an earlier version, which kept KV
// only) is adopted into the token. A KV value behind the token is
// rewritten from it, so the audit service reloads from the real head.

// auditStateLabel is the HSM data object holding key's signer state.
func auditStateLabel(key string) string { return "sovkeys-audit-signer " + key }

// signerState is the state a signature must extend.
type signerState struct {
	auditlog.SignerState
	exists  bool   // some state exists (a signature was made)
	token   []byte // the data object's value (nil: none)
	kvValue []byte // KV's value (nil: none)
	kvRev   uint64 // KV's revision (0: none)
}

// loadSignerState reads both copies for the log sc (origin origin, KV key
// key) and picks the state to extend, as above.
func (s *Service) loadSignerState(ctx context.Context, kv jetstream.KeyValue, key string, sc auditlog.Scope, deployment string, spki []byte) (signerState, error) {
	var st signerState
	tok, err := s.hsm.ReadData(ctx, auditStateLabel(key))
	if err != nil {
		return st, fmt.Errorf("keyworker: audit signer state in the hsm: %w", err)
	}
	st.token = tok
	if tok != nil {
		if err := json.Unmarshal(tok, &st.SignerState); err != nil || len(st.Root) != tlog.HashSize {
			return st, fmt.Errorf("keyworker: audit signer state of %s in the hsm is unreadable", sc)
		}
		st.exists = true
	}
	switch e, err := kv.Get(ctx, key); {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
	case err != nil:
		return st, fmt.Errorf("keyworker: audit signer state: %w", err)
	default:
		st.kvValue, st.kvRev = e.Value(), e.Revision()
	}
	if st.kvValue == nil || bytes.Equal(st.kvValue, tok) {
		return st, nil
	}
	var kvSt auditlog.SignerState
	if err := json.Unmarshal(st.kvValue, &kvSt); err != nil || (st.exists && kvSt.Size <= st.Size) {
		return st, nil // rewound, deleted or garbage: the token's state holds
	}
	pub, err := auditlog.ParsePublicKey(spki)
	if err != nil {
		return st, err
	}
	th, _, err := auditlog.Trust{Deployment: deployment, LogKey: pub}.OpenCheckpoint(kvSt.Checkpoint, sc)
	if err != nil || th.Size != kvSt.Size || !bytes.Equal(th.Root[:], kvSt.Root) || kvSt.Origin != sc.Origin(deployment) {
		s.log.Error("audit signer state in KV is not signed by this HSM; ignored", "key", key)
		return st, nil
	}
	st.SignerState, st.exists = kvSt, true
	return st, nil
}

// storeSignerState moves the state from st to next: KV first (the
// compare-and-set orders keyworkers of the pool; a lost race is
// errSignerRace), then the token. The signature leaves only after both.
func (s *Service) storeSignerState(ctx context.Context, kv jetstream.KeyValue, key string, st signerState, next auditlog.SignerState) error {
	val, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if st.kvRev == 0 {
		_, err = kv.Create(ctx, key, val)
	} else {
		_, err = kv.Update(ctx, key, val, st.kvRev)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errSignerRace, err)
	}
	if err := s.hsm.CompareAndSwapData(ctx, auditStateLabel(key), st.token, val); err != nil {
		return fmt.Errorf("%w: %v", errSignerRace, err)
	}
	return nil
}

// errSignerRace: another keyworker moved the state meanwhile.
var errSignerRace = errors.New("keyworker: audit signer state moved meanwhile")

// repairSignerState rewrites KV from the state in force when KV holds
// less (rewound, deleted), so the audit service reloads from the real
// head; and adopts a newer signed KV state into the token.
func (s *Service) repairSignerState(ctx context.Context, kv jetstream.KeyValue, key string, st *signerState) {
	if !st.exists {
		return
	}
	val, err := json.Marshal(st.SignerState)
	if err != nil {
		return
	}
	if !bytes.Equal(st.token, val) {
		if err := s.hsm.CompareAndSwapData(ctx, auditStateLabel(key), st.token, val); err != nil {
			s.log.Warn("audit signer state: adopting the KV state into the hsm failed", "key", key, "err", err)
		} else {
			st.token = val
			s.log.Info("audit signer state adopted into the hsm", "key", key, "size", st.Size)
		}
	}
	if !bytes.Equal(st.kvValue, val) {
		var kvSt auditlog.SignerState
		if st.kvValue != nil && json.Unmarshal(st.kvValue, &kvSt) == nil && kvSt.Size == st.Size {
			return
		}
		s.log.Error("audit signer state in KV is behind the hsm (rewound or deleted); restoring it", "key", key, "size", st.Size)
		var rev uint64
		if st.kvRev == 0 {
			rev, err = kv.Create(ctx, key, val)
		} else {
			rev, err = kv.Update(ctx, key, val, st.kvRev)
		}
		if err != nil {
			s.log.Warn("audit signer state: restoring KV failed", "key", key, "err", err)
			return
		}
		st.kvRev, st.kvValue = rev, val
	}
}
