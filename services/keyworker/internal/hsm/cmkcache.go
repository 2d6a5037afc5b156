package hsm

// The cache of unwrapped CMKs.

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

const (
	cmkCacheMax = 1024
	cmkCacheTTL = 10 * time.Minute
)

// cmkCache keeps unwrapped CMKs as session objects, per session: an entry
// made in session S is only used while S is held, so no other goroutine can
// destroy it mid-use and eviction needs no reference counts. Each object
// carries a random CKA_ID, checked before every use or destroy: when a
// session is lost its objects vanish, and an HSM may give their handle
// numbers to other objects, never to be taken for (or destroyed as) a CMK.
// Bounded in count over all sessions and in age; a session's expired
// entries are destroyed at its next miss (idle sessions keep theirs).
type cmkCache struct {
	mu  sync.Mutex
	m   map[cmkSlot]cmkEntry
	max int              // zero: cmkCacheMax; negative: no caching
	ttl time.Duration    // zero: cmkCacheTTL
	now func() time.Time // nil: time.Now
}

type cmkSlot struct {
	sh  pkcs11.SessionHandle
	key [32]byte // cmkKey
}

type cmkEntry struct {
	handle pkcs11.ObjectHandle
	id     []byte
	born   time.Time
}

// cmkKey covers the EKT and its context: a hit skips the unwrap, which is
// what checks the context.
func cmkKey(ekt, ektCtx []byte) [32]byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(ekt)+len(ektCtx)), uint32(len(ekt)))
	return sha256.Sum256(append(append(b, ekt...), ektCtx...))
}

func (c *cmkCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// get returns the live, verified CMK cached for key in session sh. Only
// the goroutine holding sh touches sh's entries.
func (c *cmkCache) get(p P11, sh pkcs11.SessionHandle, key [32]byte) (pkcs11.ObjectHandle, bool) {
	c.mu.Lock()
	e, ok := c.m[cmkSlot{sh, key}]
	c.mu.Unlock()
	if !ok {
		return 0, false
	}
	if c.clock().Sub(e.born) < cmp.Or(c.ttl, cmkCacheTTL) && ownsCached(p, sh, e) {
		return e.handle, true
	}
	c.mu.Lock()
	delete(c.m, cmkSlot{sh, key})
	c.mu.Unlock()
	destroyCached(p, sh, e)
	return 0, false
}

// put caches a fresh CMK for session sh, first destroying the session's
// expired entries and, when the cache is full, its oldest. false: not
// cached (full of other sessions' entries); the caller destroys it.
func (c *cmkCache) put(p P11, sh pkcs11.SessionHandle, key [32]byte, e cmkEntry) bool {
	limit := cmp.Or(c.max, cmkCacheMax)
	if limit < 0 {
		return false
	}
	var victims []cmkEntry
	c.mu.Lock()
	var oldest cmkSlot
	found := false
	for s, old := range c.m {
		switch {
		case s.sh != sh:
		case e.born.Sub(old.born) >= cmp.Or(c.ttl, cmkCacheTTL):
			victims = append(victims, old)
			delete(c.m, s)
		case !found || old.born.Before(c.m[oldest].born):
			oldest, found = s, true
		}
	}
	if len(c.m) >= limit && found {
		victims = append(victims, c.m[oldest])
		delete(c.m, oldest)
	}
	cached := len(c.m) < limit
	if cached {
		if c.m == nil {
			c.m = make(map[cmkSlot]cmkEntry)
		}
		c.m[cmkSlot{sh, key}] = e
	}
	c.mu.Unlock()
	for _, v := range victims {
		destroyCached(p, sh, v)
	}
	return cached
}

// dropSession forgets (and, when still ours, destroys) sh's entries.
func (c *cmkCache) dropSession(p P11, sh pkcs11.SessionHandle) {
	var victims []cmkEntry
	c.mu.Lock()
	for s, e := range c.m {
		if s.sh == sh {
			victims = append(victims, e)
			delete(c.m, s)
		}
	}
	c.mu.Unlock()
	for _, e := range victims {
		destroyCached(p, sh, e)
	}
}

func ownsCached(p P11, sh pkcs11.SessionHandle, e cmkEntry) bool {
	attrs, err := p.GetAttributeValue(sh, e.handle, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	return err == nil && len(attrs) == 1 && string(attrs[0].Value) == string(e.id)
}

func destroyCached(p P11, sh pkcs11.SessionHandle, e cmkEntry) {
	if ownsCached(p, sh, e) {
		destroy(p, sh, e.handle)
	}
}
