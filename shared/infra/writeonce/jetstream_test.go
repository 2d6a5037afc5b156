package writeonce

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func newTestJetStreamStore(t *testing.T) (*JetStreamStore, jetstream.JetStream) {
	t.Helper()
	_, _, js := natstest.Run(t)
	s, err := NewJetStream(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

func TestJetStreamStore(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) Store { s, _ := newTestJetStreamStore(t); return s })
}

// Two processes declaring the store at once, and again later, get the same
// buckets; a blob written through one is visible through the other.
func TestNewJetStreamIdempotent(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := t.Context()
	stores := make([]*JetStreamStore, 4)
	errs := make([]error, len(stores))
	done := make(chan struct{})
	for i := range stores {
		go func() {
			stores[i], errs[i] = NewJetStream(ctx, js, 1)
			done <- struct{}{}
		}()
	}
	for range stores {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if err := stores[0].Create(ctx, "tenant-a", []byte("ekt")); err != nil {
		t.Fatal(err)
	}
	later, err := NewJetStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := later.Get(ctx, "tenant-a"); err != nil || string(got) != "ekt" {
		t.Fatalf("Get through a second store = %q, %v", got, err)
	}
	for _, r := range []int{0, 6, -1} {
		if _, err := NewJetStream(ctx, js, r); !errors.Is(err, shared.ErrConfigValidation) {
			t.Fatalf("NewJetStream(replicas %d) = %v, want ErrConfigValidation", r, err)
		}
	}
}

// The server itself refuses to change a committed index entry, so even a
// caller going around the store (kv.Put, kv.Delete, purge) cannot overwrite
// or free a name.
func TestJetStreamIndexIsServerEnforced(t *testing.T) {
	t.Parallel()
	s, js := newTestJetStreamStore(t)
	ctx := t.Context()
	if err := s.Create(ctx, "tenant.a", []byte("ekt")); err != nil {
		t.Fatal(err)
	}
	key := indexKey("tenant.a")
	if _, err := s.kv.Put(ctx, key, []byte(`{"v":1,"object":"evil","sha256":"00","size":1}`)); err == nil {
		t.Error("kv.Put over a committed name succeeded")
	}
	if err := s.kv.Delete(ctx, key); err == nil {
		t.Error("kv.Delete of a committed name succeeded")
	}
	if err := s.kv.Purge(ctx, key); err == nil {
		t.Error("kv.Purge of a committed name succeeded")
	}
	st, err := js.Stream(ctx, "KV_"+IndexBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx); err == nil {
		t.Error("stream purge of the index succeeded")
	}
	if got, err := s.Get(ctx, "tenant.a"); err != nil || string(got) != "ekt" {
		t.Fatalf("Get after tampering attempts = %q, %v", got, err)
	}
	cfg := st.CachedInfo().Config
	if !cfg.DiscardNewPerSubject || cfg.MaxMsgsPerSubject != 1 || !cfg.DenyPurge || !cfg.DenyDelete || cfg.AllowRollup || cfg.AllowDirect {
		t.Fatalf("index stream not hardened: %+v", cfg)
	}
}

// A blob changed behind the index's back is reported, never returned.
func TestJetStreamCorrupt(t *testing.T) {
	t.Parallel()
	s, _ := newTestJetStreamStore(t)
	ctx := t.Context()
	for _, name := range []string{"replaced", "deleted"} {
		if err := s.Create(ctx, name, []byte("original "+name)); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := s.record(ctx, "replaced")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.obs.PutBytes(ctx, rec.Object, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	if rec, err = s.record(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := s.obs.Delete(ctx, rec.Object); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"replaced", "deleted"} {
		if got, err := s.Get(ctx, name); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Get(%s) = %q, %v; want ErrCorrupt", name, got, err)
		}
	}
}

// Losers of a race leave no staged objects behind: the object store holds
// exactly one object per committed name.
func TestJetStreamLosersCleanUp(t *testing.T) {
	t.Parallel()
	s, _ := newTestJetStreamStore(t)
	ctx := t.Context()
	done := make(chan error)
	const n = 16
	for i := range n {
		go func() { done <- s.Create(ctx, "contested", []byte{byte(i + 1)}) }()
	}
	for range n {
		if err := <-done; err != nil && !errors.Is(err, ErrExists) {
			t.Fatal(err)
		}
	}
	objs, err := s.obs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.record(ctx, "contested")
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != rec.Object {
		names := make([]string, len(objs))
		for i, o := range objs {
			names[i] = o.Name
		}
		raw, _ := json.Marshal(rec)
		t.Fatalf("objects %v, want only the committed one (%s)", names, raw)
	}
}
