package hsm

// The newest version of each key in use, without an object search per call.
//
// Finding a key's versions is a C_FindObjects over the token, and a token's
// object search is linear in its objects (SoftHSMv2 walks, and re-checks on
// disk, every object of the token for each C_FindObjectsInit). Measured on a
// token with 1,000 keys: every versionCacheTTL, every request in flight on a
// key missed the cache at once, each ran two such searches holding an HSM
// session, and the whole wave missed its deadline (issue 25: 32 × 503 every
// 5 s at closed loop 32). So an entry past its TTL is still served while ONE
// caller-independent refresh reads the HSM again, and the first lookup of a
// key is made once however many callers ask at the same time.

import (
	"context"
	"sync"
	"time"
)

// versionCacheTTL bounds how long a keyworker keeps encrypting under a
// version after another keyworker of the pool rotated the key (plus one
// refresh). The older version stays valid, so this only delays the switch.
const versionCacheTTL = 5 * time.Second

// versionRefreshTimeout bounds one background refresh.
const versionRefreshTimeout = 10 * time.Second

// versionCache remembers the newest version of keys in use.
type versionCache struct {
	mu sync.Mutex
	m  map[string]*versionEntry
}

type versionEntry struct {
	newest     int
	at         time.Time     // when newest was read from the HSM
	ready      chan struct{} // closed once the first lookup has finished
	err        error         // the first lookup's error (the entry is then gone)
	refreshing bool
}

// entry returns label's entry, creating it (first true) when there is none.
// The cache is bounded: when full an arbitrary entry goes (it is looked up
// again on its next use).
func (c *versionCache) entry(label string) (e *versionEntry, first bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[label]; ok {
		return e, false
	}
	if c.m == nil {
		c.m = make(map[string]*versionEntry)
	}
	if len(c.m) >= maxCachedKeys {
		for victim := range c.m {
			delete(c.m, victim)
			break
		}
	}
	e = &versionEntry{ready: make(chan struct{})}
	c.m[label] = e
	return e, true
}

// settle ends e's first lookup.
func (c *versionCache) settle(label string, e *versionEntry, v int, err error, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		e.err = err
		if c.m[label] == e {
			delete(c.m, label) // errors are not cached: the next call asks again
		}
	} else {
		e.newest, e.at = v, now
	}
	close(e.ready)
}

// read returns e's version and whether the caller must refresh it (it is
// past the TTL and nobody refreshes it yet).
func (c *versionCache) read(e *versionEntry, now time.Time) (v int, refresh bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.err != nil {
		return 0, false, e.err
	}
	if (now.Sub(e.at) >= versionCacheTTL || now.Before(e.at)) && !e.refreshing {
		e.refreshing = true
		refresh = true
	}
	return e.newest, refresh, nil
}

// refreshed records a refresh's outcome; a failed refresh keeps the old
// version (still valid) and lets the next call try again.
func (c *versionCache) refreshed(e *versionEntry, v int, err error, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refreshing = false
	if err == nil {
		e.newest, e.at = v, now
	}
}

func (c *versionCache) drop(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, label)
}

// NewestVersion returns the version an encrypt under label must use. The
// HSM is searched once per key when it is first used, then refreshed in the
// background at most every versionCacheTTL; callers never wait for a
// refresh.
func (h *HSM) NewestVersion(ctx context.Context, label string) (int, error) {
	e, first := h.versions.entry(label)
	if first {
		v, err := h.newestFromHSM(ctx, label)
		h.versions.settle(label, e, v, err, h.now())
		return v, err
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return 0, sessionWaitError(ctx.Err())
	}
	v, refresh, err := h.versions.read(e, h.now())
	if err != nil {
		return 0, err
	}
	if refresh {
		// Not bound to this caller's deadline: the refresh serves the key's
		// later callers.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), versionRefreshTimeout)
		go func() {
			defer cancel()
			nv, rerr := h.newestFromHSM(rctx, label)
			if rerr != nil {
				h.logger.Warn("key version refresh failed; keeping the cached version", "label", label, "version", v, "err", rerr)
			}
			h.versions.refreshed(e, nv, rerr, h.now())
		}()
	}
	return v, nil
}

func (h *HSM) newestFromHSM(ctx context.Context, label string) (int, error) {
	vs, err := h.KeyVersions(ctx, label)
	if err != nil {
		return 0, err
	}
	return vs[len(vs)-1].Version, nil
}
