package gateway

// Admission by deadline (issue 25).
//
// Past its capacity a node that queues everything answers nothing in time:
// each request waits behind more work than can be done before its deadline,
// and the node then does that work for callers that have given up. So the
// gateway bounds the requests it has in the mesh (slots) and keeps the rest
// in a FIFO bounded by TIME, not count:
//
//   - a request that finds a free slot (and nobody waiting) goes in;
//   - otherwise the wait it would have is predicted from its place in the
//     queue and the rate at which slots have been freed, plus the time the
//     mesh takes to answer; if that does not fit before the request's
//     admission limit (its deadline, and at most AdmitWithin after it was
//     received) it is refused at once: 429 ThrottlingException, the answer
//     the XKS spec gives for load, written before the body is read;
//   - a request that waits and is not given a slot by the time it could
//     still be answered leaves the queue with the same 429.
//
// The slots themselves adapt (2026-12-07, measured in test/cluster
// overload_test.go): a fixed count lets the mesh's own queues grow. With
// 64 slots per gateway two gateways put 128 requests into a mesh that
// answered 309/s, i.e. 0.41 s each (Little's law), every admitted request
// missed its budget and goodput fell to 1 % of capacity. So at most
// rate × target requests are in the mesh at once, where rate is how fast
// slots were freed over the last window and target the time a request may
// spend in the mesh (half the admission budget; the other half is for the
// queue): when answers come faster than target the bound grows (rate ×
// target exceeds what is in the mesh), when slower it shrinks, and the
// mesh's time per answer settles near target instead of growing with the
// offered load. minInMesh keeps a floor so a quiet gateway (no rate
// measured) still admits bursts.
//
// The decision uses only the injected clock and counts (no timers), so it
// is tested deterministically (admission_test.go).

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// admissionWindow is the width of the sliding window over which the rate of
// freed slots is measured.
const admissionWindow = 100 * time.Millisecond

// minInMesh is the least the adaptive bound lets into the mesh.
const minInMesh = 8

// maxWaiters bounds memory whatever the prediction says.
const maxWaiters = 1 << 14

// refusal says why admission refused a request.
type refusal struct{ reason, why string }

func (r *refusal) Error() string { return r.why }

type waiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool
	gone    bool // left the queue (refused, or the caller went away)
}

// admission is the gateway's slot pool and time-bounded queue.
type admission struct {
	now   func() time.Time
	slots int // at most this many in the mesh
	// target is the time a request should spend in the mesh; the bound on
	// requests in the mesh adapts to keep it (0: the bound is slots).
	target time.Duration

	mu      sync.Mutex
	busy    int
	waiting []*waiter // FIFO; entries marked gone are skipped
	queued  int       // waiters not gone
	// service is an estimate (moving average) of how long the mesh takes to
	// answer an admitted request.
	service time.Duration
	// Freed slots in the current and the previous window.
	winStart            time.Time
	winFreed, prevFreed int
}

func newAdmission(slots int, target time.Duration, now func() time.Time) *admission {
	return &admission{slots: slots, target: target, now: now}
}

// boundLocked is how many requests may be in the mesh now: slots, or with
// a target, rate × target within [minInMesh, slots].
func (a *admission) boundLocked(now time.Time) int {
	if a.target <= 0 || a.slots <= minInMesh {
		return a.slots
	}
	n := int(math.Ceil(a.freeRateLocked(now) * a.target.Seconds()))
	return min(max(n, minInMesh), a.slots)
}

// decide is the admission decision for a request that must be answered by
// limit: granted (a slot is taken), queued (w must wait), or refused.
func (a *admission) decide(limit time.Time) (granted bool, w *waiter, ref *refusal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.busy < a.boundLocked(now) && a.queued == 0 {
		a.busy++
		return true, nil, nil
	}
	if a.queued >= maxWaiters {
		return false, nil, &refusal{reason: metrics.ReasonQueue, why: "admission queue is full, retry later"}
	}
	wait := a.predictWaitLocked(now, a.queued+1)
	if now.Add(wait + a.service).After(limit) {
		return false, nil, &refusal{reason: metrics.ReasonDeadline,
			why: "cannot be answered within its time budget (expected " + (wait + a.service).Round(time.Millisecond).String() + "), retry later"}
	}
	w = &waiter{ready: make(chan struct{})}
	a.waiting = append(a.waiting, w)
	a.queued++
	return false, w, nil
}

// predictWaitLocked is how long the request at position pos (1 = next) of
// the queue is expected to wait for a slot: pos / (rate at which slots are
// freed). With no measured rate yet, slots / service time stands in for it
// (Little's law with every slot busy).
func (a *admission) predictWaitLocked(now time.Time, pos int) time.Duration {
	rate := a.freeRateLocked(now)
	if rate <= 0 && a.service > 0 {
		rate = float64(a.slots) / a.service.Seconds()
	}
	if rate <= 0 {
		return 0 // nothing measured yet: the queue's time bound decides
	}
	return time.Duration(float64(pos) / rate * float64(time.Second))
}

// freeRateLocked is the rate (per second) at which slots were freed over
// the last admissionWindow (sliding-window estimate).
func (a *admission) freeRateLocked(now time.Time) float64 {
	a.rollLocked(now)
	elapsed := now.Sub(a.winStart)
	frac := 1 - float64(elapsed)/float64(admissionWindow)
	n := float64(a.winFreed) + float64(a.prevFreed)*max(frac, 0)
	return n / admissionWindow.Seconds()
}

func (a *admission) rollLocked(now time.Time) {
	switch d := now.Sub(a.winStart); {
	case d < 0:
		a.winStart = now // the clock went back: start again
		a.winFreed, a.prevFreed = 0, 0
	case d >= 2*admissionWindow:
		a.winStart, a.winFreed, a.prevFreed = now, 0, 0
	case d >= admissionWindow:
		a.winStart, a.prevFreed, a.winFreed = a.winStart.Add(admissionWindow), a.winFreed, 0
	}
}

// release frees a slot taken by an admitted request whose round trip in
// the mesh took took (0: not a measurement, e.g. it failed early). The
// slot goes straight to the first waiter, if any.
func (a *admission) release(took time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.rollLocked(now)
	a.winFreed++
	if took > 0 {
		if a.service == 0 {
			a.service = took
		} else {
			a.service += (took - a.service) / 16
		}
	}
	for len(a.waiting) > 0 && a.busy <= a.boundLocked(now) {
		w := a.waiting[0]
		a.waiting[0] = nil
		a.waiting = a.waiting[1:]
		if w.gone {
			continue
		}
		a.queued--
		w.granted = true
		close(w.ready)
		return // the slot passes on: busy is unchanged
	}
	a.busy--
}

// leave takes w out of the queue unless it has been given a slot meanwhile
// (then it reports true and the caller owns the slot).
func (a *admission) leave(w *waiter) (granted bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w.granted {
		return true
	}
	if !w.gone {
		w.gone = true
		a.queued--
	}
	return false
}

// giveUpAt is when a waiter admitted by limit must leave the queue: the
// latest moment it could still be answered.
func (a *admission) giveUpAt(limit time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return limit.Add(-a.service)
}

// acquire takes a slot for a request that must be answered by limit, or
// refuses it. after makes the timer of the wait (time.After in production).
func (a *admission) acquire(ctx context.Context, limit time.Time, after func(time.Duration) <-chan time.Time) error {
	granted, w, ref := a.decide(limit)
	if granted {
		return nil
	}
	if ref != nil {
		return ref
	}
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	case <-after(a.giveUpAt(limit).Sub(a.now())):
	}
	if a.leave(w) {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &refusal{reason: metrics.ReasonQueue, why: "waited for the key service longer than its time budget allows, retry later"}
}

// stats reports slots in use and requests waiting (for tests and metrics).
func (a *admission) stats() (busy, queued int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy, a.queued
}
