// Package ektstore is the write-once blob store for EKTs (encrypted key
// tokens: tenant master keys wrapped under the HSM domain key) and, later,
// audit records. A name, once created, keeps its first bytes forever: the
// first writer wins, later writers get ErrExists and read the stored blob
// back (CreateOrGet does both).
//
// Two backends: S3 (S3Store: conditional PutObject with If-None-Match "*")
// and a JetStream object store (JetStreamStore: a KV create is the commit
// point), the default for standalone. docs/ekt-store.md explains both.
package writeonce

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors. Wrapped errors match them with errors.Is.
var (
	// ErrExists: the name is taken (Create lost the race, or a blob was
	// stored earlier, even one with identical content).
	ErrExists = errors.New("ektstore: already exists")
	// ErrNotFound: no blob is stored under the name.
	ErrNotFound = errors.New("ektstore: not found")
	// ErrInvalid: the name fails ValidName, or the data is empty or larger
	// than MaxDataSize.
	ErrInvalid = errors.New("ektstore: invalid name or data")
	// ErrCorrupt: a stored blob no longer matches the digest recorded when
	// it was created (tampering or storage corruption). Never retried away.
	ErrCorrupt = errors.New("ektstore: stored data failed its integrity check")
	// ErrNotWriteOnce: the backend cannot enforce write-once (an S3 server
	// that ignores If-None-Match); the store refuses to write.
	ErrNotWriteOnce = errors.New("ektstore: backend does not enforce write-once")
)

// Limits.
const (
	// MaxNameLen bounds a name.
	MaxNameLen = 128
	// MaxEKTSize bounds an EKT blob (the token format's limit; callers
	// check it, the store itself accepts up to MaxDataSize).
	MaxEKTSize = 4 << 10
	// MaxDataSize bounds any blob the store accepts or returns.
	MaxDataSize = 1 << 20
)

// Backend names returned by Store.Backend.
const (
	BackendS3        = "s3"
	BackendJetStream = "jetstream"
)

// Store is a write-once blob store: name -> bytes.
type Store interface {
	// Create stores data under name if the name is free. It returns
	// ErrExists if a blob is already stored under name, even with identical
	// content; the stored blob is never changed.
	Create(ctx context.Context, name string, data []byte) error
	// Get returns the blob stored under name, or ErrNotFound.
	Get(ctx context.Context, name string) ([]byte, error)
	// Backend names the backend: "s3" or "jetstream".
	Backend() string
}

// ValidName reports whether name is 1..128 characters of [a-z0-9-_.] and not
// "." or ".." (which would be path segments in S3 keys and on disk).
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen || name == "." || name == ".." {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// CreateOrGet creates name with data, or, if the name is taken, returns the
// stored blob instead. created reports whether data was stored by this call;
// callers must use stored, not data, from then on (several tenants may share
// one EKT and only the first writer's blob counts).
func CreateOrGet(ctx context.Context, s Store, name string, data []byte) (stored []byte, created bool, err error) {
	err = s.Create(ctx, name, data)
	switch {
	case err == nil:
		return data, true, nil
	case !errors.Is(err, ErrExists):
		return nil, false, err
	}
	stored, err = s.Get(ctx, name)
	if err != nil {
		return nil, false, fmt.Errorf("ektstore: read back %q after losing create: %w", name, err)
	}
	return stored, false, nil
}

// checkInput validates a Create call's arguments.
func checkInput(name string, data []byte) error {
	if !ValidName(name) {
		return fmt.Errorf("%w: name %q", ErrInvalid, name)
	}
	if len(data) == 0 || len(data) > MaxDataSize {
		return fmt.Errorf("%w: data size %d not in 1..%d", ErrInvalid, len(data), MaxDataSize)
	}
	return nil
}
