package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// sendFunc sends request number seq and names the operation it sent.
type sendFunc func(ctx context.Context, seq uint64) (op string, err error)

// opStats are the measured figures of one operation.
type opStats struct {
	requests atomic.Uint64 // measured requests answered (success or error)
	failed   atomic.Uint64
	lat      histogram // successful requests only
}

// errorCount is one class of error and an example message.
type errorCount struct {
	Kind   string `json:"kind"`
	Count  uint64 `json:"count"`
	Sample string `json:"sample"`
}

type errorCounts struct {
	mu sync.Mutex
	m  map[string]*errorCount
}

func (e *errorCounts) add(err error) {
	kind := classify(err)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]*errorCount{}
	}
	c, ok := e.m[kind]
	if !ok {
		msg := err.Error()
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		c = &errorCount{Kind: kind, Sample: msg}
		e.m[kind] = c
	}
	c.Count++
}

// sorted lists error classes, most frequent first.
func (e *errorCounts) sorted() []errorCount {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]errorCount, 0, len(e.m))
	for _, c := range e.m {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Kind < out[j].Kind
	})
	return out
}

// runner sends load for warmup+duration, then waits for the requests still
// out. It is bounded three ways: the schedule ends at start+warmup+duration,
// no more than MaxRequests are sent, and its context expires a request
// timeout (plus grace) after the schedule ends.
type runner struct {
	cfg  Config
	send sendFunc
	now  func() time.Time

	start, measureFrom, end time.Time

	claimed  atomic.Uint64 // requests numbered so far, the safety cap's count
	capHit   atomic.Bool
	inFlight atomic.Int64
	peak     atomic.Int64
	lastDone atomic.Int64 // unix ns of the latest completion

	all        histogram // every successful measured request
	refused    histogram // every measured refusal (429 / 503 answered by the server)
	lag        histogram // open loop: actual minus intended send time
	ops        map[string]*opStats
	okInWindow atomic.Uint64 // successes completed inside the window
	errs       errorCounts
	timeline   *timeline
	// samples: every measured request, kept with -requests (requests.go).
	samples *sampleLog
}

// result is what a run measured.
type result struct {
	window      time.Duration
	okInWindow  uint64
	requests    uint64
	failed      uint64
	all         *histogram
	refused     *histogram
	lag         *histogram
	ops         map[string]*opStats
	errs        []errorCount
	peak        int64
	capped      bool
	interrupted bool
	// open loop: requests the schedule placed in the window, and how many
	// of them were never answered because the run's time limit came first
	scheduled, unsent uint64
	timeline          []Second
	samples           []sample
}

func newRunner(cfg Config, send sendFunc, now func() time.Time) *runner {
	r := &runner{cfg: cfg, send: send, now: now, ops: map[string]*opStats{}}
	if cfg.RequestsFile != "" {
		r.samples = &sampleLog{}
	}
	for _, name := range cfg.opNames() {
		r.ops[name] = &opStats{}
	}
	return r
}

// run sends the load and returns once every request sent has answered or
// timed out.
func (r *runner) run(ctx context.Context) result {
	r.start = r.now()
	r.measureFrom = r.start.Add(r.cfg.Warmup)
	r.end = r.measureFrom.Add(r.cfg.Duration)
	hardStop := r.end.Add(r.cfg.Timeout + 5*time.Second)
	r.timeline = newTimeline(hardStop.Sub(r.measureFrom))
	ctx, cancel := context.WithDeadline(ctx, hardStop)
	defer cancel()

	var wg sync.WaitGroup
	for range r.cfg.workers() {
		if r.cfg.OpenLoop() {
			wg.Go(func() { r.openWorker(ctx) })
		} else {
			wg.Go(func() { r.closedWorker(ctx) })
		}
	}
	wg.Wait()

	res := result{
		all: &r.all, refused: &r.refused, lag: &r.lag, ops: r.ops, errs: r.errs.sorted(),
		okInWindow: r.okInWindow.Load(), peak: r.peak.Load(), capped: r.capHit.Load(),
		interrupted: ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded),
		timeline:    r.timeline.seconds(),
		samples:     r.samples.list(),
	}
	for _, s := range r.ops {
		res.requests += s.requests.Load()
		res.failed += s.failed.Load()
	}
	// The window is warmup's end to the schedule's end, or to the last
	// answer when the run stopped early.
	windowEnd := r.end
	if last := time.Unix(0, r.lastDone.Load()); (res.capped || res.interrupted) && last.Before(windowEnd) {
		windowEnd = last
	}
	res.window = max(windowEnd.Sub(r.measureFrom), 0)
	if r.cfg.OpenLoop() && !res.interrupted {
		res.scheduled = scheduledIn(r.cfg)
		if res.scheduled > res.requests {
			res.unsent = res.scheduled - res.requests
		}
	}
	return res
}

// slotTime is when the open-loop schedule sends request seq, after start.
func slotTime(seq uint64, rate float64) time.Duration {
	return time.Duration(math.Round(float64(seq) * float64(time.Second) / rate))
}

// firstSlotAt is the first request the schedule sends at or after d.
func firstSlotAt(d time.Duration, rate float64) uint64 {
	seq := uint64(max(math.Floor(d.Seconds()*rate)-1, 0))
	for slotTime(seq, rate) < d {
		seq++
	}
	return seq
}

// scheduledIn counts the open-loop requests whose intended send time falls
// in the measured window, within the safety cap. Compared with what was
// answered it exposes requests the generator never got to send, which an
// open loop must not silently drop.
func scheduledIn(cfg Config) uint64 {
	first := firstSlotAt(cfg.Warmup, cfg.Rate)
	end := min(firstSlotAt(cfg.Warmup+cfg.Duration, cfg.Rate), uint64(cfg.MaxRequests))
	if end <= first {
		return 0
	}
	return end - first
}

// claim numbers the next request, or reports that the safety cap is reached.
func (r *runner) claim() (uint64, bool) {
	n := r.claimed.Add(1) - 1
	if n >= uint64(r.cfg.MaxRequests) {
		r.capHit.Store(true)
		return 0, false
	}
	return n, true
}

// closedWorker sends its next request as soon as the previous one answers.
func (r *runner) closedWorker(ctx context.Context) {
	for ctx.Err() == nil {
		sent := r.now()
		if !sent.Before(r.end) {
			return
		}
		seq, ok := r.claim()
		if !ok {
			return
		}
		r.exchange(ctx, seq, sent, sent)
	}
}

// openWorker takes the next slot of the fixed schedule, waits for its
// intended time and sends. A slot taken late (every worker was busy) still
// counts its latency from the intended time, so queueing in the generator or
// the server shows in the figures instead of silently lowering the rate.
func (r *runner) openWorker(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		seq, ok := r.claim()
		if !ok {
			return
		}
		intended := r.start.Add(slotTime(seq, r.cfg.Rate))
		if !intended.Before(r.end) {
			return
		}
		if wait := intended.Sub(r.now()); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		sent := r.now()
		if !intended.Before(r.measureFrom) {
			r.lag.Record(sent.Sub(intended))
		}
		r.exchange(ctx, seq, intended, sent)
	}
}

// exchange sends one request and records it against its intended time.
func (r *runner) exchange(ctx context.Context, seq uint64, intended, sent time.Time) {
	n := r.inFlight.Add(1)
	for {
		p := r.peak.Load()
		if n <= p || r.peak.CompareAndSwap(p, n) {
			break
		}
	}
	reqCtx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	op, err := r.send(reqCtx, seq)
	cancel()
	done := r.now()
	r.inFlight.Add(-1)
	for {
		l := r.lastDone.Load()
		if done.UnixNano() <= l || r.lastDone.CompareAndSwap(l, done.UnixNano()) {
			break
		}
	}
	if err != nil && ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return // the run was interrupted; this is not the server's error
		}
		err = fmt.Errorf("%w: %w", errCutOff, err)
	}
	if err == nil && !done.Before(r.measureFrom) && !done.After(r.end) {
		r.okInWindow.Add(1)
	}
	if intended.Before(r.measureFrom) {
		return // warmup
	}
	s := r.ops[op]
	if s == nil {
		s = r.ops[r.cfg.opNames()[0]]
	}
	s.requests.Add(1)
	d := done.Sub(intended)
	r.timeline.record(done.Sub(r.measureFrom), d, err != nil)
	r.samples.add(intended, d, err != nil)
	if err != nil {
		s.failed.Add(1)
		r.errs.add(err)
		if isRefusal(err) {
			r.refused.Record(d)
		}
		return
	}
	s.lat.Record(d)
	r.all.Record(d)
}
