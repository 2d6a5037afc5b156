package hsm

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// Compare-and-swap of a token data object: created once, replaced only
// from the value it holds, the newest version read after a crash left two.
func TestDataObjectCompareAndSwap(t *testing.T) {
	h := newTestHSM(t)
	ctx := context.Background()
	const label = "sovkeys-test-state"
	if v, err := h.ReadData(ctx, label); err != nil || v != nil {
		t.Fatalf("empty token: %q %v", v, err)
	}
	if err := h.CompareAndSwapData(ctx, label, []byte("x"), []byte("v1")); !errors.Is(err, ErrDataChanged) {
		t.Fatalf("swap from a value that is not there: %v", err)
	}
	if err := h.CompareAndSwapData(ctx, label, nil, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := h.CompareAndSwapData(ctx, label, nil, []byte("v1bis")); !errors.Is(err, ErrDataChanged) {
		t.Fatalf("second create: %v", err)
	}
	for i := 2; i <= 5; i++ {
		if err := h.CompareAndSwapData(ctx, label, []byte(fmt.Sprintf("v%d", i-1)), []byte(fmt.Sprintf("v%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.CompareAndSwapData(ctx, label, []byte("v3"), []byte("rewound")); !errors.Is(err, ErrDataChanged) {
		t.Fatalf("swap from an old value: %v", err)
	}
	if v, err := h.ReadData(ctx, label); err != nil || string(v) != "v5" {
		t.Fatalf("read: %q %v", v, err)
	}
}

// What a state write costs (it holds the module's object lock, as key
// creation does: every other call of the process waits meanwhile).
//
//	go test ./services/keyworker/internal/hsm -run '^$' -bench DataObjectSwap -benchtime 200x
func BenchmarkDataObjectSwap(b *testing.B) {
	h := newTestHSM(b)
	ctx := context.Background()
	prev := []byte(nil)
	for i := range b.N {
		next := []byte(fmt.Sprintf(`{"size":%d}`, i+1))
		if err := h.CompareAndSwapData(ctx, "sovkeys-bench-state", prev, next); err != nil {
			b.Fatal(err)
		}
		prev = next
	}
}
