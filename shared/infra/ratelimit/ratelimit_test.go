package ratelimit

import "testing"

func TestPerCallerBuckets(t *testing.T) {
	l := New(1, 3) // 1/s: the test cannot refill within its run
	for i := range 3 {
		if !l.Allow("a") {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	if l.Allow("a") {
		t.Fatal("request past the burst allowed")
	}
	if !l.Allow("b") {
		t.Fatal("another caller shares a's bucket")
	}
	if !New(0, 0).Allow("x") {
		t.Fatal("a disabled limiter refused")
	}
}

// An attacker floods the table with new caller keys to reset the bucket of
// a caller being throttled: the throttled caller stays throttled, the
// table stays bounded, and the least recently seen callers are evicted.
func TestFloodDoesNotResetThrottledCaller(t *testing.T) {
	const size = 64
	l := newWithMax(0.001, 1, size) // no refill within the test
	if !l.Allow("hot") {
		t.Fatal("first request refused")
	}
	for i := range 10 * size {
		l.Allow("flood-" + string(rune('a'+i%26)) + string(rune(i)))
		if l.Allow("hot") {
			t.Fatalf("throttled caller allowed again after %d new callers", i+1)
		}
	}
	if n := l.Len(); n > size {
		t.Fatalf("table holds %d callers, bound %d", n, size)
	}
	// The default bound is the production one.
	if New(1, 1).max != maxCallers {
		t.Fatal("default bound changed")
	}
}
