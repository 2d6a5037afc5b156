package roster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// Desk is where a service takes people's signed admin requests: it
// verifies them (signature, role, freshness, nonce), audits every phase in
// the operator log under the service's own audit subject naming the
// person (refused, requested, approved, rejected, intent, result), holds
// requests that need a quorum and decides approvals. The keyworker (HSM
// changes) and authn (registry changes) each run one.
type Desk struct {
	JS jetstream.JetStream
	// Service is the host's audit service token (shared.AuditService*).
	Service string
	// Place says where a held request is decided (Pending.Service), and
	// Pool which keyworker pool for the keyworker.
	Place, Pool string
	Topology    mesh.Topology
	Log         *slog.Logger
	Now         func() time.Time

	mu sync.Mutex
	v  *Verifier
}

// Verifier binds the roster and the admin bucket on first use.
func (d *Desk) Verifier(ctx context.Context) (*Verifier, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.v != nil {
		return d.v, nil
	}
	r, err := Open(ctx, d.JS)
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the roster of people is not available: %v", err)
	}
	admin, err := mesh.BindKV(ctx, d.JS, mesh.AdminBucketConfig(d.Topology))
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the admin request bucket is not available: %v", err)
	}
	d.v = &Verifier{Roster: r, Admin: admin, Now: d.Now}
	return d.v, nil
}

// Audit records one phase of a person's admin operation op, durably.
func (d *Desk) Audit(ctx context.Context, op, phase, person string, params map[string]string, opErr error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	p := map[string]string{"phase": phase}
	if d.Pool != "" {
		p["pool"] = d.Pool
	}
	for k, v := range params {
		p[k] = v
	}
	now := d.Now()
	ev := &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: "adm-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindOperator,
		API: shared.API("operator." + op), Service: d.Service, Start: now, End: now,
		CallerType: shared.CallerTypePerson, CallerID: person, Result: shared.ResultSuccess, Params: p,
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), shared.MessageOf(opErr)
		if shared.CodeOf(opErr) == shared.CodeAccessDenied {
			ev.Result = shared.ResultDenied
		}
	}
	return mesh.PublishAudit(ctx, d.JS, ev)
}

// refused logs and audits a refused request and returns err.
func (d *Desk) refused(ctx context.Context, op string, sig *Signature, params map[string]string, err error) error {
	who := "unknown"
	if sig != nil && shared.ValidPersonName(sig.Person) {
		who = sig.Person
	}
	d.Log.Warn("admin request refused", "op", op, "person", who, "err", shared.MessageOf(err))
	if aerr := d.Audit(ctx, op, "refused", who, params, err); aerr != nil {
		d.Log.Error("admin refusal: audit publish failed", "err", aerr)
	}
	return err
}

// Refuse audits a request refused before its signature was looked at.
func (d *Desk) Refuse(ctx context.Context, op string, params map[string]string, err error) error {
	return d.refused(ctx, op, nil, params, err)
}

// Admit verifies the signed request (header h) for op with body data by a
// person holding one of roles (none: any person on the roster), and uses
// its nonce. A refusal is audited.
func (d *Desk) Admit(ctx context.Context, op string, data []byte, h string, roles ...natsauth.Role) (*Person, *Signature, error) {
	sig, err := ParseSignature(h)
	if err != nil {
		return nil, nil, d.refused(ctx, op, nil, nil, err)
	}
	v, err := d.Verifier(ctx)
	if err != nil {
		return nil, nil, err
	}
	var p *Person
	if len(roles) == 0 {
		p, err = v.Verify(ctx, op, data, sig, "")
	}
	for _, r := range roles {
		if p, err = v.Verify(ctx, op, data, sig, r); err == nil {
			break
		}
	}
	if err == nil {
		err = v.Consume(ctx, sig)
	}
	if err != nil {
		return nil, nil, d.refused(ctx, op, sig, nil, err)
	}
	return p, sig, nil
}

// Apply audits the intent of op by person, runs fn only once the intent
// is durable, and audits the result.
func (d *Desk) Apply(ctx context.Context, op, person string, params map[string]string, fn func(context.Context) (any, error)) (any, error) {
	if err := d.Audit(ctx, op, "intent", person, params, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the change was NOT applied: its intent could not be audited: %v", err)
	}
	resp, err := fn(ctx)
	if aerr := d.Audit(ctx, op, "result", person, params, err); aerr != nil {
		d.Log.Error("admin result: audit publish failed", "op", op, "person", person, "err", aerr)
		if err == nil {
			return nil, fmt.Errorf("roster: %s was applied (its intent is audited) but its result could not be audited: %w", op, aerr)
		}
	}
	return resp, err
}

// Need returns how many people op needs under the roster's policy.
func (d *Desk) Need(ctx context.Context, op string) (int, error) {
	v, err := d.Verifier(ctx)
	if err != nil {
		return 0, err
	}
	pol, err := v.Roster.Policy(ctx)
	if err != nil {
		return 0, err
	}
	return pol.Need(op), nil
}

// Hold verifies a request that needs need people and stores it, waiting
// for approval by others with role.
func (d *Desk) Hold(ctx context.Context, op string, data []byte, h string, role natsauth.Role, scope, summary string,
	params map[string]string, need int) (*Pending, error) {
	person, sig, err := d.Admit(ctx, op, data, h, role)
	if err != nil {
		return nil, err
	}
	now := d.Now()
	p := &Pending{
		ID: NewID(), Op: op, Service: d.Place, Pool: d.Pool, Scope: scope, Summary: summary,
		Body: json.RawMessage(data), Role: role, Need: need, Request: *sig,
		Created: now, Expires: now.Add(mesh.AdminRequestTTL), State: StatePending,
	}
	ap := map[string]string{"request_id": p.ID, "need": strconv.Itoa(need)}
	for k, v := range params {
		ap[k] = v
	}
	if err := d.Audit(ctx, op, "requested", person.Name, ap, nil); err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the request was NOT stored: it could not be audited: %v", err)
	}
	if err := (Requests{KV: d.v.Admin}).Create(ctx, p); err != nil {
		return nil, err
	}
	d.Log.Info("admin request waits for approval", "request_id", p.ID, "op", op, "person", person.Name, "need", need)
	return p, nil
}

// decide loads the request a decision names and verifies the decision.
func (d *Desk) decide(ctx context.Context, op string, data []byte, h string) (*Pending, uint64, *Person, error) {
	var dr kwadmin.DecideRequest
	if err := json.Unmarshal(data, &dr); err != nil {
		return nil, 0, nil, shared.NewError(shared.CodeValidation, "malformed decision: %v", err)
	}
	v, err := d.Verifier(ctx)
	if err != nil {
		return nil, 0, nil, err
	}
	p, rev, err := Requests{KV: v.Admin}.Get(ctx, dr.ID)
	if err != nil {
		return nil, 0, nil, err
	}
	if p.Service != d.Place || p.Pool != d.Pool {
		return nil, 0, nil, shared.NewError(shared.CodeValidation, "request %s is decided by %s %s", p.ID, p.Service, p.Pool)
	}
	sig, err := ParseSignature(h)
	var person *Person
	if err == nil {
		if person, err = v.CheckDecision(ctx, p, op, data, sig); err == nil {
			err = v.Consume(ctx, sig)
		}
	}
	if err != nil {
		return nil, 0, nil, d.refused(ctx, op, sig, map[string]string{"request_id": dr.ID}, err)
	}
	if op == kwadmin.OpApprove {
		p.Approvals = append(p.Approvals, Decision{Sig: *sig, Body: json.RawMessage(data)})
	} else {
		p.Reason = dr.Reason
	}
	return p, rev, person, nil
}

func decideResponse(p *Pending) kwadmin.DecideResponse {
	return kwadmin.DecideResponse{ID: p.ID, State: p.State, Approvals: p.Approvers(), Need: p.Need}
}

// Approve records an approval (data, header h); the one that completes the
// quorum re-verifies every signature and applies the request with apply,
// in the requester's name, the approvers on record.
func (d *Desk) Approve(ctx context.Context, data []byte, h string,
	apply func(ctx context.Context, p *Pending, approved map[string]string) (any, error)) (kwadmin.DecideResponse, error) {
	p, rev, person, err := d.decide(ctx, kwadmin.OpApprove, data, h)
	if err != nil {
		return kwadmin.DecideResponse{}, err
	}
	params := map[string]string{"request_id": p.ID, "op": p.Op, "requester": p.Requester(), "approvals": strings.Join(p.Approvers(), ",")}
	if err := d.Audit(ctx, kwadmin.OpApprove, "approved", person.Name, params, nil); err != nil {
		return kwadmin.DecideResponse{}, shared.NewError(shared.CodeDependencyTimeout, "the approval was NOT recorded: it could not be audited: %v", err)
	}
	reqs := Requests{KV: d.v.Admin}
	if !p.Complete() {
		if err := reqs.Update(ctx, p, rev); err != nil {
			return kwadmin.DecideResponse{}, err
		}
		return decideResponse(p), nil
	}
	if err := d.v.Recheck(ctx, p); err != nil {
		_ = d.Audit(ctx, p.Op, "refused", p.Requester(), params, err)
		return kwadmin.DecideResponse{}, err
	}
	// The state moves first (compare-and-set): a request is applied once.
	p.State, p.DecidedBy = StateApplied, person.Name
	if err := reqs.Update(ctx, p, rev); err != nil {
		return kwadmin.DecideResponse{}, err
	}
	approved := map[string]string{"request_id": p.ID, "approved_by": strings.Join(p.Approvers(), ",")}
	resp, err := apply(ctx, p, approved)
	out := decideResponse(p)
	if err != nil {
		out.State, out.Error = StateFailed, shared.MessageOf(err)
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

// Reject rejects (or, by its requester, withdraws) a request.
func (d *Desk) Reject(ctx context.Context, data []byte, h string) (kwadmin.DecideResponse, error) {
	p, rev, person, err := d.decide(ctx, kwadmin.OpReject, data, h)
	if err != nil {
		return kwadmin.DecideResponse{}, err
	}
	p.State, p.DecidedBy = StateRejected, person.Name
	if err := d.Audit(ctx, kwadmin.OpReject, "rejected", person.Name,
		map[string]string{"request_id": p.ID, "op": p.Op, "requester": p.Requester(), "reason": p.Reason}, nil); err != nil {
		return kwadmin.DecideResponse{}, shared.NewError(shared.CodeDependencyTimeout, "the rejection was NOT recorded: it could not be audited: %v", err)
	}
	if err := (Requests{KV: d.v.Admin}).Update(ctx, p, rev); err != nil {
		return kwadmin.DecideResponse{}, err
	}
	return decideResponse(p), nil
}
