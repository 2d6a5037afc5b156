package auditlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

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

// Replacer is implemented by buckets whose objects can be replaced: the
// transparency log's "checkpoint" (newest signed checkpoint, as C2SP
// tlog-tiles requires) lives there. S3 buckets replace that one key (every
// other key is write-once); the JetStream object store replaces nothing,
// its readers take the newest of the checkpoint history.
type Replacer interface {
	Replace(ctx context.Context, key string, data []byte) error
}

var _ Replacer = (*S3Bucket)(nil)

// Replace overwrites key (only the scope's "checkpoint" is ever replaced):
// a plain PutObject carrying the SHA-256 Get checks.
func (b *S3Bucket) Replace(ctx context.Context, key string, data []byte) error {
	st, name, err := b.sub(ctx, key, true)
	if err != nil {
		return err
	}
	return st.Overwrite(ctx, name, data)
}
