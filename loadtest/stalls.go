package main

import (
	"bufio"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runStalls looks for what makes the tail of a run's latency: it reads
// every request of a run (-requests of an open-loop run) and asks whether
// the slow ones (over the run's p99) bunch up at some phase of a period the
// node does periodic work at (the audit service's 1 s checkpoint rounds,
// its 10 s event purge) or overlap the node's garbage collections
// (GODEBUG=gctrace=1 output, with the node's start time). Evenly spread
// slow requests are queueing; bunched ones are a stall with a cause.
//
//	loadtest stalls -requests run.csv -period 1s,10s -gctrace node.stderr -gc-start UNIX_US
func runStalls(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest stalls", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("requests", "", "CSV `FILE` of a run's requests (loadtest -requests)")
	periods := fs.String("period", "1s,10s", "periods of the node's periodic work, comma separated")
	bins := fs.Int("bins", 10, "phase bins per period")
	gcFile := fs.String("gctrace", "", "the node's stderr with GODEBUG=gctrace=1 lines")
	gcStart := fs.Int64("gc-start", 0, "unix time in µs at which the node process started (its gctrace times count from it)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	reqs, err := readSamples(*file)
	if err != nil || len(reqs) == 0 {
		fmt.Fprintf(stderr, "loadtest stalls: %v (%d requests)\n", err, len(reqs))
		return 1
	}
	lat := make([]time.Duration, 0, len(reqs))
	for _, r := range reqs {
		if !r.failed {
			lat = append(lat, r.d)
		}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	p99 := q(0.99)
	slow := 0
	for _, r := range reqs {
		if r.failed || r.d > p99 {
			slow++
		}
	}
	fmt.Fprintf(stdout, "%d requests, %d failed; p50 %s, p99 %s, p99.9 %s, max %s; %d over p99\n",
		len(reqs), len(reqs)-len(lat), ms3(q(0.5)), ms3(p99), ms3(q(0.999)), ms3(lat[len(lat)-1]), slow)
	t0 := reqs[0].at
	for _, ps := range strings.Split(*periods, ",") {
		p, err := time.ParseDuration(strings.TrimSpace(ps))
		if err != nil || p <= 0 {
			fmt.Fprintf(stderr, "loadtest stalls: period %q\n", ps)
			return 2
		}
		all, over := make([]int, *bins), make([]int, *bins)
		for _, r := range reqs {
			b := int(r.at.Sub(t0) % p * time.Duration(*bins) / p)
			all[b]++
			if r.failed || r.d > p99 {
				over[b]++
			}
		}
		fmt.Fprintf(stdout, "period %s, share of the requests over p99 by phase (even: %.0f %% each):", p, 100/float64(*bins))
		top := 0
		for b := range over {
			fmt.Fprintf(stdout, " %.0f", 100*float64(over[b])/float64(max(slow, 1)))
			top = max(top, over[b])
		}
		fmt.Fprintf(stdout, " %%; busiest phase holds %.1f× its even share\n", float64(top)*float64(*bins)/float64(max(slow, 1)))
	}
	if *gcFile != "" {
		gcs, err := readGCTrace(*gcFile, time.UnixMicro(*gcStart))
		if err != nil {
			fmt.Fprintf(stderr, "loadtest stalls: %v\n", err)
			return 1
		}
		hit := func(r sample) bool {
			end := r.at.Add(r.d)
			i, _ := slices.BinarySearchFunc(gcs, r.at, func(g gcSpan, t time.Time) int { return g.end.Compare(t) })
			return i < len(gcs) && gcs[i].start.Before(end)
		}
		var inAll, inSlow int
		for _, r := range reqs {
			if hit(r) {
				inAll++
				if r.failed || r.d > p99 {
					inSlow++
				}
			}
		}
		fmt.Fprintf(stdout, "GC: %d cycles in the run; %.1f %% of all requests and %.1f %% of those over p99 overlap one\n",
			countIn(gcs, t0, reqs[len(reqs)-1].at), 100*float64(inAll)/float64(len(reqs)), 100*float64(inSlow)/float64(max(slow, 1)))
	}
	return 0
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func readSamples(file string) ([]sample, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, err
	}
	var out []sample
	for _, row := range rows[min(1, len(rows)):] {
		if len(row) != 3 {
			return nil, fmt.Errorf("%s: row %v", file, row)
		}
		at, err1 := strconv.ParseInt(row[0], 10, 64)
		us, err2 := strconv.ParseInt(row[1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s: row %v", file, row)
		}
		out = append(out, sample{at: time.UnixMicro(at), d: time.Duration(us) * time.Microsecond, failed: row[2] == "1"})
	}
	slices.SortFunc(out, func(a, b sample) int { return a.at.Compare(b.at) })
	return out, nil
}

// gcSpan is one collection, from its start to the end of its mark
// termination (the wall-clock sum of gctrace's three phases).
type gcSpan struct{ start, end time.Time }

// "gc 12 @3.456s 2%: 0.019+1.2+0.003 ms clock, ..."
var gcLine = regexp.MustCompile(`^gc \d+ @([0-9.]+)s \d+%: ([0-9.]+)\+([0-9.]+)\+([0-9.]+) ms clock`)

func readGCTrace(file string, started time.Time) ([]gcSpan, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []gcSpan
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := gcLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var v [4]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(m[i+1], 64)
		}
		start := started.Add(time.Duration(v[0] * float64(time.Second)))
		out = append(out, gcSpan{start, start.Add(time.Duration((v[1] + v[2] + v[3]) * float64(time.Millisecond)))})
	}
	return out, sc.Err()
}

func countIn(gcs []gcSpan, from, to time.Time) int {
	n := 0
	for _, g := range gcs {
		if !g.start.Before(from) && g.start.Before(to) {
			n++
		}
	}
	return n
}
