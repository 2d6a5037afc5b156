package keyworker

// Admin requests come from people (shared/infra/roster). Every endpoint
// that changes something (kwadmin.Op names it) needs the signature of a
// person on the roster with the role the operation needs, made within
// roster.MaxSkew, whose nonce was never used. The keyworker audits the
// person's intent in the operator log before it touches the HSM and the
// result after; an operation whose quorum is more than one person waits in
// KV sovkeys_admin for approvals instead (admin_quorum.go). A request that
// fails any check is refused, and the refusal is audited.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// signatureKey carries a request's HeaderSignature value in its context.
type signatureKey struct{}

// personKey carries the verified person of a signed request.
type personKey struct{}

// personOf returns the person whose signed request ctx serves ("" if none).
func personOf(ctx context.Context) string {
	p, _ := ctx.Value(personKey{}).(string)
	return p
}

// roleOf is the role op needs ("" for approve/reject: their request's role).
func roleOf(op string) []natsauth.Role {
	switch op {
	case kwadmin.OpKeystoreSeal:
		// Key store creation (admin) and credential rotation (security).
		return []natsauth.Role{natsauth.RoleAdmin, natsauth.RoleSecurity}
	case kwadmin.OpApprove, kwadmin.OpReject:
		return nil
	}
	return []natsauth.Role{natsauth.RoleAdmin}
}

// people binds the roster and the admin bucket on first use.
type people struct {
	mu sync.Mutex
	v  *roster.Verifier
}

func (s *Service) verifier(ctx context.Context) (*roster.Verifier, error) {
	s.people.mu.Lock()
	defer s.people.mu.Unlock()
	if s.people.v != nil {
		return s.people.v, nil
	}
	r, err := roster.Open(ctx, s.js)
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the roster of people is not available: %v", err)
	}
	admin, err := mesh.BindKV(ctx, s.js, mesh.AdminBucketConfig(s.cfg.Topology))
	if err != nil {
		return nil, shared.NewError(shared.CodeDependencyTimeout, "the admin request bucket is not available: %v", err)
	}
	s.people.v = &roster.Verifier{Roster: r, Admin: admin, Now: s.now}
	return s.people.v, nil
}

// admitSigned verifies the signed request for op (body data) in ctx,
// consumes its nonce and returns ctx carrying the person. A refusal is
// audited (denied) before it is returned.
func (s *Service) admitSigned(ctx context.Context, op string, data []byte) (context.Context, *roster.Signature, error) {
	h, _ := ctx.Value(signatureKey{}).(string)
	sig, err := roster.ParseSignature(h)
	var p *roster.Person
	if err == nil {
		var v *roster.Verifier
		if v, err = s.verifier(ctx); err == nil {
			if p, err = s.verifyRoles(ctx, v, op, data, sig); err == nil {
				err = v.Consume(ctx, sig)
			}
		}
	}
	if err != nil {
		who := "unknown"
		if sig != nil {
			who = sig.Person
		}
		s.log.Warn("admin request refused", "op", op, "person", who, "err", shared.MessageOf(err))
		if aerr := s.auditAdmin(ctx, op, "refused", who, nil, err); aerr != nil {
			s.log.Error("admin refusal: audit publish failed", "err", aerr)
		}
		return ctx, nil, err
	}
	return context.WithValue(ctx, personKey{}, p.Name), sig, nil
}

func (s *Service) verifyRoles(ctx context.Context, v *roster.Verifier, op string, data []byte, sig *roster.Signature) (*roster.Person, error) {
	roles := roleOf(op)
	if len(roles) == 0 {
		return v.Verify(ctx, op, data, sig, "")
	}
	var err error
	for _, r := range roles {
		var p *roster.Person
		if p, err = v.Verify(ctx, op, data, sig, r); err == nil {
			return p, nil
		}
	}
	return nil, err
}

// auditAdmin records one phase (intent, result, refused, ...) of a
// person's admin operation in the operator log, durably.
func (s *Service) auditAdmin(ctx context.Context, op, phase, person string, params map[string]string, opErr error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	p := map[string]string{"pool": s.cfg.Pool, "phase": phase}
	for k, v := range params {
		p[k] = v
	}
	now := s.now()
	ev := &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: "adm-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindOperator,
		API: shared.API("operator." + op), Service: shared.AuditServiceKeyworker, Start: now, End: now,
		CallerType: shared.CallerTypePerson, CallerID: person, Result: shared.ResultSuccess, Params: p,
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), shared.MessageOf(opErr)
		if shared.CodeOf(opErr) == shared.CodeAccessDenied {
			ev.Result = shared.ResultDenied
		}
	}
	return mesh.PublishAudit(ctx, s.js, ev)
}

// signedHandler runs fn for a signed request of op: verified, nonce
// consumed, intent audited before fn, result after.
func (s *Service) signedHandler(ctx context.Context, op string, data []byte, params map[string]string,
	fn func(context.Context, []byte) (any, error)) (any, error) {
	ctx, _, err := s.admitSigned(ctx, op, data)
	if err != nil {
		return nil, err
	}
	return s.signedApply(ctx, op, params, func(ctx context.Context) (any, error) { return fn(ctx, data) })
}

// adminKV is the admin bucket (requests waiting for approval).
func (s *Service) adminKV(ctx context.Context) (jetstream.KeyValue, error) {
	v, err := s.verifier(ctx)
	if err != nil {
		return nil, err
	}
	return v.Admin, nil
}

// requestTTL is how long a request waits for its quorum.
const requestTTL = mesh.AdminRequestTTL
