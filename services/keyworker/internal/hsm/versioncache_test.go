package hsm

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// TestNewestVersionSearchesOnce: however many callers ask for a key's
// version at once, and however often its cache entry expires, the token is
// searched once per lookup (two C_FindObjectsInit: the key and its
// versions), never once per caller, and no caller waits for a refresh.
func TestNewestVersionSearchesOnce(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	var f *FaultP11
	h := newTestHSM(t, func(c *Config) {
		c.Sessions = 4
		c.Now = now
		c.WrapP11 = func(p P11) P11 { f = NewFaultP11(p); return f }
	})
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
		t.Fatal(err)
	}
	ask := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				if v, err := h.NewestVersion(ctx, "k"); err != nil || v != 1 {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("NewestVersion: %v", err)
		}
	}
	searches := func() int { return f.Calls("FindObjectsInit") }

	base := searches()
	ask(64)
	if got := searches() - base; got != 2 {
		t.Fatalf("first use by 64 callers: %d searches, want 2 (one lookup)", got)
	}
	base = searches()
	ask(64)
	if got := searches() - base; got != 0 {
		t.Fatalf("within the TTL: %d searches, want 0", got)
	}
	for round := range 3 {
		clock.Add(int64(versionCacheTTL + time.Second))
		base = searches()
		ask(64) // all answered from the cache; one refresh starts
		testkit.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			h.versions.mu.Lock()
			defer h.versions.mu.Unlock()
			if h.versions.m["k"].refreshing {
				return errors.New("refresh still running")
			}
			return nil
		})
		if got := searches() - base; got != 2 {
			t.Fatalf("round %d past the TTL: %d searches, want 2 (one refresh)", round, got)
		}
	}
	// A rotation is seen at once by this process.
	if _, err := h.RotateKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if v, err := h.NewestVersion(ctx, "k"); err != nil || v != 2 {
		t.Fatalf("after rotation: %d, %v; want 2", v, err)
	}
	// A key that does not exist is not cached as missing.
	for range 2 {
		if _, err := h.NewestVersion(ctx, "nope"); err == nil {
			t.Fatal("NewestVersion of a missing key: no error")
		}
	}
	if _, ok := h.versions.m["nope"]; ok {
		t.Fatal("a failed lookup stayed in the cache")
	}
}
