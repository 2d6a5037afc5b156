package writeonce

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Write-once on JetStream
//
// An object store Put overwrites, so the object store only holds staged
// blobs, each under a fresh unique object name ("<name>/<random>"); the
// commit point is a KV Create in a companion index bucket:
//
//  1. If the index already has the name: ErrExists (fast path, no write).
//  2. Put the blob into object store "sovkeys_ekt" under a fresh object name.
//  3. kv.Create(name, {object, sha256, size}) in "sovkeys_ekt_index". The
//     server accepts it only if the key has no message yet (expected last
//     subject sequence 0), so exactly one writer commits.
//  4. A writer whose Create fails reads the index: if it names this
//     writer's object, the commit landed and only the ack was lost (success);
//     if it names another object, the writer lost: it deletes its staged
//     object and returns ErrExists. Otherwise the outcome is unknown and the
//     staged object is left alone (the commit may still land; an orphan is
//     harmless garbage).
//
// Committing after the data is durable means a name is never taken without
// its bytes (a writer that dies between steps 2 and 3 leaves only an
// unreferenced object), unlike "lock the name first, then put".
//
// The index stream is hardened after creation: DiscardNewPerSubject with
// one message per subject (the server rejects any second write to a key,
// so kv.Put and kv.Delete fail too), DenyPurge, no rollups. Both streams
// have AllowDirect off so reads are answered by the stream leader: a writer
// that lost the race on one node reads the winner's record at once,
// never a lagging replica's "not found". Get verifies the blob against the
// digest in the index (ErrCorrupt on mismatch or a missing object).

// Bucket names.
const (
	ObjectBucket = shared.BucketEKTObjects
	IndexBucket  = shared.BucketEKTIndex
)

// indexRecord is the committed value of a name in the index bucket.
type indexRecord struct {
	Version int    `json:"v"`
	Object  string `json:"object"` // object name in ObjectBucket
	SHA256  string `json:"sha256"` // hex
	Size    int    `json:"size"`
}

// JetStreamStore is the JetStream backend.
type JetStreamStore struct {
	obs jetstream.ObjectStore
	kv  jetstream.KeyValue
	// noDelete: the object stream denies deletes (mesh.Bootstrap declared
	// it), so no user may purge it either; never try.
	noDelete bool
}

var _ Store = (*JetStreamStore)(nil)

// NewJetStream declares (idempotently, safe under races) the object store
// and its hardened index bucket with the given replica count, and returns
// the store.
func NewJetStream(ctx context.Context, js jetstream.JetStream, replicas int) (*JetStreamStore, error) {
	if replicas < 1 || replicas > 5 {
		return nil, fmt.Errorf("%w: ektstore: replicas must be 1..5, got %d", shared.ErrConfigValidation, replicas)
	}
	obs, err := ensureObjectStore(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	kv, err := ensureIndex(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, shared.ObjectStream(ObjectBucket))
	if err != nil {
		return nil, fmt.Errorf("ektstore: stream: %w", err)
	}
	return &JetStreamStore{obs: obs, kv: kv, noDelete: st.CachedInfo().Config.DenyDelete}, nil
}

func ensureObjectStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.ObjectStore, error) {
	// Bind first: services may not declare (mesh.Bootstrap does).
	_, err := js.ObjectStore(ctx, ObjectBucket)
	if err != nil {
		_, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      ObjectBucket,
			Description: "sovkeys: write-once blobs (EKTs); names committed in " + IndexBucket,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
	}
	if err != nil && !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, fmt.Errorf("ektstore: object store %s: %w", ObjectBucket, err)
	}
	if err := tuneStream(ctx, js, shared.ObjectStream(ObjectBucket), func(c *jetstream.StreamConfig) {
		c.Replicas = replicas
		c.AllowDirect = false
	}); err != nil {
		return nil, err
	}
	obs, err := js.ObjectStore(ctx, ObjectBucket) // bind again: picks up AllowDirect=false
	if err != nil {
		return nil, fmt.Errorf("ektstore: object store %s: %w", ObjectBucket, err)
	}
	return obs, nil
}

func ensureIndex(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	_, err := js.KeyValue(ctx, IndexBucket)
	if err != nil {
		_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      IndexBucket,
			Description: "sovkeys: write-once index of " + ObjectBucket + " (name -> object, sha256)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
	}
	if err != nil && !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, fmt.Errorf("ektstore: kv %s: %w", IndexBucket, err)
	}
	if err := tuneStream(ctx, js, shared.KVStream(IndexBucket), func(c *jetstream.StreamConfig) {
		c.Replicas = replicas
		c.MaxMsgsPerSubject = 1
		c.Discard = jetstream.DiscardNew
		c.DiscardNewPerSubject = true
		c.DenyDelete = true
		c.DenyPurge = true
		c.AllowRollup = false
		c.AllowDirect = false
	}); err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, IndexBucket) // bind again: picks up AllowDirect=false
	if err != nil {
		return nil, fmt.Errorf("ektstore: kv %s: %w", IndexBucket, err)
	}
	return kv, nil
}

// tuneStream applies edit to a stream's configuration and updates the stream
// if anything changed. Concurrent callers apply the same edit, so the last
// update wins with the same result.
func tuneStream(ctx context.Context, js jetstream.JetStream, name string, edit func(*jetstream.StreamConfig)) error {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("ektstore: stream %s: %w", name, err)
	}
	cur := st.CachedInfo().Config
	want := cur
	edit(&want)
	if want.Replicas == cur.Replicas && want.MaxMsgsPerSubject == cur.MaxMsgsPerSubject &&
		want.Discard == cur.Discard && want.DiscardNewPerSubject == cur.DiscardNewPerSubject &&
		want.DenyDelete == cur.DenyDelete && want.DenyPurge == cur.DenyPurge &&
		want.AllowRollup == cur.AllowRollup && want.AllowDirect == cur.AllowDirect {
		return nil
	}
	if _, err := js.UpdateStream(ctx, want); err != nil {
		return fmt.Errorf("ektstore: harden stream %s: %w", name, err)
	}
	return nil
}

// Backend returns "jetstream".
func (s *JetStreamStore) Backend() string { return BackendJetStream }

// indexKey maps a name to a KV key. KV keys may not contain empty tokens or
// start or end with ".", so "." is escaped as "=2e" ("=" never occurs in a
// name, so the mapping is injective).
func indexKey(name string) string { return strings.ReplaceAll(name, ".", "=2e") }

// Create stores data under name unless the name exists (ErrExists).
func (s *JetStreamStore) Create(ctx context.Context, name string, data []byte) error {
	if err := checkInput(name, data); err != nil {
		return err
	}
	key := indexKey(name)
	if _, err := s.kv.Get(ctx, key); err == nil {
		return fmt.Errorf("%w: %q", ErrExists, name)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("ektstore: index get %q: %w", name, err)
	}

	sum := sha256.Sum256(data)
	rec := indexRecord{Version: 1, Object: name + "/" + strings.ToLower(rand.Text()), SHA256: hex.EncodeToString(sum[:]), Size: len(data)}
	if _, err := s.obs.PutBytes(ctx, rec.Object, data); err != nil {
		return fmt.Errorf("ektstore: stage %q: %w", name, err)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("ektstore: encode index record: %w", err)
	}
	_, createErr := s.kv.Create(ctx, key, val)
	if createErr == nil {
		return nil
	}
	// Resolve the outcome from the index itself.
	got, err := s.record(ctx, name)
	switch {
	case err == nil && got.Object == rec.Object:
		return nil // our commit landed; only its ack was lost
	case err == nil:
		// Another writer committed first; ours can never land now. A
		// bootstrapped store (deny delete: nobody holds purge rights on
		// it) keeps the unreferenced blob.
		if !s.noDelete {
			_ = s.obs.Delete(ctx, rec.Object)
		}
		return fmt.Errorf("%w: %q", ErrExists, name)
	default:
		return fmt.Errorf("ektstore: commit %q: %w", name, createErr)
	}
}

// record reads and decodes the index record of name.
func (s *JetStreamStore) record(ctx context.Context, name string) (indexRecord, error) {
	e, err := s.kv.Get(ctx, indexKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return indexRecord{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return indexRecord{}, fmt.Errorf("ektstore: index get %q: %w", name, err)
	}
	var rec indexRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Version != 1 || rec.Object == "" {
		return indexRecord{}, fmt.Errorf("%w: index record of %q is malformed", ErrCorrupt, name)
	}
	return rec, nil
}

// Get returns the blob committed under name, verified against the digest
// in its index record.
func (s *JetStreamStore) Get(ctx context.Context, name string) ([]byte, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: name %q", ErrInvalid, name)
	}
	rec, err := s.record(ctx, name)
	if err != nil {
		return nil, err
	}
	if rec.Size < 1 || rec.Size > MaxDataSize {
		return nil, fmt.Errorf("%w: index record of %q has size %d", ErrCorrupt, name, rec.Size)
	}
	data, err := s.obs.GetBytes(ctx, rec.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: object of %q is missing", ErrCorrupt, name)
	}
	if errors.Is(err, jetstream.ErrDigestMismatch) {
		return nil, fmt.Errorf("%w: object of %q fails the object store's digest", ErrCorrupt, name)
	}
	if err != nil {
		return nil, fmt.Errorf("ektstore: get object of %q: %w", name, err)
	}
	sum := sha256.Sum256(data)
	if len(data) != rec.Size || hex.EncodeToString(sum[:]) != rec.SHA256 {
		return nil, fmt.Errorf("%w: object of %q does not match its recorded digest", ErrCorrupt, name)
	}
	return data, nil
}
