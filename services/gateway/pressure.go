package gateway

// Admission by CPU (issue 25, 2026-12-07).
//
// The adaptive bound of admission.go keeps a request's time in the mesh
// near its target, but it cannot see time spent before the handler runs.
// Measured on a quiet machine (docs/BENCHMARKS.md "Quiet machine"), a
// standalone node pinned to one CPU at 1.3x its capacity kept every
// request's mesh time within budget while the CPU stayed saturated: a
// request waited in its socket until a goroutine got the CPU to read it,
// refusals took as long as answers (p99 114 ms to 1.3 s), and with the
// client's pool of connections full the rest waited in the client.
//
// So the gateway also watches how long this process's runnable goroutines
// wait for a CPU (runtime/metrics /sched/latencies:seconds). When, over a
// tick, the 90th percentile of that wait exceeds CPUWaitLimit the CPU is
// saturated: the number of requests let into the mesh is cut to 3/4 of
// what is there now (not of the old ceiling, which may be far above), and
// grows again by an eighth per tick while the wait stays under the limit
// (AIMD). The excess is refused at once by the time-bounded queue, and the
// CPU left free keeps reading (and refusing) new requests promptly.
//
// The wait is that of the Go scheduler only: a process starved by other
// processes (the cluster's NATS servers on the same cores) does not see
// it, and then the ceiling stays where it is.

import (
	"context"
	"runtime/metrics"
	"time"

	smetrics "github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// pressureTick is how often the scheduler's wait is read.
const pressureTick = 50 * time.Millisecond

// DefaultCPUWaitLimit is the default of Config.CPUWaitLimit.
const DefaultCPUWaitLimit = 2 * time.Millisecond

const schedLatencies = "/sched/latencies:seconds"

// schedWait reads the Go scheduler's wait histogram and reports, per call,
// the given quantile of the waits recorded since the previous call.
type schedWait struct {
	sample []metrics.Sample
	prev   []uint64
}

func newSchedWait() *schedWait {
	return &schedWait{sample: []metrics.Sample{{Name: schedLatencies}}}
}

// quantile is the q-quantile (upper bucket bound) of the waits since the
// last call; ok is false when none were recorded (or on the first call).
func (w *schedWait) quantile(q float64) (d time.Duration, ok bool) {
	metrics.Read(w.sample)
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, false
	}
	h := w.sample[0].Value.Float64Histogram()
	first := w.prev == nil
	delta := make([]uint64, len(h.Counts))
	for i, c := range h.Counts {
		if !first && i < len(w.prev) {
			delta[i] = c - w.prev[i]
		}
	}
	w.prev = append(w.prev[:0], h.Counts...)
	if first {
		return 0, false
	}
	return histQuantile(delta, h.Buckets, q)
}

// histQuantile is the q-quantile of counts over buckets (len(buckets) ==
// len(counts)+1, bucket i is [buckets[i], buckets[i+1]) seconds), as the
// upper bound of the bucket it falls in (the lower one for the last,
// unbounded bucket).
func histQuantile(counts []uint64, buckets []float64, q float64) (time.Duration, bool) {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(buckets) != len(counts)+1 {
		return 0, false
	}
	want := uint64(q * float64(total))
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen > want {
			up := buckets[i+1]
			if up > 3600 || up != up { // +Inf (or NaN): the bucket's lower bound
				up = buckets[i]
			}
			return time.Duration(up * float64(time.Second)), true
		}
	}
	return time.Duration(buckets[len(buckets)-1] * float64(time.Second)), true
}

// pressure lowers or raises the admission ceiling: saturated says the CPU
// wait was over the limit during the last tick.
func (a *admission) pressure(saturated bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ceiling == 0 {
		a.ceiling = a.slots
	}
	if saturated {
		a.ceiling = max(minInMesh, min(a.ceiling, a.busy)*3/4)
		return
	}
	if a.ceiling < a.slots {
		a.ceiling = min(a.slots, a.ceiling+max(1, a.ceiling/8))
	}
}

// watchCPU adjusts the ceilings of as every pressureTick until ctx ends.
func watchCPU(ctx context.Context, limit time.Duration, as ...*admission) {
	w := newSchedWait()
	t := time.NewTicker(pressureTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p90, ok := w.quantile(0.9)
		if !ok {
			continue
		}
		if p90 > limit {
			smetrics.CPUSaturated()
		}
		for _, a := range as {
			a.pressure(p90 > limit)
		}
	}
}
