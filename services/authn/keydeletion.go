package authn

// Scheduled key deletion (as KMS does it). A person schedules an XKS key
// for deletion with a waiting period (a signed registry change, two admins
// by default): the key's status becomes PENDING_DELETION, so authn refuses
// every use of it and KMS sees it DISABLED. Until DeleteAfter an admin may
// cancel (the key comes back DISABLED). After it, authn's sweep asks the
// key's keyworker pool to destroy every HSM version of the key (the
// keyworker checks the registry itself) and then removes the registry
// entry: ciphertexts under the key never decrypt again.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// KeyDeletionConfig bounds scheduled key deletion.
type KeyDeletionConfig struct {
	// MinWait is the shortest waiting period a deletion may be scheduled
	// with (KMS: 7 days; 0 = that default).
	MinWait time.Duration
	// Sweep is how often authn looks for keys past their date (0 = 1m).
	Sweep time.Duration
}

// DefaultKeyDeletionMinWait is KMS's shortest waiting period.
const DefaultKeyDeletionMinWait = 7 * 24 * time.Hour

// Validate checks the configuration.
func (c KeyDeletionConfig) Validate() error {
	if c.MinWait < 0 || c.Sweep < 0 || c.Sweep > time.Hour {
		return fmt.Errorf("%w: key deletion: minimum wait >= 0, sweep in [0, 1h]", shared.ErrConfigValidation)
	}
	return nil
}

func (c KeyDeletionConfig) minWait() time.Duration {
	if c.MinWait == 0 {
		return DefaultKeyDeletionMinWait
	}
	return c.MinWait
}

func (c KeyDeletionConfig) sweep() time.Duration {
	if c.Sweep == 0 {
		return time.Minute
	}
	return c.Sweep
}

// checkKeyChange validates the value of a key deletion change: scheduled
// with a waiting period of at least the minimum, or cancelled to DISABLED.
func (s *Service) checkKeyChange(w kwadmin.RegistryWrite) error {
	if w.Bucket != shared.BucketXKSKeys {
		return nil
	}
	var k registry.Key
	if err := json.Unmarshal(w.Value, &k); err != nil {
		return shared.NewError(shared.CodeValidation, "malformed key entry: %v", err)
	}
	switch w.API {
	case "key.schedule_deletion":
		if k.Status != registry.StatusPendingDeletion || k.DeleteAfter == nil || k.DeleteAfter.Before(s.now().Add(s.cfg.KeyDeletion.minWait())) {
			return shared.NewError(shared.CodeValidation, "a key deletion waits at least %s", s.cfg.KeyDeletion.minWait())
		}
	case "key.cancel_deletion":
		if k.Status != registry.StatusDisabled || k.DeleteAfter != nil {
			return shared.NewError(shared.CodeValidation, "a cancelled deletion leaves the key DISABLED")
		}
	case "key.enable", "key.disable":
		if k.DeleteAfter != nil || k.Status == registry.StatusPendingDeletion {
			return shared.NewError(shared.CodeInvalidState, "the key is scheduled for deletion: cancel the deletion first")
		}
	}
	return nil
}

// sweepKeyDeletions destroys the keys whose waiting period is over, until
// ctx ends. Every authn runs it; the work is idempotent.
func (s *Service) sweepKeyDeletions(ctx context.Context) {
	t := time.NewTicker(s.cfg.KeyDeletion.sweep())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.sweepOnce(ctx); err != nil {
			s.log.Warn("key deletion sweep", "err", err)
		}
	}
}

func (s *Service) sweepOnce(ctx context.Context) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketXKSKeys, "sovkeys: XKS keys", s.cfg.Topology)
	if err != nil {
		return err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil
		}
		return err
	}
	var due []string
	for key := range lister.Keys() {
		due = append(due, key)
	}
	for _, key := range due {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var k registry.Key
		if json.Unmarshal(e.Value(), &k) != nil || k.Status != registry.StatusPendingDeletion || k.DeleteAfter == nil || s.now().Before(*k.DeleteAfter) {
			continue
		}
		if err := s.destroyKey(ctx, kv, key, e.Revision(), k); err != nil {
			s.log.Warn("key deletion failed; retried at the next sweep", "keystore", k.Keystore, "key_id", k.KeyID, "err", err)
		}
	}
	return nil
}

// destroyKey audits, has the HSM versions destroyed, removes the entry and
// audits the result.
func (s *Service) destroyKey(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64, k registry.Key) error {
	ks, ok := s.keystores.Get(registry.KeystoreKey(k.Keystore))
	if !ok {
		return fmt.Errorf("key store %q unknown", k.Keystore)
	}
	params := map[string]string{"keystore": k.Keystore, "key_id": k.KeyID, "label": k.Label, "pool": ks.Pool,
		"delete_after": k.DeleteAfter.UTC().Format(time.RFC3339)}
	if err := s.auditDeletion(ctx, "intent", params, nil); err != nil {
		return err
	}
	var resp kwadmin.KeyDestroyResponse
	err := kwadmin.Call(kwadmin.WithAnswerKeys(ctx, s.answers), s.nc, ks.Pool, kwadmin.EndpointKeyDestroy, kwadmin.KeyDestroyRequest{Keystore: k.Keystore, KeyID: k.KeyID, Label: k.Label}, &resp)
	if err == nil {
		params["versions_destroyed"] = strconv.Itoa(resp.Destroyed)
		if derr := kv.Delete(ctx, key, jetstream.LastRevision(rev)); derr != nil && !mesh.IsWrongLastSequence(derr) {
			err = fmt.Errorf("remove registry entry: %w", derr)
		}
	}
	if aerr := s.auditDeletion(ctx, "result", params, err); aerr != nil && err == nil {
		return aerr
	}
	if err == nil {
		s.log.Warn("key destroyed after its deletion waiting period", "keystore", k.Keystore, "key_id", k.KeyID, "versions", resp.Destroyed)
	}
	return err
}

func (s *Service) auditDeletion(ctx context.Context, phase string, params map[string]string, opErr error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	p := map[string]string{"phase": phase}
	for k, v := range params {
		p[k] = v
	}
	now := s.now()
	ev := &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: "kdel-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindOperator,
		API: "operator.key.destroy", Service: shared.AuditServiceAuthn, Start: now, End: now,
		CallerType: "service", CallerID: shared.AuditServiceAuthn, Result: shared.ResultSuccess, Params: p,
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), shared.MessageOf(opErr)
	}
	return mesh.PublishAudit(ctx, s.js, ev)
}
