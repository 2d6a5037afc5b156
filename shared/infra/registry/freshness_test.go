package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func freshBucket(t *testing.T, name string) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	_, _, js := natstest.Run(t)
	kv, err := mesh.EnsureBucket(context.Background(), js, name, "test", mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

func waitStale(t *testing.T, c *Cache[string], stale bool) {
	t.Helper()
	testkit.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		err := c.Fresh()
		if stale != errors.Is(err, ErrStale) {
			return fmt.Errorf("Fresh() = %v, want stale=%v", err, stale)
		}
		return nil
	})
}

// A watch that ends makes the cache stale at once; it restarts by itself,
// and the new snapshot drops keys deleted and adds keys written meanwhile.
func TestCacheStaleWhenWatchEnds(t *testing.T) {
	t.Parallel()
	_, kv := freshBucket(t, "fresh_end")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := kv.Put(ctx, "gone", []byte(`"a"`)); err != nil {
		t.Fatal(err)
	}
	c, err := WatchBucket[string](ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, withRetryEvery(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	waitStale(t, c, false)

	c.stopWatch()
	waitStale(t, c, true)
	if _, err := kv.Put(ctx, "new", []byte(`"b"`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	waitStale(t, c, false)
	testkit.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if v, ok := c.Get("new"); !ok || v != "b" {
			return fmt.Errorf("new = %q %v", v, ok)
		}
		if _, ok := c.Get("gone"); ok {
			return errors.New("deleted key still cached")
		}
		return nil
	})
}

// A watch whose consumer the server lost delivers nothing while writes
// land: within the bound the cache is stale; once the ordered consumer is
// recreated it catches up and is fresh again.
func TestCacheStaleWhenConsumerDeleted(t *testing.T) {
	t.Parallel()
	js, kv := freshBucket(t, "fresh_cons")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := WatchBucket[string](ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	waitStale(t, c, false)
	stream, err := js.Stream(ctx, "KV_fresh_cons")
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(ctx)
	deleted := 0
	for n := range names.Name() {
		if err := stream.DeleteConsumer(ctx, n); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted == 0 {
		t.Fatal("no watch consumer found")
	}
	if _, err := kv.Put(ctx, "k", []byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitStale(t, c, true)
	stale := time.Since(start)
	waitStale(t, c, false)
	// Logged, not asserted: detection is bounded by StaleAfter + a probe,
	// recovery by the ordered consumer's heartbeat reset.
	t.Logf("stale after %s, fresh again after %s", stale.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if v, ok := c.Get("k"); !ok || v != "after" {
		t.Fatalf("after recovery k = %q %v", v, ok)
	}
}

// A revision the server could not report (leader election, no answer) is
// not staleness; a reported revision not delivered within the bound is.
func TestFreshnessRules(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	f := freshness{staleAfter: 2 * time.Second}
	if f.stale(t0) == "" {
		t.Fatal("fresh before the watch delivered its initial values")
	}
	f.setWatcher(nil)
	f.caughtUp(nil)
	f.saw(5)
	if why := f.stale(t0.Add(time.Hour)); why != "" {
		t.Fatalf("stale without any report: %s", why)
	}
	f.observe(7, t0)
	if why := f.stale(t0.Add(2 * time.Second)); why != "" {
		t.Fatalf("stale within the bound: %s", why)
	}
	if f.stale(t0.Add(2*time.Second+time.Millisecond)) == "" {
		t.Fatal("fresh although revision 7 was not delivered within the bound")
	}
	f.saw(7)
	if why := f.stale(t0.Add(time.Hour)); why != "" {
		t.Fatalf("stale after catching up: %s", why)
	}
	f.watchEnded()
	if f.stale(t0) == "" {
		t.Fatal("fresh after the watch ended")
	}
}
