// Package ratelimit keeps one token bucket per caller, bounded in memory.
// Limits are per process: with N gateways or authn processes a caller gets
// up to N times the rate; size them accordingly (docs/operations.md).
package ratelimit

import (
	"sync"

	"golang.org/x/time/rate"
)

// maxCallers bounds the table; when full it is reset (callers restart with
// a full bucket, which errs on the side of serving).
const maxCallers = 65536

// Limiter limits each caller key to Rate events per second with Burst.
type Limiter struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*rate.Limiter
}

// New returns a limiter; perSecond <= 0 disables limiting.
func New(perSecond float64, burst int) *Limiter {
	return &Limiter{rate: rate.Limit(perSecond), burst: max(burst, 1), m: map[string]*rate.Limiter{}}
}

// Allow reports whether caller may proceed now.
func (l *Limiter) Allow(caller string) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	lim, ok := l.m[caller]
	if !ok {
		if len(l.m) >= maxCallers {
			clear(l.m)
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[caller] = lim
	}
	l.mu.Unlock()
	return lim.Allow()
}
