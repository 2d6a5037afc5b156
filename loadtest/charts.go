package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/loadtest/chart"
)

// markFlag is a repeatable -mark OFFSET=LABEL: a vertical line on the
// latency chart at OFFSET (a duration, or seconds) into the measured window.
type markFlag []chart.Mark

func (m *markFlag) String() string {
	var parts []string
	for _, x := range *m {
		parts = append(parts, fmt.Sprintf("%gs=%s", x.X, x.Label))
	}
	return strings.Join(parts, ",")
}

func (m *markFlag) Set(v string) error {
	at, label, ok := strings.Cut(v, "=")
	if !ok || label == "" {
		return fmt.Errorf("%w: -mark %q is not OFFSET=LABEL", ErrConfigValidation, v)
	}
	sec, err := strconv.ParseFloat(at, 64)
	if err != nil {
		d, derr := time.ParseDuration(at)
		if derr != nil {
			return fmt.Errorf("%w: -mark %q: offset is neither seconds nor a duration", ErrConfigValidation, v)
		}
		sec = d.Seconds()
	}
	*m = append(*m, chart.Mark{X: sec, Label: label})
	return nil
}

// timelineChart is the latency-over-time chart of one run.
func timelineChart(rep Report, title string, marks []chart.Mark) chart.Chart {
	secs := make([]chart.Second, 0, len(rep.Timeline))
	for _, s := range rep.Timeline {
		secs = append(secs, chart.Second{T: s.T, OK: s.OK, Errors: s.Errors, MaxMs: s.MaxMs})
	}
	if title == "" {
		title = fmt.Sprintf("%s %s, %s", rep.API, rep.Op, modeText(rep))
	}
	return chart.SlowestPerSecond(title, secs, marks)
}

// throughputChart is the throughput-vs-concurrency chart of closed-loop runs.
func throughputChart(reps []Report, title string) (chart.Chart, error) {
	var runs []chart.Run
	for _, r := range reps {
		if r.Mode != "closed" || r.Concurrency == 0 {
			return chart.Chart{}, fmt.Errorf("%w: a throughput chart needs closed-loop reports (-concurrency), got %s", ErrConfigValidation, modeText(r))
		}
		runs = append(runs, chart.Run{Concurrency: r.Concurrency, Throughput: r.Throughput})
	}
	if title == "" && len(reps) > 0 {
		title = fmt.Sprintf("%s %s: throughput vs concurrency", reps[0].API, reps[0].Op)
	}
	return chart.ThroughputVsConcurrency(title, runs), nil
}

func modeText(r Report) string {
	if r.Mode == "open" {
		return fmt.Sprintf("open loop %.0f req/s", r.OfferedRate)
	}
	return fmt.Sprintf("closed loop, concurrency %d", r.Concurrency)
}

func writeChart(path string, c chart.Chart) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := c.Encode(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runChart is `loadtest chart`: charts from the -json reports of earlier
// runs. One report: its latency over time; several: throughput against
// concurrency (closed-loop runs).
func runChart(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest chart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "PNG `FILE` to write (required)")
	title := fs.String("title", "", "chart title (default: from the reports)")
	kind := fs.String("kind", "", "timeline (one report) | throughput (closed-loop reports); default: by the number of reports")
	var marks markFlag
	fs.Var(&marks, "mark", "timeline: OFFSET=LABEL, a vertical mark OFFSET (e.g. 12s) into the measured window; repeatable")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: loadtest chart -out FILE.png [-title T] [-kind timeline|throughput] [-mark 12s=LABEL]... REPORT.json...\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *out == "" || fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	var reps []Report
	for _, p := range fs.Args() {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(stderr, "loadtest chart: %v\n", err)
			return 1
		}
		var r Report
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(stderr, "loadtest chart: %s: %v\n", p, err)
			return 1
		}
		reps = append(reps, r)
	}
	if *kind == "" {
		*kind = "throughput"
		if len(reps) == 1 {
			*kind = "timeline"
		}
	}
	var c chart.Chart
	switch *kind {
	case "timeline":
		if len(reps) != 1 {
			fmt.Fprintf(stderr, "loadtest chart: a timeline chart takes one report, got %d\n", len(reps))
			return 2
		}
		c = timelineChart(reps[0], *title, marks)
	case "throughput":
		var err error
		if c, err = throughputChart(reps, *title); err != nil {
			fmt.Fprintf(stderr, "loadtest chart: %v\n", err)
			return 2
		}
	default:
		fmt.Fprintf(stderr, "loadtest chart: -kind %q is neither timeline nor throughput\n", *kind)
		return 2
	}
	if err := writeChart(*out, c); err != nil {
		fmt.Fprintf(stderr, "loadtest chart: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "loadtest chart: wrote %s\n", *out)
	return 0
}
