// Package ratelimit keeps one token bucket per caller, bounded in memory.
// Limits are per process: with N gateways or authn processes a caller gets
// up to N times the rate; size them accordingly (docs/operations.md).
package ratelimit

import (
	"container/list"
	"sync"

	"golang.org/x/time/rate"
)

// maxCallers bounds the table. When full, the least recently seen caller is
// evicted: a caller being throttled right now is the most recently seen, so
// a flood of new caller keys can never reset its bucket (wiping the whole
// table, as a reset would, hands every throttled caller a full burst).
const maxCallers = 65536

// Limiter limits each caller key to Rate events per second with Burst.
type Limiter struct {
	rate  rate.Limit
	burst int
	max   int
	mu    sync.Mutex
	m     map[string]*list.Element // of *entry
	lru   *list.List               // front: most recently seen
}

type entry struct {
	caller string
	lim    *rate.Limiter
}

// New returns a limiter; perSecond <= 0 disables limiting.
func New(perSecond float64, burst int) *Limiter {
	return newWithMax(perSecond, burst, maxCallers)
}

func newWithMax(perSecond float64, burst, maxEntries int) *Limiter {
	return &Limiter{rate: rate.Limit(perSecond), burst: max(burst, 1), max: maxEntries,
		m: map[string]*list.Element{}, lru: list.New()}
}

// Allow reports whether caller may proceed now.
func (l *Limiter) Allow(caller string) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	var lim *rate.Limiter
	if el, ok := l.m[caller]; ok {
		l.lru.MoveToFront(el)
		lim = el.Value.(*entry).lim
	} else {
		for len(l.m) >= l.max {
			oldest := l.lru.Back()
			l.lru.Remove(oldest)
			delete(l.m, oldest.Value.(*entry).caller)
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[caller] = l.lru.PushFront(&entry{caller: caller, lim: lim})
	}
	l.mu.Unlock()
	return lim.Allow()
}

// Len returns how many callers the table holds.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
