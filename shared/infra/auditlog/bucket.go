package auditlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Bucket errors.
var (
	ErrNotFound = errors.New("auditlog: object not found")
	// ErrConflict: the key already holds other bytes. Exports are
	// deterministic, so this means the stored object was altered.
	ErrConflict = errors.New("auditlog: object exists with other content")
	// ErrCorrupt: the stored bytes fail the store's own integrity check.
	ErrCorrupt = errors.New("auditlog: stored object failed its integrity check")
)

// Bucket is an export destination keyed by paths ("tenant/<token>/<seq>.json").
type Bucket interface {
	// Put stores data under key. It is idempotent: nil when the key already
	// holds exactly data; ErrConflict when it holds other bytes.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the object, ErrNotFound or ErrCorrupt.
	Get(ctx context.Context, key string) ([]byte, error)
	// List calls fn with the names directly inside dir, ascending.
	List(ctx context.Context, dir string, fn func(name string) error) error
	// String names the bucket for logs and reports.
	String() string
}

var (
	_ Bucket = (*S3Bucket)(nil)
	_ Bucket = (*ObjectBucketStore)(nil)
)

// S3Bucket exports to S3 through ektstore's write-once S3 store: each
// object is created once with If-None-Match "*" and carries its SHA-256.
type S3Bucket struct {
	root *writeonce.S3Store // prefix e.g. "audit/"

	mu     sync.Mutex
	proven bool
}

// NewS3Bucket builds an S3 bucket (no I/O; the first Put proves the server
// enforces write-once).
func NewS3Bucket(ctx context.Context, cfg writeonce.S3Config) (*S3Bucket, error) {
	root, err := writeonce.NewS3(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &S3Bucket{root: root}, nil
}

func (b *S3Bucket) String() string { return "s3://" + b.root.Bucket() }

// sub returns the write-once store of key's directory and the object name.
func (b *S3Bucket) sub(ctx context.Context, key string, write bool) (*writeonce.S3Store, string, error) {
	dir, name := path.Split(key)
	if dir == "" {
		return nil, "", fmt.Errorf("%w: key %q has no directory", ErrScope, key)
	}
	if write {
		// Prove write-once on the root once, so every Sub inherits it.
		b.mu.Lock()
		proven := b.proven
		b.mu.Unlock()
		if !proven {
			if err := b.root.Check(ctx); err != nil {
				return nil, "", err
			}
			b.mu.Lock()
			b.proven = true
			b.mu.Unlock()
		}
	}
	st, err := b.root.Sub(dir)
	return st, name, err
}

// Put creates key once; an existing identical object is success.
func (b *S3Bucket) Put(ctx context.Context, key string, data []byte) error {
	st, name, err := b.sub(ctx, key, true)
	if err != nil {
		return err
	}
	stored, _, err := writeonce.CreateOrGet(ctx, st, name, data)
	switch {
	case errors.Is(err, writeonce.ErrCorrupt):
		return fmt.Errorf("%w: %s: %v", ErrConflict, key, err)
	case err != nil:
		return err
	case !bytes.Equal(stored, data):
		return fmt.Errorf("%w: %s", ErrConflict, key)
	}
	return nil
}

// Get reads key, checked against the SHA-256 recorded when it was written.
func (b *S3Bucket) Get(ctx context.Context, key string) ([]byte, error) {
	st, name, err := b.sub(ctx, key, false)
	if err != nil {
		return nil, err
	}
	data, err := st.Get(ctx, name)
	switch {
	case errors.Is(err, writeonce.ErrNotFound):
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	case errors.Is(err, writeonce.ErrCorrupt):
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, key, err)
	}
	return data, err
}

// List lists the object names directly inside dir.
func (b *S3Bucket) List(ctx context.Context, dir string, fn func(name string) error) error {
	st, err := b.root.Sub(strings.TrimSuffix(dir, "/") + "/")
	if err != nil {
		return err
	}
	return st.List(ctx, "", fn)
}

// ObjectBucketStore exports to a JetStream object store (the standalone
// default). Object names are the keys. A Put of an existing name with the
// same SHA-256 is a no-op; other content is ErrConflict and is left alone.
type ObjectBucketStore struct {
	js  jetstream.JetStream
	obs jetstream.ObjectStore
}

// NewObjectBucket declares (idempotently) and opens the object store.
func NewObjectBucket(ctx context.Context, js jetstream.JetStream, replicas int) (*ObjectBucketStore, error) {
	if replicas < 1 || replicas > 5 {
		return nil, fmt.Errorf("%w: auditlog: replicas must be 1..5", shared.ErrConfigValidation)
	}
	// Bind first: services may not declare (mesh.Bootstrap does).
	obs, err := js.ObjectStore(ctx, ObjectBucket)
	if err != nil {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: ObjectBucket, Description: "sovkeys: exported audit records and checkpoints",
			Storage: jetstream.FileStorage, Replicas: replicas,
		})
	}
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		obs, err = js.ObjectStore(ctx, ObjectBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("auditlog: object store %s: %w", ObjectBucket, err)
	}
	return &ObjectBucketStore{js: js, obs: obs}, nil
}

// OpenObjectBucket opens an existing object store (verification).
func OpenObjectBucket(ctx context.Context, js jetstream.JetStream) (*ObjectBucketStore, error) {
	obs, err := js.ObjectStore(ctx, ObjectBucket)
	if err != nil {
		return nil, fmt.Errorf("auditlog: object store %s: %w", ObjectBucket, err)
	}
	return &ObjectBucketStore{js: js, obs: obs}, nil
}

func (b *ObjectBucketStore) String() string { return "jetstream-object-store://" + ObjectBucket }

// Put stores data under key unless an object with the same digest is there.
func (b *ObjectBucketStore) Put(ctx context.Context, key string, data []byte) error {
	info, err := b.obs.GetInfo(ctx, key)
	switch {
	case err == nil && !info.Deleted:
		h := sha256.New()
		h.Write(data)
		if info.Digest == jetstream.GetObjectDigestValue(h) {
			return nil
		}
		return fmt.Errorf("%w: %s", ErrConflict, key)
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("auditlog: object info %s: %w", key, err)
	}
	if _, err := b.obs.PutBytes(ctx, key, data); err != nil {
		return fmt.Errorf("auditlog: put object %s: %w", key, err)
	}
	return nil
}

// Get reads an object (the object store checks its digest).
func (b *ObjectBucketStore) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := b.obs.GetBytes(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return nil, fmt.Errorf("%w: %s", ErrCorrupt, key)
	case err != nil:
		return nil, fmt.Errorf("auditlog: get object %s: %w", key, err)
	}
	return data, nil
}

// List lists names directly inside dir. The object store cannot filter by
// name, so this reads every object's metadata: fine for verification, not
// for a hot path.
func (b *ObjectBucketStore) List(ctx context.Context, dir string, fn func(name string) error) error {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	infos, err := b.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("auditlog: list objects: %w", err)
	}
	var names []string
	for _, in := range infos {
		rest, ok := strings.CutPrefix(in.Name, prefix)
		if ok && !in.Deleted && rest != "" && !strings.Contains(rest, "/") {
			names = append(names, rest)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}

// Replacer is implemented by buckets whose objects can be replaced: the
// transparency log's "checkpoint" (newest signed checkpoint) lives there.
// S3 buckets are write-once and keep only the checkpoint history.
type Replacer interface {
	Replace(ctx context.Context, key string, data []byte) error
}

var _ Replacer = (*ObjectBucketStore)(nil)

// Replace stores data under key, replacing what is there.
func (b *ObjectBucketStore) Replace(ctx context.Context, key string, data []byte) error {
	if _, err := b.obs.PutBytes(ctx, key, data); err != nil {
		return fmt.Errorf("auditlog: replace object %s: %w", key, err)
	}
	return nil
}
