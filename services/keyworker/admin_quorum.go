package keyworker

// Key version commands and quorum. A key version change is verified like
// every signed admin request (admin_people.go), and its audit scope comes
// from the registry: the key store and key id the request names must be a
// key of this pool with the label it acts on. A destroy whose quorum is
// more than one person (roster.Policy) is held as a request waiting for
// approval; the approval that completes the quorum applies it.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// regOnce binds the registry (key store and key buckets) on first use.
type regOnce struct {
	mu  sync.Mutex
	reg *registry.Registry
}

func (s *Service) registry(ctx context.Context) (*registry.Registry, error) {
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	if s.reg.reg == nil {
		r, err := registry.Open(ctx, s.js, s.cfg.Topology)
		if err != nil {
			return nil, shared.NewError(shared.CodeDependencyTimeout, "the key registry is not available: %v", err)
		}
		s.reg.reg = r
	}
	return s.reg.reg, nil
}

// checkKeyScope refuses a version request whose key store and key id do
// not name, in the registry, the key labelled req.Label in this pool.
func (s *Service) checkKeyScope(ctx context.Context, req kwadmin.KeyVersionRequest) error {
	if req.Keystore == "" || req.KeyID == "" {
		return shared.NewError(shared.CodeValidation, "key version requests name their key store and key id")
	}
	reg, err := s.registry(ctx)
	if err != nil {
		return err
	}
	ks, _, err := reg.Keystore(ctx, req.Keystore)
	if err != nil {
		return shared.NewError(shared.CodeKeyNotFound, "key store %q not found", req.Keystore)
	}
	k, _, err := reg.Key(ctx, req.Keystore, req.KeyID)
	if err != nil {
		return shared.NewError(shared.CodeKeyNotFound, "key %q not found in key store %q", req.KeyID, req.Keystore)
	}
	if ks.Pool != s.cfg.Pool || k.Label != req.Label {
		return shared.NewError(shared.CodeAccessDenied, "key %q of key store %q is not HSM key %q of pool %q", req.KeyID, req.Keystore, req.Label, s.cfg.Pool)
	}
	return nil
}

func versionParams(req kwadmin.KeyVersionRequest) map[string]string {
	return map[string]string{"keystore": req.Keystore, "key_id": req.KeyID, "label": req.Label,
		"action": req.Action, "key_version": strconv.Itoa(req.Version)}
}

// signedKeyVersion verifies and applies (or holds for approval) a key
// version change.
func (s *Service) signedKeyVersion(ctx context.Context, req kwadmin.KeyVersionRequest, data []byte) (any, error) {
	op := kwadmin.VersionOp(req.Action)
	if err := s.checkKeyScope(ctx, req); err != nil {
		return nil, s.desk.Refuse(ctx, op, versionParams(req), err)
	}
	if req.Action == kwadmin.VersionDestroy && req.Confirm != "" {
		need, err := s.desk.Need(ctx, op)
		if err != nil {
			return nil, err
		}
		if need > 1 {
			summary := fmt.Sprintf("destroy version %d of key %s of key store %s (HSM key %s)", req.Version, req.KeyID, req.Keystore, req.Label)
			p, err := s.desk.Hold(ctx, op, data, signatureOf(ctx), natsauth.RoleAdmin, req.Keystore, summary, versionParams(req), need)
			if err != nil {
				return nil, err
			}
			return kwadmin.KeyVersionResponse{Label: req.Label, Pending: p.ID, Need: need, Signers: p.Signers()}, nil
		}
	}
	return s.signedHandler(ctx, op, data, versionParams(req), func(ctx context.Context, _ []byte) (any, error) {
		return s.applyKeyVersion(ctx, req)
	})
}

// adminApprove records an approval; the one that completes the quorum
// applies the request.
func (s *Service) adminApprove(ctx context.Context, data []byte) (any, error) {
	return s.desk.Approve(ctx, data, signatureOf(ctx), func(ctx context.Context, p *roster.Pending, approved map[string]string) (any, error) {
		var req kwadmin.KeyVersionRequest
		if err := json.Unmarshal(p.Body, &req); err != nil || kwadmin.VersionOp(req.Action) != p.Op {
			return nil, shared.NewError(shared.CodeValidation, "request %s holds no key version change", p.ID)
		}
		params := versionParams(req)
		for k, v := range approved {
			params[k] = v
		}
		ctx = context.WithValue(ctx, personKey{}, p.Requester())
		return s.desk.Apply(ctx, p.Op, p.Requester(), params, func(ctx context.Context) (any, error) { return s.applyKeyVersion(ctx, req) })
	})
}

// adminReject rejects (or, by its requester, withdraws) a request.
func (s *Service) adminReject(ctx context.Context, data []byte) (any, error) {
	return s.desk.Reject(ctx, data, signatureOf(ctx))
}
