package vm

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/loadtest/chart"
)

// timelineChart draws the unlock timeline of timed boots (SOVKEYS_VM_CHART):
// one row per boot, seconds since the agent started, one colour per phase
// (local checks, one-time RSA key and the service call, luksOpen with its
// KDF and mount), a marker at each event.
func timelineChart(path string, boots []namedTimeline) error {
	phases := []struct {
		name string
		col  color.RGBA
	}{{"local checks", chart.Orange}, {"RSA key + service call", chart.Blue}, {"luksOpen + mount", chart.Green}}
	var rows []string
	c := chart.Chart{XLabel: "seconds since the agent started (rows: see title)", YLabel: "boot",
		YMin: 0, YMax: float64(len(boots) + 1), Height: 300}
	for i, b := range boots {
		rows = append(rows, fmt.Sprintf("%d %s", i+1, b.name))
		ev := b.tl.events()
		if len(ev) != 5 {
			continue
		}
		start, y := ev[0].t, float64(i+1)
		// agent start → request → answer → luksOpen → mounted
		for p, seg := range [][2]event{{ev[0], ev[1]}, {ev[1], ev[2]}, {ev[3], ev[4]}} {
			s := chart.Series{Color: phases[p].col, Style: chart.Line,
				Points: []chart.Point{{X: seg[0].t - start, Y: y}, {X: seg[1].t - start, Y: y}}}
			if i == 0 {
				s.Name = phases[p].name
			}
			c.Series = append(c.Series, s, chart.Series{Color: phases[p].col, Style: chart.Markers, Points: s.Points})
		}
	}
	c.Title = "sk-agent automount in a QEMU TCG VM; rows: " + strings.Join(rows, ", ")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := c.Encode(f); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return f.Close()
}

type namedTimeline struct {
	name string
	tl   timeline
}

type event struct {
	name string
	t    float64
}

// events are the unlock's milestones: agent start, request sent, answer,
// luksOpen started, mounted.
func (tl timeline) events() []event {
	start := tl.marks[0].t
	ev := []event{{"agent start", start}}
	ask, ok := tl.at("Asking the service", start)
	if !ok {
		return ev
	}
	ev = append(ev, event{"request", ask})
	answer, ok := tl.at("OK", ask)
	if !ok {
		return ev
	}
	ev = append(ev, event{"answer", answer})
	open, ok := tl.at("Mounting the encrypted", answer)
	if !ok {
		return ev
	}
	ev = append(ev, event{"luksOpen", open})
	if done, ok := tl.at("OK", open); ok {
		ev = append(ev, event{"mounted", done})
	}
	return ev
}

// The timeline parser finds the unlock's events in stamped agent output,
// and the chart renders from them (no VM needed).
func TestTimelineFromConsole(t *testing.T) {
	r := bootResult{stamps: []stamp{
		{10.0, "START automount"}, {10.5, "== /dev/vdb on /mnt/data"},
		{10.6, "Asking the service to decrypt the secret (signature verified)...   "},
		{11.0, `time=... level=WARN msg="service call failed; retrying" err="... OK? no"`},
		{13.0, "OK"}, {13.1, "Mounting the encrypted data volume on /mnt/data...   "},
		{13.6, "OK"}, {13.7, "STOP automount"},
	}}
	tls := r.timelines()
	if len(tls) != 1 {
		t.Fatalf("%d timelines", len(tls))
	}
	u, ok := tls[0].unlock()
	if !ok || fmt.Sprintf("%.1f %.1f %.1f %.1f", u.total, u.beforeCall, u.call, u.unlockMount) != "3.6 0.6 2.4 0.5" {
		t.Fatalf("unlock %+v %v", u, ok)
	}
	p := filepath.Join(t.TempDir(), "c.png")
	if err := timelineChart(p, []namedTimeline{{"boot", tls[0]}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() < 1000 {
		t.Fatalf("chart: %v", err)
	}
}
