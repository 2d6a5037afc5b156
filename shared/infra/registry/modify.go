package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// ModifyAttempts is how many compare-and-set rounds Modify tries before it
// gives up with ErrConflict.
const ModifyAttempts = 5

// Modify reads the JSON entry key of kv, applies fn to it and writes it back
// only if nobody changed it meanwhile (compare-and-set on the revision),
// retrying with a fresh read on a conflict. It returns the value as written.
// ErrNotFound if the entry does not exist; an error from fn stops the change
// and is returned as is; ErrConflict after ModifyAttempts lost races.
func Modify[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(*T) error) (*T, error) {
	for range ModifyAttempts {
		var v T
		rev, err := get(ctx, kv, key, &v)
		if err != nil {
			return nil, err
		}
		if err := fn(&v); err != nil {
			return nil, err
		}
		err = update(ctx, kv, key, &v, rev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return &v, nil
	}
	return nil, fmt.Errorf("%s %q: %w after %d attempts, retry", kv.Bucket(), key, ErrConflict, ModifyAttempts)
}

// ModifyKeystore applies fn to a key store with Modify.
func (r *Registry) ModifyKeystore(ctx context.Context, prefix string, fn func(*Keystore) error) (*Keystore, error) {
	return Modify(ctx, r.Keystores, KeystoreKey(prefix), fn)
}

// ModifyKey applies fn to an XKS key with Modify.
func (r *Registry) ModifyKey(ctx context.Context, prefix, keyID string, fn func(*Key) error) (*Key, error) {
	return Modify(ctx, r.Keys, KeyKey(prefix, keyID), fn)
}

// Modify applies fn to a tenant with Modify.
func (r *Tenants) Modify(ctx context.Context, id string, fn func(*Tenant) error) (*Tenant, error) {
	return Modify(ctx, r.KV, id, fn)
}
