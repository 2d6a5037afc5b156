package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Latency is a latency summary in milliseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func summarize(h *histogram) Latency {
	return Latency{
		Count: h.Count(), Mean: ms(h.Mean()),
		P50: ms(h.Quantile(0.50)), P90: ms(h.Quantile(0.90)), P99: ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)), Max: ms(h.Max()),
	}
}

// OpReport is the share of one operation in a mixed run.
type OpReport struct {
	Requests uint64  `json:"requests"`
	Errors   uint64  `json:"errors"`
	Latency  Latency `json:"latency"`
}

// Report is the outcome of one run, printed as text and optionally JSON.
type Report struct {
	Started        time.Time           `json:"started"`
	API            string              `json:"api"`
	Target         string              `json:"target"`
	KeyID          string              `json:"keyId,omitempty"`
	VS             *VSReport           `json:"vs,omitempty"`
	Audit          *AuditReport        `json:"audit,omitempty"`
	Op             string              `json:"op"`
	Mode           string              `json:"mode"` // closed | open
	Concurrency    int                 `json:"concurrency,omitempty"`
	OfferedRate    float64             `json:"offeredRate,omitempty"`
	PlaintextBytes int                 `json:"plaintextBytes"`
	AADBytes       int                 `json:"aadBytes"`
	Warmup         string              `json:"warmup"`
	Duration       string              `json:"duration"`
	WindowSeconds  float64             `json:"windowSeconds"`
	Requests       uint64              `json:"requests"`
	Succeeded      uint64              `json:"succeeded"`
	ErrorCount     uint64              `json:"errorCount"`
	Throughput     float64             `json:"throughput_rps"`
	Latency        Latency             `json:"latency"`
	Refusals       *Latency            `json:"refusalLatency,omitempty"` // 429 and 503 answers, from intended send time
	ScheduleLag    *Latency            `json:"scheduleLag,omitempty"`
	Scheduled      uint64              `json:"scheduled,omitempty"` // open loop: requests due in the window
	Unsent         uint64              `json:"unsent,omitempty"`    // of those, never answered: the run's time limit came first
	PeakInFlight   int64               `json:"peakInFlight"`
	Errors         []errorCount        `json:"errors"`
	Timeline       []Second            `json:"timeline"` // by the second each request was answered
	samples        []sample            // every measured request, with -requests
	ByOp           map[string]OpReport `json:"byOp,omitempty"`
	CPU            *CPUReport          `json:"cpu,omitempty"`
	StoppedEarly   string              `json:"stoppedEarly,omitempty"`
	GoalRPS        float64             `json:"goalRps,omitempty"`
	GoalP99ms      float64             `json:"goalP99_ms,omitempty"`
	Pass           bool                `json:"pass"`
	Verdict        string              `json:"verdict"`
}

// VSReport is what a volume-secret run adds to the report.
type VSReport struct {
	Instance     string `json:"instance"`
	Instances    int    `json:"instances"`    // the load spread over this many (Instance is the first)
	WrapKeys     int    `json:"wrappingKeys"` // one-time RSA keys made before the run, rotated through
	RSABits      int    `json:"rsaBits"`
	NewConnEach  bool   `json:"newConnectionPerCall"`
	KeygenMillis int64  `json:"wrappingKeygen_ms"` // time to make them (not measured)
	// ClientChecks is the client's own share of every latency: signature
	// verification and RSA-OAEP unwrap of each successful answer (warmup
	// included).
	ClientChecks Latency `json:"clientChecks"`
}

// openLoopSlack is how far below the offered rate an open-loop run may land
// and still meet a rate goal equal to that offer: the window's edges cut a
// few requests that were sent but not yet answered.
const openLoopSlack = 0.99

func buildReport(cfg Config, started time.Time, res result) Report {
	rep := Report{
		Started: started.UTC(), API: cfg.API, Target: strings.TrimRight(cfg.URL, "/") + "/" + strings.Trim(cfg.Prefix, "/"),
		KeyID: cfg.KeyID, Op: cfg.Op, Mode: "closed", PlaintextBytes: cfg.Size, AADBytes: cfg.AADSize,
		Warmup: cfg.Warmup.String(), Duration: cfg.Duration.String(), WindowSeconds: res.window.Seconds(),
		Requests: res.requests, Succeeded: res.requests - res.failed, ErrorCount: res.failed,
		Latency: summarize(res.all), PeakInFlight: res.peak, Errors: res.errs,
		GoalRPS: cfg.GoalRPS, GoalP99ms: ms(cfg.GoalP99), Timeline: res.timeline, samples: res.samples,
	}
	if rep.Errors == nil {
		rep.Errors = []errorCount{}
	}
	if res.refused != nil && res.refused.Count() > 0 {
		l := summarize(res.refused)
		rep.Refusals = &l
	}
	if cfg.API == APIVS {
		rep.Target = strings.TrimRight(cfg.URL, "/") + "/v1/encryption/" + cfg.InstanceID
		rep.PlaintextBytes, rep.AADBytes = 0, 0
	}
	if cfg.OpenLoop() {
		rep.Mode, rep.OfferedRate = "open", cfg.Rate
		rep.Scheduled, rep.Unsent = res.scheduled, res.unsent
		lag := summarize(res.lag)
		rep.ScheduleLag = &lag
	} else {
		rep.Concurrency = cfg.Concurrency
	}
	if res.window > 0 {
		rep.Throughput = float64(res.okInWindow) / res.window.Seconds()
	}
	if cfg.Op == OpMixed {
		rep.ByOp = map[string]OpReport{}
		for name, s := range res.ops {
			rep.ByOp[name] = OpReport{Requests: s.requests.Load(), Errors: s.failed.Load(), Latency: summarize(&s.lat)}
		}
	}
	switch {
	case res.interrupted:
		rep.StoppedEarly = "interrupted"
	case res.capped:
		rep.StoppedEarly = fmt.Sprintf("-max-requests %d reached", cfg.MaxRequests)
	}
	rep.Pass, rep.Verdict = verdict(cfg, rep)
	return rep
}

// verdict judges a run against -goal-rps and -goal-p99; any error fails it.
func verdict(cfg Config, rep Report) (bool, string) {
	if cfg.GoalRPS == 0 && cfg.GoalP99 == 0 {
		text := fmt.Sprintf("NO GOAL: %.0f req/s, p99 %.2f ms, %d errors", rep.Throughput, rep.Latency.P99, rep.ErrorCount)
		if rep.StoppedEarly != "" {
			text += "; stopped early: " + rep.StoppedEarly
		}
		if rep.Unsent > 0 {
			text += fmt.Sprintf("; %d scheduled requests never sent", rep.Unsent)
		}
		return rep.ErrorCount == 0 && rep.Unsent == 0 && rep.StoppedEarly == "", text
	}
	var miss []string
	if cfg.GoalRPS > 0 {
		need := cfg.GoalRPS
		if cfg.OpenLoop() && cfg.Rate >= cfg.GoalRPS {
			need = cfg.GoalRPS * openLoopSlack
		}
		if rep.Throughput < need {
			miss = append(miss, fmt.Sprintf("throughput %.0f < %.0f req/s", rep.Throughput, cfg.GoalRPS))
		}
		if cfg.OpenLoop() && cfg.Rate < cfg.GoalRPS {
			miss = append(miss, fmt.Sprintf("offered rate %.0f is below the goal", cfg.Rate))
		}
	}
	if cfg.GoalP99 > 0 && (rep.Latency.Count == 0 || rep.Latency.P99 > ms(cfg.GoalP99)) {
		miss = append(miss, fmt.Sprintf("p99 %.2f ms > %.2f ms", rep.Latency.P99, ms(cfg.GoalP99)))
	}
	if rep.ErrorCount > 0 {
		miss = append(miss, fmt.Sprintf("%d errors", rep.ErrorCount))
	}
	if rep.Unsent > 0 {
		miss = append(miss, fmt.Sprintf("%d scheduled requests never sent", rep.Unsent))
	}
	if rep.StoppedEarly != "" {
		miss = append(miss, "stopped early: "+rep.StoppedEarly)
	}
	goal := goalText(cfg)
	if len(miss) > 0 {
		return false, fmt.Sprintf("FAIL (goal %s): %s", goal, strings.Join(miss, "; "))
	}
	return true, fmt.Sprintf("PASS (goal %s): %.0f req/s, p99 %.2f ms, 0 errors over %.0f s",
		goal, rep.Throughput, rep.Latency.P99, rep.WindowSeconds)
}

func goalText(cfg Config) string {
	var parts []string
	if cfg.GoalRPS > 0 {
		parts = append(parts, fmt.Sprintf(">= %.0f req/s", cfg.GoalRPS))
	}
	if cfg.GoalP99 > 0 {
		parts = append(parts, fmt.Sprintf("p99 <= %s", cfg.GoalP99))
	}
	return strings.Join(append(parts, "0 errors"), ", ")
}

// writeText prints the report for people.
func (rep Report) writeText(w io.Writer) {
	if rep.Audit != nil {
		rep.writeAuditText(w)
		return
	}
	if rep.VS != nil {
		conn := "a new TLS connection per call"
		if !rep.VS.NewConnEach {
			conn = "TLS connections reused"
		}
		fmt.Fprintf(w, "target      %s  op %s  %s\n", rep.Target, rep.Op, conn)
		if rep.VS.Instances > 1 {
			fmt.Fprintf(w, "instances   %d, calls spread evenly (first: %s)\n", rep.VS.Instances, rep.VS.Instance)
		}
		fmt.Fprintf(w, "wrapping    %d one-time RSA-%d keys made before the run in %d ms, rotated through\n",
			rep.VS.WrapKeys, rep.VS.RSABits, rep.VS.KeygenMillis)
	} else {
		fmt.Fprintf(w, "target      %s  key %s  op %s  plaintext %d B  aad %d B\n", rep.Target, rep.KeyID, rep.Op, rep.PlaintextBytes, rep.AADBytes)
	}
	if rep.Mode == "open" {
		fmt.Fprintf(w, "load        open loop %.0f req/s offered, warmup %s, measured %s\n", rep.OfferedRate, rep.Warmup, rep.Duration)
	} else {
		fmt.Fprintf(w, "load        closed loop, concurrency %d, warmup %s, measured %s\n", rep.Concurrency, rep.Warmup, rep.Duration)
	}
	fmt.Fprintf(w, "requests    %d measured (%d ok, %d errors) over %.1f s, peak in flight %d\n",
		rep.Requests, rep.Succeeded, rep.ErrorCount, rep.WindowSeconds, rep.PeakInFlight)
	fmt.Fprintf(w, "throughput  %.1f req/s\n", rep.Throughput)
	rep.writeSlowest(w)
	writeLatency(w, "latency", rep.Latency)
	if rep.Refusals != nil {
		writeLatency(w, "refusals", *rep.Refusals)
	}
	if rep.VS != nil {
		writeLatency(w, "client work", rep.VS.ClientChecks)
	}
	if rep.ScheduleLag != nil {
		writeLatency(w, "send lag", *rep.ScheduleLag)
		if rep.Unsent > 0 {
			fmt.Fprintf(w, "unsent      %d of %d scheduled requests: the generator fell behind and its time limit came first\n", rep.Unsent, rep.Scheduled)
		}
	}
	ops := make([]string, 0, len(rep.ByOp))
	for name := range rep.ByOp {
		ops = append(ops, name)
	}
	sort.Strings(ops)
	for _, name := range ops {
		o := rep.ByOp[name]
		fmt.Fprintf(w, "  %-9s %d requests, %d errors, p50 %.2f ms, p99 %.2f ms\n", name, o.Requests, o.Errors, o.Latency.P50, o.Latency.P99)
	}
	if c := rep.CPU; c != nil {
		fmt.Fprintf(w, "cpu         loadtest %.2f cores, %.2f ms per answer", c.ClientCores, c.ClientMsPerOK)
		switch {
		case c.NodeSampleFail != "":
			fmt.Fprintf(w, "; node pid %d not sampled: %s", c.NodePID, c.NodeSampleFail)
		case c.NodePID > 0:
			fmt.Fprintf(w, "; node (pid %d) %.2f cores, %.2f ms per answer", c.NodePID, c.NodeCores, c.NodeMsPerOK)
		}
		fmt.Fprintln(w)
	}
	if len(rep.Errors) == 0 {
		fmt.Fprintln(w, "errors      none")
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "error       %-40s %8d  e.g. %s\n", e.Kind, e.Count, e.Sample)
	}
	if rep.StoppedEarly != "" {
		fmt.Fprintf(w, "stopped     early: %s\n", rep.StoppedEarly)
	}
	fmt.Fprintf(w, "verdict     %s\n", rep.Verdict)
}

func writeLatency(w io.Writer, name string, l Latency) {
	fmt.Fprintf(w, "%-11s p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  mean %.2f ms\n",
		name, l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
}

// writeJSON writes the report to path.
func (rep Report) writeJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeSlowest names the second with the slowest answer and, against a p99
// goal, how many seconds had an answer slower than it.
func (rep Report) writeSlowest(w io.Writer) {
	if len(rep.Timeline) == 0 {
		return
	}
	worst, over := rep.Timeline[0], 0
	for _, s := range rep.Timeline {
		if s.MaxMs > worst.MaxMs {
			worst = s
		}
		if rep.GoalP99ms > 0 && s.MaxMs > rep.GoalP99ms {
			over++
		}
	}
	fmt.Fprintf(w, "slowest s   t=%d s: max %.2f ms (%d ok, %d errors answered in that second)", worst.T, worst.MaxMs, worst.OK, worst.Errors)
	if rep.GoalP99ms > 0 {
		fmt.Fprintf(w, "; %d of %d seconds had an answer over %.0f ms", over, len(rep.Timeline), rep.GoalP99ms)
	}
	fmt.Fprintln(w)
}
