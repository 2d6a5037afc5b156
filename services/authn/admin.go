package authn

// People's registry changes. Key stores, XKS keys and tenants are written
// by authn on a person's signed request (kwadmin.RegistryWrite on
// sovkeys.authnadmin.registry), never by a person's credential: authn checks
// that the operation belongs to the bucket, that the signer holds the role
// it needs, holds the change for approval when the quorum policy says so,
// audits the intent naming the person and writes the bucket
// (docs/security.md, "People"). Authn hosts it because it already decides
// every request from these buckets; the kill switch stays out of its reach.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// adminTimeout bounds one admin request.
const adminTimeout = 10 * time.Second

// registryAPIs says, per bucket, which operator commands may change it and
// the role each needs.
func registryAPIs() map[string]map[string]natsauth.Role {
	return map[string]map[string]natsauth.Role{
		shared.BucketKeystores: {
			"keystore.create": natsauth.RoleAdmin, "keystore.policy_set": natsauth.RoleAdmin,
			"keystore.rotate_credential": natsauth.RoleSecurity, "keystore.retire_credential": natsauth.RoleSecurity,
			"keystore.delete": natsauth.RoleAdmin,
		},
		shared.BucketXKSKeys: {"key.create": natsauth.RoleAdmin, "key.enable": natsauth.RoleAdmin, "key.disable": natsauth.RoleAdmin,
			"key.schedule_deletion": natsauth.RoleAdmin, "key.cancel_deletion": natsauth.RoleAdmin},
		shared.BucketTenants: {"tenant.create": natsauth.RoleAdmin, "tenant.enable": natsauth.RoleAdmin, "tenant.disable": natsauth.RoleAdmin,
			"tenant.delete": natsauth.RoleAdmin},
		// Changes of the roster and its quorum: authn holds and decides them
		// but never writes the roster (bootstrap's alone); the holder of the
		// trust seeds applies an approved one (roster/people.go).
		shared.BucketOperators: {"person.add": natsauth.RoleSecurity, "person.remove": natsauth.RoleSecurity, "quorum.set": natsauth.RoleSecurity},
	}
}

// registryRole checks w's bucket, key, mode and operation and returns the
// role it needs.
func registryRole(w kwadmin.RegistryWrite) (natsauth.Role, error) {
	apis, ok := registryAPIs()[w.Bucket]
	if !ok {
		return "", shared.NewError(shared.CodeAccessDenied, "bucket %q is not changed through admin requests", w.Bucket)
	}
	role, ok := apis[w.API]
	if !ok {
		return "", shared.NewError(shared.CodeAccessDenied, "operation %q does not change bucket %s", w.API, w.Bucket)
	}
	switch {
	case w.Key == "" || len(w.Key) > 256 || strings.ContainsAny(w.Key, "*> \t\r\n"):
		return "", shared.NewError(shared.CodeValidation, "invalid registry key %q", w.Key)
	case !slices.Contains([]string{kwadmin.RegistryCreate, kwadmin.RegistryUpdate, kwadmin.RegistryPut, kwadmin.RegistryDelete}, w.Mode):
		return "", shared.NewError(shared.CodeValidation, "invalid registry write mode %q", w.Mode)
	case w.Mode != kwadmin.RegistryDelete && (len(w.Value) == 0 || len(w.Value) > 64<<10):
		return "", shared.NewError(shared.CodeValidation, "registry value must be 1 byte to 64 KiB")
	case (w.Mode == kwadmin.RegistryDelete) != strings.HasSuffix(w.API, ".delete"):
		return "", shared.NewError(shared.CodeValidation, "operation %q does not %s", w.API, w.Mode)
	}
	return role, nil
}

func registryParams(w kwadmin.RegistryWrite) map[string]string {
	p := map[string]string{"bucket": w.Bucket, "key": w.Key, "mode": w.Mode}
	for k, v := range w.Params {
		p[k] = v
	}
	return p
}

// startAdmin serves sovkeys.authnadmin.{registry,approve,reject}.
func (s *Service) startAdmin() (micro.Service, error) {
	s.desk = &roster.Desk{JS: s.js, Service: shared.AuditServiceAuthn, Place: roster.PlaceAuthn,
		Topology: s.cfg.Topology, Log: s.log, Now: s.now}
	svc, err := micro.AddService(s.nc, micro.Config{Name: "sovkeys-authn-admin", Version: "1.0.0",
		Description: "sovkeys authn: people's signed registry changes"})
	if err != nil {
		return nil, fmt.Errorf("authn: admin service: %w", err)
	}
	g := svc.AddGroup(strings.TrimSuffix(shared.SubjectAuthnAdminPrefix, "."), micro.WithGroupQueueGroup("authnadmin"))
	for name, fn := range map[string]func(context.Context, []byte, string) (any, error){
		shared.EndpointRegistry: s.adminRegistry,
		shared.EndpointApprove: func(ctx context.Context, data []byte, h string) (any, error) {
			return s.desk.Approve(ctx, data, h, s.applyApproved)
		},
		shared.EndpointReject: func(ctx context.Context, data []byte, h string) (any, error) { return s.desk.Reject(ctx, data, h) },
	} {
		if err := g.AddEndpoint(name, micro.HandlerFunc(func(req micro.Request) {
			ctx, cancel := context.WithTimeout(context.Background(), adminTimeout) //nolint:contextcheck // a micro handler has no caller context
			defer cancel()
			resp, err := fn(ctx, req.Data(), req.Headers().Get(kwadmin.HeaderSignature))
			if err != nil {
				if shared.CodeOf(err) == shared.CodeInternal {
					s.log.Error("admin request failed", "endpoint", name, "err", err)
				}
				_ = req.Error(string(shared.CodeOf(err)), shared.MessageOf(err), nil)
				return
			}
			_ = req.RespondJSON(resp)
		})); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("authn: admin endpoint %s: %w", name, err)
		}
	}
	return svc, nil
}

func (s *Service) adminRegistry(ctx context.Context, data []byte, h string) (any, error) {
	var w kwadmin.RegistryWrite
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, shared.NewError(shared.CodeValidation, "malformed admin request: %v", err)
	}
	op := kwadmin.RegistryOp(w.API, w.Params)
	role, err := registryRole(w)
	if err == nil {
		err = s.checkKeyChange(w)
	}
	if err != nil {
		return nil, s.desk.Refuse(ctx, op, registryParams(w), err)
	}
	need, err := s.desk.Need(ctx, op)
	if err != nil {
		return nil, err
	}
	if need > 1 {
		p, err := s.desk.Hold(ctx, op, data, h, role, w.Params["keystore"], fmt.Sprintf("%s (%s %s)", w.API, w.Bucket, w.Key), registryParams(w), need)
		if err != nil {
			return nil, err
		}
		return kwadmin.RegistryWriteResponse{Pending: p.ID, Need: need, Signers: p.Signers()}, nil
	}
	person, _, err := s.desk.Admit(ctx, op, data, h, role)
	if err != nil {
		return nil, err
	}
	return s.desk.Apply(ctx, op, person.Name, registryParams(w), func(ctx context.Context) (any, error) { return s.applyRegistry(ctx, w) })
}

// applyApproved applies a held registry change whose quorum is complete.
func (s *Service) applyApproved(ctx context.Context, p *roster.Pending, approved map[string]string) (any, error) {
	var w kwadmin.RegistryWrite
	if err := json.Unmarshal(p.Body, &w); err != nil || kwadmin.RegistryOp(w.API, w.Params) != p.Op {
		return nil, shared.NewError(shared.CodeValidation, "request %s holds no registry change", p.ID)
	}
	params := registryParams(w)
	for k, v := range approved {
		params[k] = v
	}
	return s.desk.Apply(ctx, p.Op, p.Requester(), params, func(ctx context.Context) (any, error) { return s.applyRegistry(ctx, w) })
}

// applyRegistry writes a verified change.
func (s *Service) applyRegistry(ctx context.Context, w kwadmin.RegistryWrite) (any, error) {
	if w.Bucket == shared.BucketOperators {
		return kwadmin.RegistryWriteResponse{}, nil // approved: bootstrap applies it
	}
	kv, err := mesh.EnsureBucket(ctx, s.js, w.Bucket, "sovkeys: "+w.Bucket, s.cfg.Topology)
	if err != nil {
		return nil, err
	}
	var rev uint64
	switch w.Mode {
	case kwadmin.RegistryCreate:
		rev, err = kv.Create(ctx, w.Key, w.Value)
	case kwadmin.RegistryUpdate:
		rev, err = kv.Update(ctx, w.Key, w.Value, w.Revision)
	case kwadmin.RegistryPut:
		rev, err = kv.Put(ctx, w.Key, w.Value)
	case kwadmin.RegistryDelete:
		if err = s.checkDeletable(ctx, w); err == nil {
			err = kv.Delete(ctx, w.Key)
		}
	}
	if errors.Is(err, jetstream.ErrKeyExists) || mesh.IsWrongLastSequence(err) {
		return kwadmin.RegistryWriteResponse{Conflict: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("authn: registry %s %s: %w", w.Bucket, w.Key, err)
	}
	return kwadmin.RegistryWriteResponse{Revision: rev}, nil
}

// checkDeletable refuses deleting a key store that still has keys (KMS's
// rule too: delete or move the keys first) and anything that does not exist.
func (s *Service) checkDeletable(ctx context.Context, w kwadmin.RegistryWrite) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, w.Bucket, "sovkeys: "+w.Bucket, s.cfg.Topology)
	if err != nil {
		return err
	}
	if _, err := kv.Get(ctx, w.Key); err != nil {
		return shared.NewError(shared.CodeKeyNotFound, "%s %s does not exist", w.Bucket, w.Key)
	}
	if w.Bucket != shared.BucketKeystores {
		return nil
	}
	keys, err := mesh.EnsureBucket(ctx, s.js, shared.BucketXKSKeys, "sovkeys: XKS keys", s.cfg.Topology)
	if err != nil {
		return err
	}
	lister, err := keys.ListKeysFiltered(ctx, w.Key+".>")
	if err != nil {
		return fmt.Errorf("authn: keys of %s: %w", w.Key, err)
	}
	n := 0
	for range lister.Keys() {
		n++
	}
	if n > 0 {
		return shared.NewError(shared.CodeInvalidState, "key store %s still has %d key(s): delete them first", w.Key, n)
	}
	return nil
}
