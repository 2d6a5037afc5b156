package keyworker

// Admin requests come from people (shared/infra/roster). Every endpoint
// that changes something (kwadmin.Op names it) needs the signature of a
// person on the roster with the role the operation needs, made within
// roster.MaxSkew, whose nonce was never used. The keyworker's desk audits
// the person's intent in the operator log before it touches the HSM and the
// result after; an operation whose quorum is more than one person waits in
// KV sovkeys_admin for approvals instead (admin_quorum.go). A request that
// fails any check is refused, and the refusal is audited.

import (
	"context"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
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

func signatureOf(ctx context.Context) string {
	h, _ := ctx.Value(signatureKey{}).(string)
	return h
}

// roleOf is the roles op may be signed with.
func roleOf(op string) []natsauth.Role {
	if op == kwadmin.OpKeystoreSeal {
		// Key store creation (admin) and credential rotation (security).
		return []natsauth.Role{natsauth.RoleAdmin, natsauth.RoleSecurity}
	}
	return []natsauth.Role{natsauth.RoleAdmin}
}

// newDesk is the keyworker's desk for people's requests.
func (s *Service) newDesk() *roster.Desk {
	return &roster.Desk{JS: s.js, Service: shared.AuditServiceKeyworker, Place: roster.PlaceKeyworker, Pool: s.cfg.Pool,
		Topology: s.cfg.Topology, Log: s.log, Now: s.now}
}

// signedHandler runs fn for a signed request of op: verified, nonce
// consumed, intent audited before fn, result after.
func (s *Service) signedHandler(ctx context.Context, op string, data []byte, params map[string]string,
	fn func(context.Context, []byte) (any, error)) (any, error) {
	p, _, err := s.desk.Admit(ctx, op, data, signatureOf(ctx), roleOf(op)...)
	if err != nil {
		return nil, err
	}
	ctx = context.WithValue(ctx, personKey{}, p.Name)
	return s.desk.Apply(ctx, op, p.Name, params, func(ctx context.Context) (any, error) { return fn(ctx, data) })
}
