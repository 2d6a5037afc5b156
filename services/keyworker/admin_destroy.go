package keyworker

// Key deletion, last step. A key scheduled for deletion (registry status
// PENDING_DELETION, by a person's signed request with its quorum) is
// destroyed when its waiting period is over: authn asks, and the keyworker
// checks the registry itself before touching the HSM, so only a key that
// really is this pool's, pending deletion and past its date goes.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

func (s *Service) adminKeyDestroy(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.KeyDestroyRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, err
	}
	ks, _, err := reg.Keystore(ctx, req.Keystore)
	if err != nil {
		return nil, shared.NewError(shared.CodeKeyNotFound, "key store %q not found", req.Keystore)
	}
	k, _, err := reg.Key(ctx, req.Keystore, req.KeyID)
	if err != nil {
		return nil, shared.NewError(shared.CodeKeyNotFound, "key %q not found in key store %q", req.KeyID, req.Keystore)
	}
	switch {
	case ks.Pool != s.cfg.Pool || k.Label != req.Label:
		return nil, shared.NewError(shared.CodeAccessDenied, "key %q of key store %q is not HSM key %q of pool %q", req.KeyID, req.Keystore, req.Label, s.cfg.Pool)
	case k.Status != registry.StatusPendingDeletion || k.DeleteAfter == nil:
		return nil, shared.NewError(shared.CodeInvalidState, "key %q is not scheduled for deletion", req.KeyID)
	case s.now().Before(*k.DeleteAfter):
		return nil, shared.NewError(shared.CodeInvalidState, "key %q is not to be destroyed before %s", req.KeyID, k.DeleteAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	start := s.now()
	n, err := s.hsm.DestroyKey(ctx, req.Label)
	var b [16]byte
	_, _ = rand.Read(b[:])
	ev := &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: "kd-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindXKS, Scope: req.Keystore,
		API: "xks.key.destroy", Service: shared.AuditServiceKeyworker, Start: start, End: s.now(),
		CallerType: "service", CallerID: shared.AuditServiceAuthn, KeyID: req.KeyID, Result: shared.ResultSuccess,
		Params: map[string]string{"pool": s.cfg.Pool, "label": req.Label, "versions_destroyed": strconv.Itoa(n)},
	}
	if err != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(err), shared.MessageOf(err)
	}
	if aerr := mesh.PublishAudit(ctx, s.js, ev); aerr != nil && err == nil {
		return nil, aerr
	}
	if err != nil {
		return nil, err
	}
	return kwadmin.KeyDestroyResponse{Destroyed: n}, nil
}
