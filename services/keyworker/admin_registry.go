package keyworker

// Registry changes by people. Key stores, XKS keys and tenants are written
// by the keyworkers on a person's signed request (kwadmin.RegistryWrite),
// never by a person's credential: the keyworker checks that the operation
// belongs to the bucket, that the signer holds the role it needs, holds
// the change for approval when the quorum policy says so, audits the intent
// naming the person and writes the bucket (docs/security.md, "People").

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// registryAPIs says, per bucket, which operator commands may change it and
// the role each needs.
func registryAPIs() map[string]map[string]natsauth.Role {
	return map[string]map[string]natsauth.Role{
		shared.BucketKeystores: {
			"keystore.create": natsauth.RoleAdmin, "keystore.policy_set": natsauth.RoleAdmin,
			"keystore.rotate_credential": natsauth.RoleSecurity, "keystore.retire_credential": natsauth.RoleSecurity,
		},
		shared.BucketXKSKeys: {"key.create": natsauth.RoleAdmin, "key.enable": natsauth.RoleAdmin, "key.disable": natsauth.RoleAdmin},
		shared.BucketTenants: {"tenant.create": natsauth.RoleAdmin, "tenant.enable": natsauth.RoleAdmin, "tenant.disable": natsauth.RoleAdmin},
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

func (s *Service) adminRegistry(ctx context.Context, data []byte) (any, error) {
	var w kwadmin.RegistryWrite
	if err := decode(data, &w); err != nil {
		return nil, err
	}
	op := kwadmin.RegistryOp(w.API, w.Params)
	role, err := registryRole(w)
	if err != nil {
		if aerr := s.auditAdmin(ctx, op, "refused", "unverified", registryParams(w), err); aerr != nil {
			s.log.Error("registry refusal: audit publish failed", "err", aerr)
		}
		return nil, err
	}
	need, err := s.quorumOf(ctx, op)
	if err != nil {
		return nil, err
	}
	if need > 1 {
		summary := fmt.Sprintf("%s (%s %s)", w.API, w.Bucket, w.Key)
		p, err := s.holdForQuorum(ctx, op, data, role, w.Params["keystore"], summary, registryParams(w), need)
		if err != nil {
			return nil, err
		}
		return kwadmin.RegistryWriteResponse{Pending: p.ID, Need: need, Signers: p.Signers()}, nil
	}
	ctx, _, err = s.admitSignedAs(ctx, op, data, role)
	if err != nil {
		return nil, err
	}
	return s.signedApply(ctx, op, registryParams(w), func(ctx context.Context) (any, error) { return s.applyRegistry(ctx, w) })
}

// applyRegistry writes a verified change.
func (s *Service) applyRegistry(ctx context.Context, w kwadmin.RegistryWrite) (any, error) {
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
		err = kv.Delete(ctx, w.Key)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || mesh.IsWrongLastSequence(err) {
		return kwadmin.RegistryWriteResponse{Conflict: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("keyworker: registry %s %s: %w", w.Bucket, w.Key, err)
	}
	return kwadmin.RegistryWriteResponse{Revision: rev}, nil
}
