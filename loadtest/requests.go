package main

import (
	"bufio"
	"fmt"
	"os"
	"sync"
	"time"
)

// sample is one measured request: when it was meant to be sent, how long
// it took from then, and whether it failed.
type sample struct {
	at     time.Time
	d      time.Duration
	failed bool
}

// sampleLog keeps every measured request of a run (-requests): the per-
// second timeline shows that a second was slow, the samples show at which
// millisecond, so stalls can be lined up with periodic work in the node
// (checkpoint rounds, purges, GC) logged with wall-clock times. A nil log
// keeps nothing.
type sampleLog struct {
	mu sync.Mutex
	s  []sample
}

func (l *sampleLog) add(at time.Time, d time.Duration, failed bool) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.s = append(l.s, sample{at, d, failed})
	l.mu.Unlock()
}

func (l *sampleLog) list() []sample {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s
}

// writeSamples writes samples as CSV: unix time of the intended send in
// microseconds, latency in microseconds, 1 if the request failed.
func writeSamples(file string, samples []sample) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "sent_unix_us,latency_us,failed")
	for _, s := range samples {
		failed := 0
		if s.failed {
			failed = 1
		}
		fmt.Fprintf(w, "%d,%d,%d\n", s.at.UnixMicro(), s.d.Microseconds(), failed)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
