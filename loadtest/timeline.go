package main

import (
	"sync/atomic"
	"time"
)

// timeline keeps per-second figures of the measured requests, by the second
// (counted from the start of the window) in which each one was answered, so
// a transient stall shows apart from a steady shortfall.
type timeline struct {
	slots []timelineSlot
}

type timelineSlot struct {
	ok, failed atomic.Uint64
	maxNs      atomic.Int64
}

// Second is one second of a run's timeline.
type Second struct {
	T      int     `json:"t"`
	OK     uint64  `json:"ok"`
	Errors uint64  `json:"errors"`
	MaxMs  float64 `json:"max_ms"` // slowest successful request answered in this second
}

// newTimeline covers span from the start of the window.
func newTimeline(span time.Duration) *timeline {
	n := int((span + time.Second - 1) / time.Second)
	return &timeline{slots: make([]timelineSlot, max(n, 1))}
}

// record counts a request answered at offset into the window.
func (tl *timeline) record(offset, latency time.Duration, failed bool) {
	i := int(offset / time.Second)
	if offset < 0 || i >= len(tl.slots) {
		return
	}
	s := &tl.slots[i]
	if failed {
		s.failed.Add(1)
		return
	}
	s.ok.Add(1)
	v := int64(latency)
	for {
		old := s.maxNs.Load()
		if v <= old || s.maxNs.CompareAndSwap(old, v) {
			return
		}
	}
}

// seconds lists the timeline up to its last non-empty second.
func (tl *timeline) seconds() []Second {
	last := -1
	for i := range tl.slots {
		if tl.slots[i].ok.Load()+tl.slots[i].failed.Load() > 0 {
			last = i
		}
	}
	out := make([]Second, 0, last+1)
	for i := 0; i <= last; i++ {
		s := &tl.slots[i]
		out = append(out, Second{T: i, OK: s.ok.Load(), Errors: s.failed.Load(), MaxMs: ms(time.Duration(s.maxNs.Load()))})
	}
	return out
}
