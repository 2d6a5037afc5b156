package hsm

// The cache of AES key handles by label.

import (
	"sync"

	"github.com/miekg/pkcs11"
)

// maxCachedKeys bounds the key handle and version caches: 10,000 keys in
// use stay cached (an entry is a few hundred bytes).
const maxCachedKeys = 1 << 16

type cachedKey struct {
	handle pkcs11.ObjectHandle
	info   KeyInfo
}

// keyCache maps key labels to handles and attributes. It is bounded: when
// full, an arbitrary entry is dropped (a miss costs one C_FindObjects).
type keyCache struct {
	mu  sync.RWMutex
	max int
	m   map[string]cachedKey
}

func (c *keyCache) get(label string) (cachedKey, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	k, ok := c.m[label]
	return k, ok
}

func (c *keyCache) put(label string, k cachedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedKey)
	}
	if _, ok := c.m[label]; !ok && len(c.m) >= c.max {
		for victim := range c.m {
			delete(c.m, victim)
			break
		}
	}
	c.m[label] = k
}

func (c *keyCache) drop(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, label)
}

func (c *keyCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}
