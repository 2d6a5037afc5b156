package vm

import (
	"fmt"
	"image/color"
	"os"

	"github.com/sovkeys/sovkeys/loadtest/chart"
)

// timelineChart draws the unlock timeline of timed boots (SOVKEYS_VM_CHART):
// one row per boot, a marker at each event, seconds since the agent
// started; the first boot's events are also drawn as labelled lines.
func timelineChart(path string, boots []namedTimeline) error {
	palette := []color.RGBA{chart.Blue, chart.Orange, chart.Green, chart.Red}
	c := chart.Chart{Title: "sk-agent at boot in a QEMU TCG VM: agent start to volume mounted",
		XLabel: "seconds since the agent started", YLabel: "boot", YMin: 0, YMax: float64(len(boots) + 1)}
	for i, b := range boots {
		start := b.tl.marks[0].t
		ev := b.tl.events()
		s := chart.Series{Name: b.name, Color: palette[i%len(palette)], Style: chart.Markers}
		for _, e := range ev {
			s.Points = append(s.Points, chart.Point{X: e.t - start, Y: float64(i + 1)})
		}
		line := chart.Series{Color: s.Color, Style: chart.Line, Points: []chart.Point{s.Points[0], s.Points[len(s.Points)-1]}}
		c.Series = append(c.Series, s, line)
		if i == 0 {
			for _, e := range ev {
				c.Marks = append(c.Marks, chart.Mark{X: e.t - start, Label: e.name})
			}
		}
	}
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
