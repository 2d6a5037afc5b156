package chart

import (
	"slices"
	"time"
)

// Request is one measured call of a run, timed from the run's start.
type Request struct {
	At, Latency time.Duration
	Failed      bool
}

// LatencyOverTime plots every request's latency (ms, logarithmic) against
// the second it started, successes in blue and failures in red, with the
// seconds that had failures shaded and marks (faults) at their seconds.
func LatencyOverTime(title string, reqs []Request, marks []Mark) Chart {
	ok := Series{Name: "ok", Color: Blue, Style: Dots}
	failed := Series{Name: "failed", Color: Red, Style: Dots}
	bad := map[int]bool{}
	for _, r := range reqs {
		p := Point{X: r.At.Seconds(), Y: max(msOf(r.Latency), 0.01)}
		if r.Failed {
			failed.Points = append(failed.Points, p)
			bad[int(r.At/time.Second)] = true
		} else {
			ok.Points = append(ok.Points, p)
		}
	}
	return Chart{
		Title: title, XLabel: "seconds since start", YLabel: "latency (ms)", LogY: true,
		Series: []Series{ok, failed}, Marks: marks, Bands: bands(bad), BandName: "seconds with failures",
	}
}

// Second is one second of a run's timeline (loadtest's -json "timeline").
type Second struct {
	T      int
	OK     uint64
	Errors uint64
	MaxMs  float64 // slowest successful request answered in that second
}

// SlowestPerSecond plots the slowest successful request of every second (ms,
// logarithmic), with the seconds that had errors shaded and marks (faults).
func SlowestPerSecond(title string, secs []Second, marks []Mark) Chart {
	s := Series{Name: "slowest ok request", Color: Blue, Style: Line}
	bad := map[int]bool{}
	for _, x := range secs {
		if x.OK > 0 {
			s.Points = append(s.Points, Point{X: float64(x.T), Y: max(x.MaxMs, 0.01)})
		}
		if x.Errors > 0 {
			bad[x.T] = true
		}
	}
	return Chart{
		Title: title, XLabel: "second of the run", YLabel: "latency (ms)", LogY: true,
		Series: []Series{s}, Marks: marks, Bands: bands(bad), BandName: "seconds with errors",
	}
}

// Run is the outcome of one closed-loop run at a concurrency.
type Run struct {
	Concurrency int
	Throughput  float64 // successful requests per second
}

// ThroughputVsConcurrency plots throughput against the number of callers,
// one point per run.
func ThroughputVsConcurrency(title string, runs []Run) Chart {
	runs = slices.Clone(runs)
	slices.SortFunc(runs, func(a, b Run) int { return a.Concurrency - b.Concurrency })
	line := Series{Name: "requests/s", Color: Green, Style: Line}
	dots := Series{Color: Green, Style: Markers}
	for _, r := range runs {
		p := Point{X: float64(r.Concurrency), Y: r.Throughput}
		line.Points = append(line.Points, p)
		dots.Points = append(dots.Points, p)
	}
	return Chart{
		Title: title, XLabel: "concurrent callers", YLabel: "requests/s",
		Series: []Series{line, dots},
	}
}

// bands merges the given seconds into runs of consecutive seconds.
func bands(secs map[int]bool) []Band {
	var keys []int
	for k := range secs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []Band
	for _, k := range keys {
		if n := len(out); n > 0 && out[n-1].To == float64(k) {
			out[n-1].To = float64(k + 1)
			continue
		}
		out = append(out, Band{From: float64(k), To: float64(k + 1)})
	}
	return out
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
