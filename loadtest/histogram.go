package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram records latencies in log-linear buckets (HdrHistogram's layout):
// values below 2^subBits ns are exact, larger ones keep subBits significant
// bits, so any quantile is within 1/2^(subBits-1) (< 1%) of the truth while
// memory stays fixed whatever the request count. Safe for concurrent use.
type histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // ns
	max    atomic.Int64  // ns
}

const (
	subBits    = 8
	subCount   = 1 << subBits // 256
	halfCount  = subCount / 2 // mantissas of magnitude buckets are in [half, sub)
	maxShift   = 63 - subBits + 1
	numBuckets = subCount + maxShift*halfCount
)

// bucketOf maps a non-negative value to its bucket.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits // >= 1
	m := v >> shift                  // in [half, sub)
	return subCount + (shift-1)*halfCount + int(m-halfCount)
}

// bucketRange is the smallest and largest value of bucket i.
func bucketRange(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	j := i - subCount
	shift := j/halfCount + 1
	m := uint64(j%halfCount + halfCount)
	lo = m << shift
	return lo, lo + (1 << shift) - 1
}

// Record adds one latency; negative values count as zero.
func (h *histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(uint64(v))].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for {
		old := h.max.Load()
		if v <= old || h.max.CompareAndSwap(old, v) {
			return
		}
	}
}

// Count is the number of values recorded.
func (h *histogram) Count() uint64 { return h.total.Load() }

// Max is the largest value recorded, exactly.
func (h *histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean is the arithmetic mean, or 0 when empty.
func (h *histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value at quantile q in [0, 1]: the midpoint of the
// bucket holding the ceil(q*n)-th smallest value, capped at the exact max.
// Call it once recording has stopped.
func (h *histogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			lo, hi := bucketRange(i)
			v := time.Duration(lo + (hi-lo)/2)
			return min(v, h.Max())
		}
	}
	return h.Max()
}
