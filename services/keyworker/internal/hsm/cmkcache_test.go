package hsm

import (
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

func TestCMKCache(t *testing.T) {
	ctx := t.Context()
	pub := &testRSAKey().PublicKey
	clock := time.Unix(1_800_000_000, 0)
	h := newHierarchyHSM(t, func(c *Config) { c.Sessions = 1 })
	h.hier.cmks.now = func() time.Time { return clock }
	ekts := [][]byte{newEKT(t, h, "a"), newEKT(t, h, "b"), newEKT(t, h, "c")}
	names := []string{"a", "b", "c"}
	use := func(i int) {
		t.Helper()
		sctx := SecretContext(names[i], "i", "v")
		enc, _, err := h.GenerateSecret(ctx, ekts[i], EKTContext(names[i]), sctx, pub)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.DecryptSecret(ctx, ekts[i], EKTContext(names[i]), enc, sctx, pub); err != nil {
			t.Fatal(err)
		}
	}
	check := func(wantCached int) {
		t.Helper()
		if got := cachedCMKs(h); got != wantCached {
			t.Fatalf("cache holds %d CMKs, want %d", got, wantCached)
		}
		if got := sessionObjects(t, h); got != wantCached {
			t.Fatalf("%d session objects in the HSM, want %d (the cached CMKs): temporaries leak", got, wantCached)
		}
	}
	check(0)
	for range 3 {
		use(0)
	}
	check(1)
	use(1)
	use(2)
	check(3)

	t.Run("wrong ekt context misses", func(t *testing.T) {
		_, _, err := h.GenerateSecret(ctx, ekts[0], EKTContext("b"), SecretContext("a", "i", "v"), pub)
		wantCode(t, err, shared.CodeInvalidCiphertext)
		check(3)
	})
	t.Run("expiry", func(t *testing.T) {
		clock = clock.Add(cmkCacheTTL + time.Second)
		use(0) // sweeps all three, caches a again
		check(1)
	})
	t.Run("bounded", func(t *testing.T) {
		h.hier.cmks.max = 2
		defer func() { h.hier.cmks.max = 0 }()
		for i := range 3 {
			clock = clock.Add(time.Second)
			use(i)
		}
		check(2)
	})
	t.Run("destroyed behind the cache", func(t *testing.T) {
		sh := <-h.pool
		for _, e := range h.hier.cmks.m {
			if err := h.mod.ctx.DestroyObject(sh, e.handle); err != nil {
				t.Fatal(err)
			}
		}
		h.pool <- sh
		use(2)
		use(0)
	})
	t.Run("disabled", func(t *testing.T) {
		sh := <-h.pool
		h.hier.cmks.dropSession(h.mod.ctx, sh)
		h.pool <- sh
		h.hier.cmks.max = -1
		defer func() { h.hier.cmks.max = 0 }()
		use(1)
		check(0)
	})
}
