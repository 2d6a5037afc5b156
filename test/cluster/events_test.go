package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/xksclient"
)

// The node-fault matrix: each NATS node fault (kill -9, and the node's
// return) is measured over the requests started in the 5 s around it, at
// each load rate of SOVKEYS_CLUSTER_RATES (open-loop XKS encrypts per
// second over both gateways). By default one rate, so the package stays
// within `make test`'s 12 min on 2 cores; the full matrix of
// docs/BENCHMARKS.md is SOVKEYS_CLUSTER_RATES=100,300
// (`make cluster-test RATES=100,300`).
const (
	defaultRates = "100"
	// eventBefore and eventAfter: the window of an event, 5 s around it.
	eventBefore = time.Second
	eventAfter  = 4 * time.Second
	// nodeDown: how long a killed node stays down; longer than eventAfter,
	// so the kill's window ends before the return's begins.
	nodeDown  = 6 * time.Second
	fastAfter = 100 * time.Millisecond
)

func faultRates(t *testing.T) []int {
	s := os.Getenv("SOVKEYS_CLUSTER_RATES")
	if s == "" {
		s = defaultRates
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r < 1 || r > 2000 {
			t.Fatalf("SOVKEYS_CLUSTER_RATES: %q is not a rate (1..2000 req/s)", f)
		}
		out = append(out, r)
	}
	return out
}

// eventReport is what one event (a kill, a return, a rebalance) cost the
// requests started around it.
type eventReport struct {
	name                  string
	rate                  int
	requests, failed      int
	over250, over100      int
	p99, p999             time.Duration // of all requests, a failed one counting as slowest
	p99Failed, p999Failed bool
}

// event summarises the requests started in [at-eventBefore, to), at least
// the 5 s around at.
func (l *load) event(name string, rate int, at, to time.Time) eventReport {
	from := at.Add(-eventBefore)
	to = later(to, at.Add(eventAfter))
	l.mu.Lock()
	defer l.mu.Unlock()
	e := eventReport{name: name, rate: rate}
	var lat []time.Duration
	const failed = time.Duration(1<<63 - 1)
	for _, r := range l.results {
		if r.start.Before(from) || !r.start.Before(to) {
			continue
		}
		e.requests++
		switch {
		case r.err != nil:
			e.failed++
			lat = append(lat, failed)
			continue
		case r.dur > slowAfter:
			e.over250++
		}
		if r.dur > fastAfter {
			e.over100++
		}
		lat = append(lat, r.dur)
	}
	if len(lat) == 0 {
		return e
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	e.p99, e.p999 = q(0.99), q(0.999)
	e.p99Failed, e.p999Failed = e.p99 == failed, e.p999 == failed
	return e
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func fmtQuantile(d time.Duration, failed bool) string {
	if failed {
		return "failed"
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func eventTable(events []eventReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| event | req/s | requests | failed | over 250 ms | over 100 ms | p99 | p99.9 |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, e := range events {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %s | %s |\n", e.name, e.rate, e.requests, e.failed, e.over250, e.over100,
			fmtQuantile(e.p99, e.p99Failed), fmtQuantile(e.p999, e.p999Failed))
	}
	return b.String()
}

// setRate changes the open-loop rate of a running load.
func (l *load) setRate(rate int) {
	l.rate <- rate
}

// lostAcked decrypts every acknowledged ciphertext (in parallel, spread
// over the gateways) and counts those that do not give their plaintext back.
func lostAcked(t *testing.T, ctx context.Context, clients []*xksclient.Client, acked []result) int {
	var (
		mu   sync.Mutex
		lost int
		wg   sync.WaitGroup
	)
	work := make(chan int)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				a := acked[i]
				var err error
				var pt []byte
				// A verification call refused or timed out by the loaded
				// machine (503, 429, the client's timeout) is retried; only
				// an answer counts.
				for try := 0; try < 60; try++ {
					if pt, err = clients[(i+w+try)%len(clients)].Decrypt(ctx, "k1", a.resp, nil); err == nil || !retryable(err) {
						break
					}
					time.Sleep(time.Duration(min(try+1, 10)) * 100 * time.Millisecond)
				}
				if err != nil || !bytes.Equal(pt, a.plaintext) {
					mu.Lock()
					lost++
					mu.Unlock()
					t.Errorf("acked encrypt %d lost: %v", i, err)
				}
			}
		}()
	}
	for i := range acked {
		work <- i
	}
	close(work)
	wg.Wait()
	return lost
}

// retryable: the deployment did not answer (overloaded, timed out), as
// opposed to answering that the ciphertext is not its own.
func retryable(err error) bool {
	m := err.Error()
	return strings.Contains(m, "DependencyTimeoutException") || strings.Contains(m, "ThrottlingException") ||
		strings.Contains(m, "deadline exceeded") || strings.Contains(m, "Client.Timeout") || strings.Contains(m, "connection")
}

// logServiceErrors logs the error lines of every service's log (at most
// 20 each): the services' own account of the failed requests above.
func logServiceErrors(t *testing.T, d *deployment) {
	for _, p := range d.services {
		if p.stderr == nil {
			continue
		}
		var lines []string
		for _, l := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(l, `"level":"ERROR"`) {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			t.Logf("%s: %d error lines, the last ones:\n%s", p.name, len(lines), strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	}
	// Leader elections as each NATS node saw them: does a returning node
	// force any (docs/BENCHMARKS.md "A node that returns")?
	for _, p := range d.nats {
		if p.stderr == nil {
			continue
		}
		var lines []string
		for _, l := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(l, "leader") || strings.Contains(l, "Server is ready") || strings.Contains(l, "Starting nats-server") {
				lines = append(lines, l)
			}
		}
		t.Logf("%s: %d leader and start lines:\n%s", p.name, len(lines), strings.Join(lines[max(0, len(lines)-150):], "\n"))
	}
}
