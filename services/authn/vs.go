package authn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// InstanceURI returns the URI SAN that names an instance in its mTLS
// certificate: sovkeys://tenant/<tenant>/instance/<instance>.
func InstanceURI(tenant, instance string) *url.URL {
	return &url.URL{Scheme: "sovkeys", Host: "tenant", Path: "/" + tenant + "/instance/" + instance}
}

// instanceIdentity extracts tenant and instance from a certificate's single
// sovkeys URI SAN.
func instanceIdentity(c *x509.Certificate) (tenant, instance string, ok bool) {
	found := 0
	for _, u := range c.URIs {
		if u.Scheme != "sovkeys" {
			continue
		}
		found++
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if u.Host != "tenant" || len(parts) != 3 || parts[1] != "instance" {
			return "", "", false
		}
		tenant, instance = parts[0], parts[2]
	}
	return tenant, instance, found == 1 && registry.ValidTenantID(tenant) && vs.ValidID(instance)
}

// verifiedCerts remembers leaf certificates whose chain verified against a
// given CA, for at most verifiedTTL and never past the leaf's NotAfter, so
// a booting fleet does not pay a chain verification per call.
type verifiedCerts struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time // sha256(leaf || ca) -> valid until
}

const verifiedTTL = 5 * time.Minute

func certKey(leaf, ca *x509.Certificate) [32]byte {
	h := sha256.New()
	h.Write(leaf.Raw)
	h.Write(ca.Raw)
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

func (v *verifiedCerts) check(leaf, ca *x509.Certificate, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	until, ok := v.m[certKey(leaf, ca)]
	return ok && now.Before(until)
}

func (v *verifiedCerts) remember(leaf, ca *x509.Certificate, now time.Time) {
	until := now.Add(verifiedTTL)
	if leaf.NotAfter.Before(until) {
		until = leaf.NotAfter
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil || len(v.m) >= 10000 {
		v.m = map[[32]byte]time.Time{}
	}
	v.m[certKey(leaf, ca)] = until
}

// caPool mirrors the instance CA certificates the pools publish in KV. An
// instance CA is write-once: the first one published for a pool is pinned
// (the watch replays the key's history), and a pool whose CA is later
// replaced or removed is refused until an operator looks (fail closed,
// logged, audited): a rewritten CA would let its holder mint instance
// certificates for any tenant of the pool.
type caPool struct {
	mu      sync.RWMutex
	certs   map[string]*x509.Certificate // pool -> CA
	refused map[string]bool              // pool -> its published CA changed
}

func watchCAs(ctx context.Context, kv jetstream.KeyValue, s *Service) (*caPool, error) {
	w, err := kv.Watch(ctx, "*.instance_ca", jetstream.IncludeHistory())
	if err != nil {
		return nil, err
	}
	p := &caPool{certs: map[string]*x509.Certificate{}, refused: map[string]bool{}}
	go func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				p.update(ctx, s, e)
			}
		}
	}()
	return p, nil
}

// update applies one KV entry: the first CA of a pool is pinned; any other
// value, a delete or a purge after it refuses the pool.
func (p *caPool) update(ctx context.Context, s *Service, e jetstream.KeyValueEntry) {
	pool := strings.TrimSuffix(e.Key(), ".instance_ca")
	p.mu.Lock()
	pinned, had := p.certs[pool]
	switch {
	case p.refused[pool]:
		p.mu.Unlock()
		return
	case e.Operation() == jetstream.KeyValuePut && had && bytes.Equal(pinned.Raw, e.Value()):
		p.mu.Unlock()
		return
	case e.Operation() == jetstream.KeyValuePut && !had:
		c, err := x509.ParseCertificate(e.Value())
		if err != nil {
			p.refused[pool] = true
			p.mu.Unlock()
			s.log.Error("undecodable instance CA certificate; pool refused", "pool", pool, "err", err)
			s.auditCAChange(ctx, pool, e.Revision(), "undecodable instance CA certificate")
			return
		}
		p.certs[pool] = c
		p.mu.Unlock()
		return
	case !had && e.Operation() != jetstream.KeyValuePut:
		p.mu.Unlock()
		return
	}
	// A pinned CA was replaced or removed.
	delete(p.certs, pool)
	p.refused[pool] = true
	p.mu.Unlock()
	s.log.Error("instance CA of pool changed after it was published; refusing the pool's instances until an operator checks it",
		"pool", pool, "revision", e.Revision(), "operation", e.Operation().String())
	s.auditCAChange(ctx, pool, e.Revision(), "published instance CA changed")
}

// auditCAChange records a refused instance CA change.
func (s *Service) auditCAChange(ctx context.Context, pool string, rev uint64, reason string) {
	now := s.now()
	ev := &shared.AuditEvent{
		RequestID: fmt.Sprintf("instance-ca-%s-%d", pool, rev), Kind: shared.AuditKindOperator, Scope: pool,
		API: shared.API("authn.instance_ca_changed"), Service: shared.AuditServiceAuthn,
		Start: now, End: now, Result: shared.ResultDenied, Code: shared.CodeAccessDenied, Reason: reason,
	}
	if err := mesh.PublishAudit(ctx, s.js, ev); err != nil {
		s.log.Error("audit of an instance CA change failed", "pool", pool, "err", err)
	}
}

func (p *caPool) get(pool string) *x509.Certificate {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.certs[pool]
}

// all returns every pool's instance CA.
func (p *caPool) all() map[string]*x509.Certificate {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]*x509.Certificate, len(p.certs))
	for k, v := range p.certs {
		out[k] = v
	}
	return out
}

// verifyInstanceChain returns the pool whose instance CA issued leaf.
func (s *Service) verifyInstanceChain(leaf *x509.Certificate) (string, bool) {
	now := s.now()
	for pool, ca := range s.cas.all() {
		if s.verified.check(leaf, ca, now) {
			return pool, true
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			s.verified.remember(leaf, ca, now)
			return pool, true
		}
	}
	return "", false
}

func (p *caPool) isRefused(pool string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.refused[pool]
}

// volumeSecret authenticates an instance by its client certificate and
// forwards the call to its tenant's pool.
func (s *Service) volumeSecret(ctx context.Context, env *shared.Envelope, ev *shared.AuditEvent) (bool, error) {
	if env.Evidence.AWSIdentity != "" {
		return s.volumeSecretAWS(ctx, env, ev) // awsid.go; the tenant must allow "aws"
	}
	ev.Kind = shared.AuditKindTenant
	ev.CallerType = "mtls"
	if len(env.Evidence.ClientCerts) == 0 {
		return false, shared.NewError(shared.CodeAuthenticationFailed, "a client certificate (or an AWS instance identity) is required")
	}
	leaf, err := x509.ParseCertificate(env.Evidence.ClientCerts[0])
	if err != nil {
		return false, shared.NewError(shared.CodeAuthenticationFailed, "unreadable client certificate")
	}
	tenantID, instance, ok := instanceIdentity(leaf)
	if !ok {
		return false, shared.NewError(shared.CodeAuthenticationFailed, "client certificate names no sovkeys instance")
	}
	// The chain is verified before the tenant is looked up, so a stranger
	// cannot learn which tenant ids exist from the answers.
	pool, ok := s.verifyInstanceChain(leaf)
	if !ok {
		return false, shared.NewError(shared.CodeAuthenticationFailed, "client certificate is not valid for this service")
	}
	tn, ok := s.tenants.Get(tenantID)
	if !ok || tn.Pool != pool {
		return false, shared.NewError(shared.CodeAccessDenied, "tenant %q is not registered", tenantID)
	}
	if s.cas.isRefused(pool) {
		return false, shared.NewError(shared.CodeAccessDenied, "the instance CA of pool %q changed after it was published; refused", pool)
	}
	ev.Scope, ev.CallerID = tn.ID, instance
	if stopped, why := s.kill.Engaged(killswitch.ScopeTenant, tn.ID); stopped {
		return false, shared.NewError(shared.CodeAccessDenied, "kill switch engaged (%s)", why)
	}
	if tn.Status != registry.TenantEnabled {
		return false, shared.NewError(shared.CodeAccessDenied, "tenant %q is disabled", tn.ID)
	}
	if !slices.Contains(tn.AuthMethods, "mtls") {
		return false, shared.NewError(shared.CodeAccessDenied, "tenant %q does not allow certificate authentication", tn.ID)
	}
	if env.Evidence.InstanceID != instance {
		return false, shared.NewError(shared.CodeAccessDenied, "instance %q may not act for instance %q", instance, env.Evidence.InstanceID)
	}
	if err := s.checkRequestSignature(env, leaf, tn); err != nil { // vssig.go
		return false, err
	}
	if err := s.admitVS(env, ev); err != nil {
		return false, err
	}
	env.Authz = &shared.Authz{
		CallerType: "mtls", CallerID: instance, Pool: tn.Pool, Tenant: tn.ID, EKTName: tn.EKTName,
	}
	if err := s.forward(ctx, env); err != nil {
		return false, err
	}
	return true, nil
}

// admitVS applies the per-instance rate limit to an authenticated caller
// (ev.Scope/ev.CallerID) and validates the body, before any HSM work is queued.
func (s *Service) admitVS(env *shared.Envelope, ev *shared.AuditEvent) error {
	if !s.vsLimit.Allow(ev.Scope + "/" + ev.CallerID) {
		return shared.NewError(shared.CodeThrottling, "request rate of this instance exceeded, retry later")
	}
	return validateVS(env, ev)
}

// validateVS checks the body before any HSM work is queued.
func validateVS(env *shared.Envelope, ev *shared.AuditEvent) error {
	ev.Params = map[string]string{}
	switch env.API {
	case shared.APIVSGenerate:
		r, _, err := vs.ParseGenerate(env.Body)
		if err != nil {
			return err
		}
		ev.Params["volume_uuid"] = r.VolumeUUID
	case shared.APIVSDecrypt:
		r, _, err := vs.ParseDecrypt(env.Body)
		if err != nil {
			return err
		}
		ev.Params["volume_uuid"] = r.VolumeUUID
	case shared.APIVSConvert:
		r, err := vs.ParseConvert(env.Body)
		if err != nil {
			return err
		}
		ev.Params["volume_uuid"] = r.VolumeUUID
		ev.Params["source_instance_id"] = r.SourceInstanceID
	default:
		return shared.NewError(shared.CodeUnsupportedOperation, "unsupported operation %q", env.API)
	}
	return nil
}
