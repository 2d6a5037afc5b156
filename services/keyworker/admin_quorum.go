package keyworker

// Key version commands and quorum. A key version change is verified like
// every signed admin request (admin_people.go), and its audit scope comes
// from the registry: the key store and key id the request names must be a
// key of this pool with the label it acts on. A destroy whose quorum is
// more than one person (roster.Policy) is stored as a request waiting for
// approval; the approval that completes the quorum applies it.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
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
		if aerr := s.auditAdmin(ctx, op, "refused", "unverified", versionParams(req), err); aerr != nil {
			s.log.Error("key version refusal: audit publish failed", "err", aerr)
		}
		return nil, err
	}
	if req.Action == kwadmin.VersionDestroy && req.Confirm != "" {
		v, err := s.verifier(ctx)
		if err != nil {
			return nil, err
		}
		pol, err := v.Roster.Policy(ctx)
		if err != nil {
			return nil, err
		}
		if need := pol.Need(op); need > 1 {
			return s.holdForQuorum(ctx, op, data, req, need)
		}
	}
	return s.signedHandler(ctx, op, data, versionParams(req), func(ctx context.Context, _ []byte) (any, error) {
		return s.applyKeyVersion(ctx, req)
	})
}

// holdForQuorum stores a verified request as waiting for approval.
func (s *Service) holdForQuorum(ctx context.Context, op string, data []byte, req kwadmin.KeyVersionRequest, need int) (any, error) {
	ctx, sig, err := s.admitSigned(ctx, op, data)
	if err != nil {
		return nil, err
	}
	kv, err := s.adminKV(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	p := &roster.Pending{
		ID: roster.NewID(), Op: op, Pool: s.cfg.Pool, Scope: req.Keystore,
		Summary: fmt.Sprintf("destroy version %d of key %s of key store %s (HSM key %s)", req.Version, req.KeyID, req.Keystore, req.Label),
		Body:    json.RawMessage(data), Role: natsauth.RoleAdmin, Need: need, Request: *sig,
		Created: now, Expires: now.Add(requestTTL), State: roster.StatePending,
	}
	params := versionParams(req)
	params["request_id"], params["need"] = p.ID, strconv.Itoa(need)
	if err := s.auditAdmin(ctx, op, "requested", personOf(ctx), params, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the request was NOT stored: it could not be audited: %v", err)
	}
	if err := (roster.Requests{KV: kv}).Create(ctx, p); err != nil {
		return nil, err
	}
	s.log.Info("admin request waits for approval", "request_id", p.ID, "op", op, "person", personOf(ctx), "need", need)
	return kwadmin.KeyVersionResponse{Label: req.Label, Pending: p.ID, Need: need, Signers: p.Signers()}, nil
}

// decide loads the request a decision names and verifies the decision.
func (s *Service) decide(ctx context.Context, op string, data []byte) (*roster.Verifier, *roster.Pending, uint64, *roster.Person, error) {
	var d kwadmin.DecideRequest
	if err := decode(data, &d); err != nil {
		return nil, nil, 0, nil, err
	}
	v, err := s.verifier(ctx)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	p, rev, err := roster.Requests{KV: v.Admin}.Get(ctx, d.ID)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	if p.Pool != s.cfg.Pool {
		return nil, nil, 0, nil, shared.NewError(shared.CodeValidation, "request %s belongs to pool %s", p.ID, p.Pool)
	}
	h, _ := ctx.Value(signatureKey{}).(string)
	sig, err := roster.ParseSignature(h)
	var person *roster.Person
	if err == nil {
		if person, err = v.CheckDecision(ctx, p, op, data, sig); err == nil {
			err = v.Consume(ctx, sig)
		}
	}
	if err != nil {
		who := "unknown"
		if sig != nil {
			who = sig.Person
		}
		s.log.Warn("decision refused", "op", op, "request_id", d.ID, "person", who, "err", shared.MessageOf(err))
		if aerr := s.auditAdmin(ctx, op, "refused", who, map[string]string{"request_id": d.ID}, err); aerr != nil {
			s.log.Error("decision refusal: audit publish failed", "err", aerr)
		}
		return nil, nil, 0, nil, err
	}
	if op == kwadmin.OpApprove {
		p.Approvals = append(p.Approvals, roster.Decision{Sig: *sig, Body: json.RawMessage(data)})
	} else {
		p.Reason = d.Reason
	}
	return v, p, rev, person, nil
}

func decideResponse(p *roster.Pending) kwadmin.DecideResponse {
	return kwadmin.DecideResponse{ID: p.ID, State: p.State, Approvals: p.Approvers(), Need: p.Need}
}

// adminApprove records an approval; the one that completes the quorum
// applies the request (re-verifying every signature first).
func (s *Service) adminApprove(ctx context.Context, data []byte) (any, error) {
	v, p, rev, person, err := s.decide(ctx, kwadmin.OpApprove, data)
	if err != nil {
		return nil, err
	}
	params := map[string]string{"request_id": p.ID, "op": p.Op, "requester": p.Requester(), "approvals": strings.Join(p.Approvers(), ",")}
	if err := s.auditAdmin(ctx, kwadmin.OpApprove, "approved", person.Name, params, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the approval was NOT recorded: it could not be audited: %v", err)
	}
	reqs := roster.Requests{KV: v.Admin}
	if !p.Complete() {
		if err := reqs.Update(ctx, p, rev); err != nil {
			return nil, err
		}
		return decideResponse(p), nil
	}
	if err := v.Recheck(ctx, p); err != nil {
		_ = s.auditAdmin(ctx, p.Op, "refused", p.Requester(), params, err)
		return nil, err
	}
	// The state moves first (compare-and-set): a request is applied once.
	p.State, p.DecidedBy = roster.StateApplied, person.Name
	if err := reqs.Update(ctx, p, rev); err != nil {
		return nil, err
	}
	var req kwadmin.KeyVersionRequest
	if err := json.Unmarshal(p.Body, &req); err != nil || kwadmin.VersionOp(req.Action) != p.Op {
		return nil, shared.NewError(shared.CodeValidation, "request %s holds no key version change", p.ID)
	}
	// Applied in the requester's name, with the approvers on record.
	actx := context.WithValue(ctx, personKey{}, p.Requester())
	vparams := versionParams(req)
	vparams["request_id"], vparams["approved_by"] = p.ID, strings.Join(p.Approvers(), ",")
	resp, err := s.signedApply(actx, p.Op, vparams, func(ctx context.Context) (any, error) { return s.applyKeyVersion(ctx, req) })
	out := decideResponse(p)
	if err != nil {
		out.State, out.Error = roster.StateFailed, shared.MessageOf(err)
	} else if b, merr := json.Marshal(resp); merr == nil {
		out.Result = b
	}
	if cur, crev, gerr := reqs.Get(ctx, p.ID); gerr == nil {
		cur.State, cur.Result = out.State, out.Error
		if cur.Result == "" {
			cur.Result = "applied"
		}
		_ = reqs.Update(ctx, cur, crev)
	}
	return out, nil
}

// signedApply audits intent, applies, audits the result (the request's
// signatures were verified already).
func (s *Service) signedApply(ctx context.Context, op string, params map[string]string, fn func(context.Context) (any, error)) (any, error) {
	person := personOf(ctx)
	if err := s.auditAdmin(ctx, op, "intent", person, params, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the change was NOT applied: its intent could not be audited: %v", err)
	}
	resp, err := fn(ctx)
	if aerr := s.auditAdmin(ctx, op, "result", person, params, err); aerr != nil && err == nil {
		return nil, fmt.Errorf("keyworker: %s was applied but its result could not be audited: %w", op, aerr)
	}
	return resp, err
}

// adminReject rejects (or, by its requester, withdraws) a request.
func (s *Service) adminReject(ctx context.Context, data []byte) (any, error) {
	v, p, rev, person, err := s.decide(ctx, kwadmin.OpReject, data)
	if err != nil {
		return nil, err
	}
	p.State, p.DecidedBy = roster.StateRejected, person.Name
	if err := s.auditAdmin(ctx, kwadmin.OpReject, "rejected", person.Name, map[string]string{"request_id": p.ID, "op": p.Op, "requester": p.Requester(), "reason": p.Reason}, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the rejection was NOT recorded: it could not be audited: %v", err)
	}
	if err := (roster.Requests{KV: v.Admin}).Update(ctx, p, rev); err != nil {
		return nil, err
	}
	return decideResponse(p), nil
}
