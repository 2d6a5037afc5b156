package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestKeystoreCompareAndSet(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	reg, err := Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	ks := &Keystore{Prefix: "a/b", Pool: "default"}
	if err := reg.CreateKeystore(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if err := reg.CreateKeystore(ctx, ks); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	got, rev, err := reg.Keystore(ctx, "a/b")
	if err != nil || got.Pool != "default" {
		t.Fatalf("get: %+v %v", got, err)
	}
	got.Policy.AllowedVPCs = []string{"vpc-1"}
	if err := reg.UpdateKeystore(ctx, got, rev); err != nil {
		t.Fatal(err)
	}
	// A writer holding the old revision loses, whatever the server's code.
	got.Policy.AllowedVPCs = []string{"vpc-2"}
	if err := reg.UpdateKeystore(ctx, got, rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	if _, _, err := reg.Keystore(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	list, err := reg.ListKeystores(ctx)
	if err != nil || len(list) != 1 || list[0].Policy.AllowedVPCs[0] != "vpc-1" {
		t.Fatalf("list: %+v %v", list, err)
	}
	keys, err := reg.ListKeys(ctx, "a/b")
	if err != nil || len(keys) != 0 {
		t.Fatalf("empty key list: %+v %v", keys, err)
	}
}

func TestCacheFollowsBucket(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg, err := Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.CreateKey(ctx, &Key{Keystore: "s", KeyID: "k1", Label: "l", Status: StatusEnabled}); err != nil {
		t.Fatal(err)
	}
	c, err := WatchBucket[Key](ctx, reg.Keys, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	if k, ok := c.Get(KeyKey("s", "k1")); !ok || k.Status != StatusEnabled {
		t.Fatalf("initial value: %+v %v", k, ok)
	}
	k, rev, _ := reg.Key(ctx, "s", "k1")
	k.Status = StatusDisabled
	if err := reg.UpdateKey(ctx, k, rev); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, cacheWait, cachePoll, func() error {
		if k, _ := c.Get(KeyKey("s", "k1")); k.Status != StatusDisabled {
			return fmt.Errorf("cache did not follow the update: status %q", k.Status)
		}
		return nil
	})
}

// How long a watched cache may take to follow the bucket, and how often the
// test looks.
const (
	cacheWait = 5 * time.Second
	cachePoll = 10 * time.Millisecond
)
