package keyworker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// ektCache keeps EKTs (wrapped tenant keys, never clear key material) read
// from the write-once store; an EKT never changes once written.
type ektCache struct {
	mu  sync.Mutex
	m   map[string][]byte
	max int
}

func newEKTCache(max int) *ektCache { return &ektCache{m: map[string][]byte{}, max: max} }

func (c *ektCache) get(name string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[name]
	return b, ok
}

func (c *ektCache) put(name string, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m) // bounded; refilled from the store on demand
	}
	c.m[name] = b
}

// ekt returns the EKT named name, creating it (in the HSM, write-once in the
// store) when create is set. Concurrent first calls, in this process or any
// other, converge on the one EKT the store accepted first.
func (s *Service) ekt(ctx context.Context, name string, create bool) ([]byte, error) {
	if b, ok := s.ekts.get(name); ok {
		return b, nil
	}
	b, err := s.store.Get(ctx, name)
	if err == nil {
		s.ekts.put(name, b)
		return b, nil
	}
	if !errors.Is(err, writeonce.ErrNotFound) {
		s.log.Error("ekt store read failed", "ekt", name, "err", err)
		return nil, shared.NewError(shared.CodeDependencyTimeout, "key store unavailable")
	}
	if !create {
		return nil, shared.NewError(shared.CodeInvalidState, "no tenant key exists yet; call generate-secret first")
	}
	fresh, err := s.hsm.NewEKT(ctx, hsm.EKTContext(name))
	if err != nil {
		return nil, err
	}
	switch err := s.store.Create(ctx, name, fresh); {
	case err == nil:
		s.log.Info("tenant master key created", "ekt", name, "store", s.store.Backend())
		s.ekts.put(name, fresh)
		return fresh, nil
	case errors.Is(err, writeonce.ErrExists):
		// Another caller won the race: use the stored EKT, discard ours.
		b, gerr := s.store.Get(ctx, name)
		if gerr != nil {
			return nil, shared.NewError(shared.CodeDependencyTimeout, "key store unavailable")
		}
		s.ekts.put(name, b)
		return b, nil
	default:
		s.log.Error("ekt store write failed", "ekt", name, "err", err)
		return nil, shared.NewError(shared.CodeDependencyTimeout, "key store unavailable")
	}
}

func (s *Service) sign(ctx context.Context, blob []byte) ([]byte, error) {
	return s.hsm.SignSHA256(ctx, hsm.SigningKeyLabel, blob)
}

func (s *Service) vsGenerate(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	req, pub, err := vs.ParseGenerate(env.Body)
	if err != nil {
		return nil, err
	}
	params["volume_uuid"] = req.VolumeUUID
	ekt, err := s.ekt(ctx, env.Authz.EKTName, true)
	if err != nil {
		return nil, err
	}
	enc, wrapped, err := s.hsm.GenerateSecret(ctx, ekt, hsm.EKTContext(env.Authz.EKTName),
		hsm.SecretContext(env.Authz.Tenant, env.Evidence.InstanceID, req.VolumeUUID), pub)
	if err != nil {
		return nil, err
	}
	resp := vs.GenerateResponse{EncryptedSecret: enc, WrappedSecret: wrapped}
	if resp.EncryptedSecretSignature, err = s.sign(ctx, enc); err != nil {
		return nil, err
	}
	if resp.WrappedSecretSignature, err = s.sign(ctx, wrapped); err != nil {
		return nil, err
	}
	return marshal(resp)
}

func (s *Service) vsDecrypt(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	req, pub, err := vs.ParseDecrypt(env.Body)
	if err != nil {
		return nil, err
	}
	params["volume_uuid"] = req.VolumeUUID
	ekt, err := s.ekt(ctx, env.Authz.EKTName, false)
	if err != nil {
		return nil, err
	}
	wrapped, err := s.hsm.DecryptSecret(ctx, ekt, hsm.EKTContext(env.Authz.EKTName), req.EncryptedSecret,
		hsm.SecretContext(env.Authz.Tenant, env.Evidence.InstanceID, req.VolumeUUID), pub)
	if err != nil {
		return nil, err
	}
	resp := vs.DecryptResponse{WrappedSecret: wrapped}
	if resp.WrappedSecretSignature, err = s.sign(ctx, wrapped); err != nil {
		return nil, err
	}
	return marshal(resp)
}

func (s *Service) vsConvert(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	req, err := vs.ParseConvert(env.Body)
	if err != nil {
		return nil, err
	}
	params["volume_uuid"] = req.VolumeUUID
	params["source_instance_id"] = req.SourceInstanceID
	params["target_instance_id"] = env.Evidence.InstanceID
	ekt, err := s.ekt(ctx, env.Authz.EKTName, false)
	if err != nil {
		return nil, err
	}
	// Same tenant only: both contexts name the caller's verified tenant.
	enc, err := s.hsm.ConvertSecret(ctx, ekt, hsm.EKTContext(env.Authz.EKTName), req.EncryptedSecret,
		hsm.SecretContext(env.Authz.Tenant, req.SourceInstanceID, req.VolumeUUID),
		hsm.SecretContext(env.Authz.Tenant, env.Evidence.InstanceID, req.VolumeUUID))
	if err != nil {
		return nil, err
	}
	resp := vs.ConvertResponse{EncryptedSecret: enc}
	if resp.EncryptedSecretSignature, err = s.sign(ctx, enc); err != nil {
		return nil, err
	}
	return marshal(resp)
}

var errNoStore = fmt.Errorf("%w: keyworker: an EKT store is required", shared.ErrConfigValidation)
