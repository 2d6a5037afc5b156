package audit

import (
	"context"
	"errors"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// Scopes the registry knows (2026-12-07, Config.KnownScopesOnly)
//
// A log is permanent, so only the registry may bring one into being: an
// event of a key store (xks) or tenant scope is numbered only when that key
// store or tenant exists in the registry, or existed (its key's history
// holds a value: events about a deleted one still land in its log).
// Anything else (a credential naming xks/made-up-scope-42) is recorded as
// a forgery attempt in the operator log instead. Known scopes are cached;
// an unknown one costs one or two KV reads per event.

type scopeCheck struct {
	keystores, tenants jetstream.KeyValue

	mu    sync.Mutex
	known map[auditlog.Scope]struct{}
}

// newScopeCheck binds the registry buckets (the audit identity reads them).
func newScopeCheck(ctx context.Context, js jetstream.JetStream) (*scopeCheck, error) {
	ks, err := js.KeyValue(ctx, shared.BucketKeystores)
	if err != nil {
		return nil, err
	}
	tn, err := js.KeyValue(ctx, shared.BucketTenants)
	if err != nil {
		return nil, err
	}
	return &scopeCheck{keystores: ks, tenants: tn, known: make(map[auditlog.Scope]struct{})}, nil
}

// unknown says why ev's scope may not be opened ("" if it may).
func (c *scopeCheck) unknown(ctx context.Context, ev *shared.AuditEvent) string {
	if c == nil {
		return ""
	}
	var kv jetstream.KeyValue
	var key string
	switch ev.Kind {
	case shared.AuditKindXKS:
		kv, key = c.keystores, registry.KeystoreKey(ev.Scope)
	case shared.AuditKindTenant:
		kv, key = c.tenants, ev.Scope
	default:
		return ""
	}
	sc := auditlog.Scope{Kind: ev.Kind, ID: ev.Scope}
	c.mu.Lock()
	_, ok := c.known[sc]
	c.mu.Unlock()
	if ok {
		return ""
	}
	_, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) || errors.Is(err, jetstream.ErrInvalidKey) {
		hist, herr := kv.History(ctx, key)
		if herr != nil || len(hist) == 0 {
			return "scope " + sc.String() + " is unknown to the registry"
		}
		err = nil
	}
	if err != nil {
		// The registry cannot be read now: not a forgery; the event waits.
		return ""
	}
	c.mu.Lock()
	c.known[sc] = struct{}{}
	c.mu.Unlock()
	return ""
}

// refuseUnknownScope returns ev, or the forgery record taking its place
// when its scope is unknown to the registry (published by service).
func (s *Service) refuseUnknownScope(ctx context.Context, subject, service string, md *jetstream.MsgMetadata, ev *shared.AuditEvent) *shared.AuditEvent {
	why := s.scopes.unknown(ctx, ev)
	if why == "" {
		return ev
	}
	s.count(func(st *Stats) { st.Forgeries++ })
	s.log.Warn("audit event for a scope the registry does not know recorded as a forgery attempt", "subject", subject,
		"publisher", service, "request_id", ev.RequestID, "why", why)
	return forgeryRecord(subject, service, md, ev, why)
}
