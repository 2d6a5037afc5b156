package main

import (
	"testing"
	"time"
)

func TestTimeline(t *testing.T) {
	t.Parallel()
	tl := newTimeline(2500 * time.Millisecond) // 3 slots
	tl.record(100*time.Millisecond, 5*time.Millisecond, false)
	tl.record(900*time.Millisecond, 9*time.Millisecond, false)
	tl.record(1500*time.Millisecond, time.Second, true) // errors carry no latency
	tl.record(-time.Millisecond, time.Hour, false)      // warmup: ignored
	tl.record(10*time.Second, time.Hour, false)         // past the end: ignored
	got := tl.seconds()
	want := []Second{{T: 0, OK: 2, MaxMs: 9}, {T: 1, Errors: 1}}
	if len(got) != len(want) {
		t.Fatalf("seconds = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("second %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := newTimeline(0).seconds(); len(s) != 0 {
		t.Errorf("empty timeline = %+v", s)
	}
}
