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
