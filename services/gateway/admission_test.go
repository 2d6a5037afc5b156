package gateway

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock is the injected clock of the admission tests: time moves only
// when the test says so.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestAdmission(slots int) (*admission, *fakeClock) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	return newAdmission(slots, 0, c.now), c
}

// TestAdmissionFreeSlots: with a slot free and nobody waiting a request is
// admitted whatever is measured.
func TestAdmissionFreeSlots(t *testing.T) {
	a, c := newTestAdmission(2)
	for i := range 2 {
		if ok, w, ref := a.decide(c.now().Add(time.Millisecond)); !ok || w != nil || ref != nil {
			t.Fatalf("request %d with a free slot: granted %v, waiter %v, refusal %v", i, ok, w, ref)
		}
	}
	if busy, queued := a.stats(); busy != 2 || queued != 0 {
		t.Fatalf("busy %d queued %d, want 2 0", busy, queued)
	}
}

// TestAdmissionByDeadline: once every slot is busy, a request is queued
// only if its predicted wait plus the mesh's answer time fits before its
// limit; otherwise it is refused at once with reason "deadline".
func TestAdmissionByDeadline(t *testing.T) {
	const slots = 4
	a, c := newTestAdmission(slots)
	limit := func() time.Time { return c.now().Add(100 * time.Millisecond) }
	for range slots {
		if ok, _, _ := a.decide(limit()); !ok {
			t.Fatal("free slot refused")
		}
	}
	// Measure: every 10 ms one slot is freed (100/s) and taken again, each
	// answer having taken 20 ms in the mesh.
	for range 20 {
		c.advance(10 * time.Millisecond)
		a.release(20 * time.Millisecond)
		if ok, _, _ := a.decide(limit()); !ok {
			t.Fatal("a freed slot was not given to the next request")
		}
	}
	// Now 100 slots/s are freed: position p waits p × 10 ms, then 20 ms in
	// the mesh. Within 100 ms: positions 1..8 (80 + 20 = 100 ms) fit.
	for pos := 1; pos <= 8; pos++ {
		ok, w, ref := a.decide(limit())
		if ok || w == nil || ref != nil {
			t.Fatalf("position %d (expected %d ms): granted %v waiter %v refusal %v; want queued", pos, pos*10+20, ok, w != nil, ref)
		}
	}
	ok, w, ref := a.decide(limit())
	if ok || w != nil || ref == nil || ref.reason != "deadline" {
		t.Fatalf("position 9 (expected 110 ms > 100 ms): granted %v waiter %v refusal %v; want refused for deadline", ok, w != nil, ref)
	}
	// A request with a longer budget still fits.
	if _, w, ref := a.decide(c.now().Add(time.Second)); w == nil || ref != nil {
		t.Fatalf("request with 1 s budget: refusal %v, want queued", ref)
	}
	if busy, queued := a.stats(); busy != slots || queued != 9 {
		t.Fatalf("busy %d queued %d, want %d 9", busy, queued, slots)
	}
}

// TestAdmissionHandsSlotsInOrder: a freed slot goes to the first waiter
// still there; a waiter that left is skipped; with nobody waiting the slot
// is freed.
func TestAdmissionHandsSlotsInOrder(t *testing.T) {
	a, c := newTestAdmission(1)
	limit := c.now().Add(time.Second)
	if ok, _, _ := a.decide(limit); !ok {
		t.Fatal("free slot refused")
	}
	_, w1, _ := a.decide(limit)
	_, w2, _ := a.decide(limit)
	_, w3, _ := a.decide(limit)
	if w1 == nil || w2 == nil || w3 == nil {
		t.Fatal("waiters not queued")
	}
	if a.leave(w1) {
		t.Fatal("w1 left but was reported granted")
	}
	a.release(5 * time.Millisecond)
	select {
	case <-w2.ready:
	default:
		t.Fatal("the slot did not go to w2 (w1 had left)")
	}
	if !a.leave(w2) {
		t.Fatal("w2 was granted; leave must say so (it owns the slot)")
	}
	a.release(5 * time.Millisecond) // w2's
	<-w3.ready
	a.release(5 * time.Millisecond) // w3's: nobody waits
	if busy, queued := a.stats(); busy != 0 || queued != 0 {
		t.Fatalf("busy %d queued %d, want 0 0", busy, queued)
	}
}

// TestAdmissionQueueBoundedByTime: a waiter that is not given a slot by the
// last moment it could still be answered leaves with reason "queue"; the
// timer is injected, so nothing here depends on the machine's speed.
func TestAdmissionQueueBoundedByTime(t *testing.T) {
	a, c := newTestAdmission(1)
	if err := a.acquire(t.Context(), c.now().Add(time.Second), nil); err != nil {
		t.Fatalf("free slot: %v", err)
	}
	a.release(40 * time.Millisecond) // the mesh answers in 40 ms
	if err := a.acquire(t.Context(), c.now().Add(time.Second), nil); err != nil {
		t.Fatalf("free slot: %v", err)
	}
	var asked time.Duration
	fire := make(chan time.Time, 1)
	after := func(d time.Duration) <-chan time.Time { asked = d; fire <- c.now(); return fire }
	err := a.acquire(t.Context(), c.now().Add(500*time.Millisecond), after)
	var ref *refusal
	if !errors.As(err, &ref) || ref.reason != "queue" {
		t.Fatalf("waiter past its time: %v, want a queue refusal", err)
	}
	if asked != 460*time.Millisecond {
		t.Fatalf("waiter gave up after %s, want 460ms (limit minus the mesh's 40 ms)", asked)
	}
	if busy, queued := a.stats(); busy != 1 || queued != 0 {
		t.Fatalf("busy %d queued %d, want 1 0", busy, queued)
	}
	// A caller that goes away leaves the queue too.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	never := func(time.Duration) <-chan time.Time { return nil }
	if err := a.acquire(ctx, c.now().Add(time.Second), never); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if _, queued := a.stats(); queued != 0 {
		t.Fatalf("cancelled waiter still queued")
	}
}

// TestAdmissionRateWindow: the rate of freed slots follows the last
// window; after a quiet spell the estimate falls back to slots / answer
// time instead of an old burst.
func TestAdmissionRateWindow(t *testing.T) {
	a, c := newTestAdmission(10)
	for range 50 {
		c.advance(time.Millisecond)
		a.release(10 * time.Millisecond)
	}
	a.mu.Lock()
	r := a.freeRateLocked(c.now())
	a.mu.Unlock()
	if r < 400 || r > 1100 {
		t.Fatalf("50 frees in 50 ms: rate %.0f/s, want about 1000/s (window-weighted)", r)
	}
	c.advance(time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.freeRateLocked(c.now()); r != 0 {
		t.Fatalf("after 1 s without frees: rate %.0f, want 0", r)
	}
	if w := a.predictWaitLocked(c.now(), 10); w != 10*time.Millisecond {
		t.Fatalf("fallback prediction for position 10: %s, want 10ms (10 slots per 10 ms)", w)
	}
}

// TestAdmissionBoundAdapts: with a target time in the mesh, at most
// (rate slots are freed) × target requests are in the mesh: a floor of
// minInMesh before anything is measured, more when answers come fast, and
// back down when they slow, without handing freed slots to waiters while
// the mesh holds more than the bound.
func TestAdmissionBoundAdapts(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	a := newAdmission(64, 50*time.Millisecond, c.now)
	far := func() time.Time { return c.now().Add(time.Second) }
	for i := range minInMesh {
		if ok, _, _ := a.decide(far()); !ok {
			t.Fatalf("request %d below the floor not granted", i)
		}
	}
	ok, w, _ := a.decide(far())
	if ok || w == nil {
		t.Fatalf("request past the floor with nothing measured: granted %v, waiter %v; want queued", ok, w)
	}
	a.leave(w)
	// 1,000 answers/s, 1 ms each: the bound becomes 1,000/s × 50 ms = 50.
	for range 200 {
		c.advance(time.Millisecond)
		a.release(time.Millisecond)
		if ok, _, _ := a.decide(far()); !ok {
			t.Fatal("freed slot not granted")
		}
	}
	for a.busy < 64 {
		if ok, w, _ := a.decide(far()); !ok {
			a.leave(w)
			break
		}
	}
	// (The sliding window counts a free on its edge twice: 50 or 51.)
	if busy, _ := a.stats(); busy < 50 || busy > 51 {
		t.Fatalf("in the mesh at 1,000 answers/s with a 50 ms target: %d, want 50", busy)
	}
	// Answers slow to 100/s: the bound falls to the floor (100/s × 50 ms
	// = 5 < minInMesh); releases do not pass slots on while the mesh holds
	// more than that.
	for range 30 {
		c.advance(10 * time.Millisecond)
		a.release(10 * time.Millisecond)
	}
	_, w, ref := a.decide(far())
	if w == nil {
		t.Fatalf("with %d in the mesh over the bound: waiter %v, refusal %v; want queued", a.busy, w, ref)
	}
	for a.busy > minInMesh {
		c.advance(10 * time.Millisecond)
		a.release(10 * time.Millisecond)
		if w.granted {
			t.Fatalf("slot passed on with %d in the mesh, over the bound %d", a.busy, minInMesh)
		}
	}
	c.advance(10 * time.Millisecond)
	a.release(10 * time.Millisecond)
	if !w.granted {
		t.Fatalf("waiter not given the slot freed at the bound (%d in the mesh)", a.busy)
	}
}
