package keyworker

// One creator of the key hierarchy per HSM, cluster-wide. PKCS#11 has no
// cross-process lock: two keyworkers of one pool unsealed at the same moment
// would each find no domain key and each create one, and two keys under one
// label make every later operation fail. So a keyworker creates (or checks)
// the hierarchy only while it holds a lease in KV, and re-reads the token
// under it (EnsureHierarchy forgets its cached handles first). The seal
// key is made under the same lease.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// hierarchyLeaseTTL frees the lease of a keyworker that died holding it.
// Creating the hierarchy takes well under a second on any HSM.
const hierarchyLeaseTTL = 30 * time.Second

// ensureHierarchyLocked runs EnsureHierarchy while holding the pool's lease.
func (s *Service) ensureHierarchyLocked(ctx context.Context) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return err
	}
	release, err := s.acquireLease(ctx, kv, shared.PKIHierarchyLock(s.cfg.Pool), hierarchyLeaseTTL)
	if err != nil {
		return err
	}
	defer release()
	if err := s.hsm.EnsureHierarchy(ctx); err != nil {
		return err
	}
	// The seal key too (it seals the pool's box key at first start): two
	// keyworkers creating it at once left two keys under its label, and
	// every keyworker of the pool then failed to open the pinned box key.
	if _, err := s.hsm.CreateAESKey(ctx, hsm.SealKeyLabel, true, true); err != nil && !errors.Is(err, hsm.ErrKeyExists) {
		return fmt.Errorf("keyworker: seal key: %w", err)
	}
	return nil
}

// acquireLease waits until it holds the KV lease key. A lease older than
// ttl (its holder died) is taken over, compare-and-swap on its revision.
func (s *Service) acquireLease(ctx context.Context, kv jetstream.KeyValue, key string, ttl time.Duration) (release func(), err error) {
	for waited := false; ; waited = true {
		now := s.now()
		rev, err := kv.Create(ctx, key, []byte(now.UTC().Format(time.RFC3339Nano)))
		if err == nil {
			return func() { _ = kv.Delete(context.WithoutCancel(ctx), key, jetstream.LastRevision(rev)) }, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("keyworker: lease %s: %w", key, err)
		}
		if e, gerr := kv.Get(ctx, key); gerr == nil {
			if at, perr := time.Parse(time.RFC3339Nano, string(e.Value())); perr != nil || now.Sub(at) > ttl {
				s.log.Warn("taking over a stale lease", "key", key, "since", string(e.Value()))
				_ = kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
				continue
			}
		}
		if !waited {
			s.log.Info("waiting for another keyworker of the pool to create the key hierarchy", "key", key)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}
