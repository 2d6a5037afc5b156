// Package registry stores the XKS key stores and keys in JetStream KV. Every
// write is a compare-and-set on the entry's revision, so concurrent operators
// and services on a cluster never overwrite each other silently.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Key status values, as XKS reports them.
const (
	StatusEnabled  = "ENABLED"
	StatusDisabled = "DISABLED"
	// StatusPendingDeletion: scheduled for deletion (KMS sees DISABLED);
	// after DeleteAfter authn has the key's HSM versions destroyed and the
	// entry removed, unless the deletion is cancelled first.
	StatusPendingDeletion = "PENDING_DELETION"
)

// MaxCredentials is how many credentials a key store holds at once, so a
// rotation never takes the store offline.
const MaxCredentials = 2

var (
	// ErrNotFound: no such key store or key.
	ErrNotFound = errors.New("registry: not found")
	// ErrExists: a create found the entry already there.
	ErrExists = errors.New("registry: already exists")
	// ErrConflict: a concurrent writer changed the entry; retry.
	ErrConflict = errors.New("registry: concurrent update")
)

// Credential is one SigV4 credential of a key store. The secret is stored
// only sealed by the pool's HSM (SealedSecret); nobody stores it in clear.
type Credential struct {
	AccessKeyID  string    `json:"access_key_id"`
	SealedSecret []byte    `json:"sealed_secret"`
	Created      time.Time `json:"created"`
}

// Policy is the secondary authorization of a key store. An empty list allows
// any value; a non-empty list must match. Principal entries may end in "*"
// to match a prefix.
type Policy struct {
	AllowedPrincipals []string `json:"allowed_principals,omitempty"`
	AllowedVPCs       []string `json:"allowed_vpcs,omitempty"`
	AllowedVPCEs      []string `json:"allowed_vpces,omitempty"`
}

// Keystore is one XKS key store: a URI prefix with its credentials, policy
// and the keyworker pool holding its keys.
type Keystore struct {
	Prefix      string       `json:"prefix"`
	Pool        string       `json:"pool"`
	Created     time.Time    `json:"created"`
	Credentials []Credential `json:"credentials"`
	Policy      Policy       `json:"policy"`
}

// Key is an XKS key: an AES-256 object in the pool's HSM, found by label.
type Key struct {
	Keystore string    `json:"keystore"`
	KeyID    string    `json:"key_id"`
	Label    string    `json:"label"`
	Status   string    `json:"status"`
	Created  time.Time `json:"created"`
	// DeleteAfter is when a key pending deletion is destroyed.
	DeleteAfter *time.Time `json:"delete_after,omitempty"`
}

// SealAAD is the associated data binding a sealed key-store secret to its
// key store and access key id.
func SealAAD(prefix, accessKeyID string) []byte {
	return []byte("sovkeys/keystore-secret/v1\x00" + prefix + "\x00" + accessKeyID)
}

// Registry reads and writes the key store and key buckets.
type Registry struct {
	Keystores jetstream.KeyValue
	Keys      jetstream.KeyValue
}

// Open declares (if needed) and opens the buckets.
func Open(ctx context.Context, js jetstream.JetStream, t mesh.Topology) (*Registry, error) {
	ks, err := mesh.EnsureBucket(ctx, js, shared.BucketKeystores, "sovkeys: XKS key stores", t)
	if err != nil {
		return nil, err
	}
	keys, err := mesh.EnsureBucket(ctx, js, shared.BucketXKSKeys, "sovkeys: XKS keys", t)
	if err != nil {
		return nil, err
	}
	return &Registry{Keystores: ks, Keys: keys}, nil
}

// KeystoreKey is the KV key of a key store prefix.
func KeystoreKey(prefix string) string { return shared.ScopeToken(prefix) }

// KeyKey is the KV key of an XKS key.
func KeyKey(prefix, keyID string) string { return shared.ScopeToken(prefix) + "." + keyID }

// Keystore returns a key store and its revision.
func (r *Registry) Keystore(ctx context.Context, prefix string) (*Keystore, uint64, error) {
	var ks Keystore
	rev, err := get(ctx, r.Keystores, KeystoreKey(prefix), &ks)
	if err != nil {
		return nil, 0, err
	}
	return &ks, rev, nil
}

// CreateKeystore stores a new key store; ErrExists if the prefix is taken.
func (r *Registry) CreateKeystore(ctx context.Context, ks *Keystore) error {
	return create(ctx, r.Keystores, KeystoreKey(ks.Prefix), ks)
}

// UpdateKeystore writes ks if the entry is still at rev.
func (r *Registry) UpdateKeystore(ctx context.Context, ks *Keystore, rev uint64) error {
	return update(ctx, r.Keystores, KeystoreKey(ks.Prefix), ks, rev)
}

// ListKeystores returns every key store.
func (r *Registry) ListKeystores(ctx context.Context) ([]Keystore, error) {
	return list[Keystore](ctx, r.Keystores, "")
}

// Key returns an XKS key and its revision.
func (r *Registry) Key(ctx context.Context, prefix, keyID string) (*Key, uint64, error) {
	var k Key
	rev, err := get(ctx, r.Keys, KeyKey(prefix, keyID), &k)
	if err != nil {
		return nil, 0, err
	}
	return &k, rev, nil
}

// CreateKey stores a new key; ErrExists if the id is taken in that store.
func (r *Registry) CreateKey(ctx context.Context, k *Key) error {
	return create(ctx, r.Keys, KeyKey(k.Keystore, k.KeyID), k)
}

// UpdateKey writes k if the entry is still at rev.
func (r *Registry) UpdateKey(ctx context.Context, k *Key, rev uint64) error {
	return update(ctx, r.Keys, KeyKey(k.Keystore, k.KeyID), k, rev)
}

// ListKeys returns the keys of one key store.
func (r *Registry) ListKeys(ctx context.Context, prefix string) ([]Key, error) {
	return list[Key](ctx, r.Keys, shared.ScopeToken(prefix)+".")
}

func get(ctx context.Context, kv jetstream.KeyValue, key string, v any) (uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("registry: get: %w", err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("registry: decode %s: %w", kv.Bucket(), err)
	}
	return e.Revision(), nil
}

func create(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("registry: encode: %w", err)
	}
	if _, err := kv.Create(ctx, key, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrExists
		}
		return fmt.Errorf("registry: create: %w", err)
	}
	return nil
}

func update(ctx context.Context, kv jetstream.KeyValue, key string, v any, rev uint64) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("registry: encode: %w", err)
	}
	if _, err := kv.Update(ctx, key, data, rev); err != nil {
		// A stale revision is reported as "wrong last sequence": 10071 on a
		// single server (nats.go maps it to ErrKeyExists), 10164 from a
		// replicated stream's leader with a write still in flight.
		if errors.Is(err, jetstream.ErrKeyExists) || mesh.IsWrongLastSequence(err) {
			return ErrConflict
		}
		return fmt.Errorf("registry: update: %w", err)
	}
	return nil
}

func list[T any](ctx context.Context, kv jetstream.KeyValue, prefix string) ([]T, error) {
	lister, err := kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: list: %w", err)
	}
	var out []T
	for key := range lister.Keys() {
		if prefix != "" && !strings.HasPrefix(key, prefix) {
			continue
		}
		var v T
		if _, err := get(ctx, kv, key, &v); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
