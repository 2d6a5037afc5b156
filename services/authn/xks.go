package authn

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// xks authenticates and authorises an XKS request. It either forwards it to
// a keyworker (forwarded true) or returns the answer (health) or the error
// to send back.
func (s *Service) xks(ctx context.Context, env *shared.Envelope, ev *shared.AuditEvent) (forwarded bool, body []byte, err error) {
	ks, ok := s.keystores.Get(registry.KeystoreKey(env.KeyStore))
	if !ok {
		unauthenticatedScope(ev) // never a scope per made-up prefix
		return false, nil, shared.NewError(shared.CodeInvalidURIPath, "no key store at this uri prefix")
	}
	in := SigV4Input{
		Method: env.Evidence.Method, RawPath: env.Evidence.Path, RawQuery: env.Evidence.RawQuery,
		Host: env.Evidence.Host, Header: env.Evidence.Header, Body: env.Body,
	}
	auth, err := authorizationOf(in) // parsed once: the id picks the credentials, then the signature is checked
	if err != nil {
		return false, nil, err
	}
	akid := auth.AccessKeyID
	ev.CallerType, ev.CallerID = "sigv4", akid
	creds, err := s.credentials(ctx, &ks, akid)
	if err != nil {
		return false, nil, err
	}
	if _, err := s.verifier.verifyParsed(in, auth, creds); err != nil {
		return false, nil, err
	}
	if !s.xksLimit.Allow(ks.Prefix + "/" + akid) {
		return false, nil, shared.NewError(shared.CodeThrottling, "request rate of this credential exceeded, retry later")
	}

	md, work, err := parseRequest(env.API, env.Body)
	if err != nil {
		return false, nil, err
	}
	ev.Principal, ev.KMSRequestID, ev.KMSOperation = md.AWSPrincipalArn, md.KMSRequestID, md.KMSOperation
	if env.API == shared.APIXKSHealth {
		// Health is never behind secondary authorization.
		body, err := s.health(ctx)
		return false, body, err
	}
	if rule, ok := checkPolicy(ks.Policy, md); !ok {
		s.log.Warn("access denied by key store policy", "request_id", env.ID, "kms_request_id", md.KMSRequestID,
			"keystore", ks.Prefix, "rule", rule, "principal", md.AWSPrincipalArn, "vpc", md.AWSSourceVpc, "vpce", md.AWSSourceVpce)
		ev.Params = map[string]string{"rule": rule}
		return false, nil, shared.NewError(shared.CodeAccessDenied, "denied by key store policy (%s)", rule)
	}
	key, ok := s.keys.Get(registry.KeyKey(env.KeyStore, env.KeyID))
	if !ok {
		return false, nil, shared.NewError(shared.CodeKeyNotFound, "key %q not found in this key store", env.KeyID)
	}
	if stopped, why := s.kill.Engaged(killswitch.ScopeKeystore, env.KeyStore); stopped {
		// Metadata still answers, reporting the key DISABLED.
		key.Status = registry.StatusDisabled
		if env.API != shared.APIXKSMetadata {
			return false, nil, shared.NewError(shared.CodeInvalidState, "kill switch engaged (%s)", why)
		}
	}
	if key.Status != registry.StatusEnabled && env.API != shared.APIXKSMetadata {
		return false, nil, shared.NewError(shared.CodeInvalidState, "key %q is disabled", env.KeyID)
	}
	if work != nil {
		// The keyworker reads the parsed request, not the caller's JSON.
		env.Body, env.BodyForm = work, shared.BodyFormXKSWork
	}
	env.Authz = &shared.Authz{
		CallerType: "sigv4", CallerID: akid, Principal: md.AWSPrincipalArn,
		KMSRequestID: md.KMSRequestID, KMSOperation: md.KMSOperation,
		Pool: ks.Pool, KeyLabel: key.Label, KeyStatus: key.Status,
	}
	if err := s.forward(ctx, env); err != nil {
		return false, nil, err
	}
	return true, nil, nil
}

// parseRequest validates the body for api and returns its requestMetadata
// and, for encrypt and decrypt, the request in the work form a keyworker
// reads (xks.ParseEncryptWork): the body is parsed once, here.
func parseRequest(api shared.API, body []byte) (md xks.RequestMetadata, work []byte, err error) {
	switch api {
	case shared.APIXKSEncrypt:
		r, err := xks.ParseEncrypt(body)
		if err != nil {
			return xks.RequestMetadata{}, nil, err
		}
		work = r.AppendWork(make([]byte, 0, 32+len(r.Plaintext)+len(r.AdditionalAuthenticatedData)))
		clear(r.Plaintext)
		return r.RequestMetadata, work, nil
	case shared.APIXKSDecrypt:
		r, err := xks.ParseDecrypt(body)
		if err != nil {
			return xks.RequestMetadata{}, nil, err
		}
		return r.RequestMetadata, r.AppendWork(make([]byte, 0, 64+len(r.Ciphertext)+len(r.AdditionalAuthenticatedData))), nil
	case shared.APIXKSMetadata:
		r, err := xks.ParseMetadata(body)
		if err != nil {
			return xks.RequestMetadata{}, nil, err
		}
		return r.RequestMetadata, nil, nil
	case shared.APIXKSHealth:
		r, err := xks.ParseHealth(body)
		if err != nil {
			return xks.RequestMetadata{}, nil, err
		}
		return r.RequestMetadata, nil, nil
	}
	return xks.RequestMetadata{}, nil, shared.NewError(shared.CodeUnsupportedOperation, "unsupported operation %q", api)
}

// poolHealthWait bounds one pool's health answer.
const poolHealthWait = 2 * time.Second

// health asks every registered keyworker pool for a real HSM check.
func (s *Service) health(ctx context.Context) ([]byte, error) {
	resp := xks.HealthResponse{
		XksProxyFleetSize: s.fleetSize(ctx),
		XksProxyVendor:    "sovkeys",
		XksProxyModel:     s.cfg.ProxyModel,
		EkmVendor:         s.cfg.EKMVendor,
		EkmFleetDetails:   []xks.EkmFleetDetail{},
	}
	pools, err := s.poolNames(ctx)
	if err != nil {
		return nil, err
	}
	// Every pool is asked at once, each within poolHealthWait, so one dead
	// pool never delays the answer about the others. Each keyworker answers
	// from its last real HSM round trip (at most its HealthTTL, <= 60 s, old).
	slices.Sort(pools)
	if len(pools) > xks.MaxEkmFleetDetails {
		s.log.Warn("more keyworker pools than xks health can list", "pools", len(pools), "listed", xks.MaxEkmFleetDetails)
		pools = pools[:xks.MaxEkmFleetDetails]
	}
	details := make([]xks.EkmFleetDetail, len(pools))
	var wg sync.WaitGroup
	for i, pool := range pools {
		details[i] = xks.EkmFleetDetail{ID: pool, Model: "unknown", HealthStatus: kwadmin.HealthUnavailable}
		if s.kill.AllEngaged() {
			details[i].Model = "kill switch engaged"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, poolHealthWait)
			defer cancel()
			var h kwadmin.HealthResponse
			if err := kwadmin.Call(pctx, s.nc, pool, kwadmin.EndpointHealth, struct{}{}, &h); err != nil {
				s.log.Warn("keyworker pool health failed", "pool", pool, "err", err)
				return
			}
			details[i].Model, details[i].HealthStatus = h.Model, h.Status
		}()
	}
	wg.Wait()
	resp.EkmFleetDetails = append(resp.EkmFleetDetails, details...)
	b, err := json.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("authn: encode health: %w", err)
	}
	return b, nil
}

func (s *Service) poolNames(ctx context.Context) ([]string, error) {
	lister, err := s.pools.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("authn: list pools: %w", err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out, nil
}
