package keyworker

// Automatic key rotation: a key's rotation period lives in KV
// (shared.BucketXKSRotation, set with `sovkeys xks key rotate --every`);
// the keyworkers of the key's pool check it every rotationCheckEvery and
// rotate a key whose period has passed. Of several keyworkers, the one
// whose compare-and-set of the entry wins rotates; the others see the new
// time.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

const (
	rotationCheckEvery = time.Minute
	// minRotationPeriod keeps a typo ("1s") from minting versions.
	minRotationPeriod = time.Hour
	maxRotationPeriod = 10 * 365 * 24 * time.Hour
)

// rotationPolicy is one key's entry in BucketXKSRotation.
type rotationPolicy struct {
	Pool        string        `json:"pool"`
	Keystore    string        `json:"keystore"`
	KeyID       string        `json:"key_id"`
	Label       string        `json:"label"`
	Every       time.Duration `json:"every"`
	LastRotated time.Time     `json:"last_rotated"`
}

func (p rotationPolicy) next() time.Time { return p.LastRotated.Add(p.Every) }

func rotationKey(pool, label string) string {
	return pool + "." + shared.ScopeToken(label)
}

func (s *Service) rotationBucket(ctx context.Context) (jetstream.KeyValue, error) {
	return mesh.EnsureBucket(ctx, s.js, shared.BucketXKSRotation, "sovkeys: automatic rotation of XKS keys", s.cfg.Topology)
}

// schedule sets or clears the rotation period of req's key. A new period
// counts from now; changing it keeps the last rotation time.
func (s *Service) schedule(ctx context.Context, req kwadmin.KeyVersionRequest) (kwadmin.KeyVersionResponse, error) {
	var resp kwadmin.KeyVersionResponse
	every := time.Duration(req.EverySeconds) * time.Second
	if every != 0 && (every < minRotationPeriod || every > maxRotationPeriod) {
		return resp, shared.NewError(shared.CodeValidation, "rotation period must be between %s and %s, or 0 to stop", minRotationPeriod, maxRotationPeriod)
	}
	if _, err := s.hsm.NewestVersion(ctx, req.Label); err != nil {
		return resp, err
	}
	kv, err := s.rotationBucket(ctx)
	if err != nil {
		return resp, err
	}
	key := rotationKey(s.cfg.Pool, req.Label)
	if every == 0 {
		if err := kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return resp, fmt.Errorf("keyworker: clear rotation period: %w", err)
		}
		return resp, nil
	}
	p := rotationPolicy{Pool: s.cfg.Pool, Keystore: req.Keystore, KeyID: req.KeyID, Label: req.Label, Every: every, LastRotated: s.now().UTC()}
	if e, err := kv.Get(ctx, key); err == nil {
		var old rotationPolicy
		if json.Unmarshal(e.Value(), &old) == nil && !old.LastRotated.IsZero() {
			p.LastRotated = old.LastRotated
		}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return resp, fmt.Errorf("keyworker: encode rotation period: %w", err)
	}
	if _, err := kv.Put(ctx, key, data); err != nil {
		return resp, fmt.Errorf("keyworker: store rotation period: %w", err)
	}
	resp.RotateEverySeconds, resp.NextRotation = int64(every/time.Second), p.next().Format(time.RFC3339)
	return resp, nil
}

// rotationDue rotates every key of this pool whose period has passed, and
// returns how many it rotated.
func (s *Service) rotationDue(ctx context.Context) (int, error) {
	kv, err := s.rotationBucket(ctx)
	if err != nil {
		return 0, err
	}
	lister, err := kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("keyworker: list rotation periods: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	rotated := 0
	var errs []error
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue // deleted since the listing
		}
		var p rotationPolicy
		if err := json.Unmarshal(e.Value(), &p); err != nil || p.Pool != s.cfg.Pool || p.Every <= 0 {
			continue
		}
		now := s.now().UTC()
		if now.Before(p.next()) {
			continue
		}
		// Claim this rotation: only the keyworker whose update wins rotates.
		claimed := p
		claimed.LastRotated = now
		data, err := json.Marshal(claimed)
		if err != nil {
			return rotated, fmt.Errorf("keyworker: encode rotation period: %w", err)
		}
		if _, err := kv.Update(ctx, k, data, e.Revision()); err != nil {
			continue // another keyworker of the pool claimed it
		}
		start := s.now()
		kvr, rerr := s.hsm.RotateKey(ctx, p.Label)
		req := kwadmin.KeyVersionRequest{Label: p.Label, Action: "auto-rotate", Keystore: p.Keystore, KeyID: p.KeyID, Operator: "keyworker/" + s.cfg.Pool}
		if aerr := s.auditVersionChange(ctx, req, kvr.Version, kwadmin.KeyVersionResponse{}, start, rerr); aerr != nil {
			errs = append(errs, aerr)
		}
		if rerr != nil {
			errs = append(errs, fmt.Errorf("keyworker: automatic rotation of %q: %w", p.Label, rerr))
			continue
		}
		rotated++
		s.log.Info("key rotated automatically", "keystore", p.Keystore, "key_id", p.KeyID, "version", kvr.Version)
	}
	return rotated, errors.Join(errs...)
}

// autoRotate runs rotationDue until ctx ends.
func (s *Service) autoRotate(ctx context.Context) {
	t := time.NewTicker(rotationCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := s.rotationDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("automatic key rotation", "err", err)
		}
	}
}

// rotationView adds the key's rotation period to resp.
func (s *Service) rotationView(ctx context.Context, label string, resp *kwadmin.KeyVersionResponse) {
	kv, err := s.rotationBucket(ctx)
	if err != nil {
		return
	}
	e, err := kv.Get(ctx, rotationKey(s.cfg.Pool, label))
	if err != nil {
		return
	}
	var p rotationPolicy
	if json.Unmarshal(e.Value(), &p) == nil && p.Every > 0 {
		resp.RotateEverySeconds, resp.NextRotation = int64(p.Every/time.Second), p.next().Format(time.RFC3339)
	}
}
