package chart

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"testing"
	"time"
)

// decode renders c through PNG and back, as a reader of the file sees it.
func decode(t *testing.T, c Chart) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func same(a color.Color, b color.RGBA) bool {
	r, g, bl, _ := a.RGBA()
	return uint8(r>>8) == b.R && uint8(g>>8) == b.G && uint8(bl>>8) == b.B
}

// near reports whether col is within 2 px of p.
func near(img image.Image, p image.Point, col color.RGBA) bool {
	for dx := -2; dx <= 2; dx++ {
		for dy := -2; dy <= 2; dy++ {
			if same(img.At(p.X+dx, p.Y+dy), col) {
				return true
			}
		}
	}
	return false
}

// count is how many pixels of r have col.
func count(img image.Image, r image.Rectangle, col color.RGBA) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if same(img.At(x, y), col) {
				n++
			}
		}
	}
	return n
}

func TestLineSeriesIsDrawnWhereItsPointsAre(t *testing.T) {
	pts := []Point{{0, 10}, {10, 50}, {20, 30}}
	c := Chart{Title: "t", Width: 640, Height: 320, Series: []Series{{Name: "s", Color: Blue, Style: Line, Points: pts}}}
	img := decode(t, c)
	if b := img.Bounds(); b.Dx() != 640 || b.Dy() != 320 {
		t.Fatalf("size %v", b)
	}
	for _, p := range append(pts, Point{5, 30}, Point{15, 40}) { // the points and the segments' midpoints
		px, ok := c.PixelOf(p)
		if !ok || !near(img, px, Blue) {
			t.Errorf("no series pixel at %v (%v)", p, px)
		}
	}
	// Higher values are drawn higher up.
	lo, _ := c.PixelOf(Point{0, 10})
	hi, _ := c.PixelOf(Point{10, 50})
	if hi.Y >= lo.Y {
		t.Errorf("y=50 at row %d, y=10 at row %d", hi.Y, lo.Y)
	}
	// Nothing of the series above its maximum.
	area := c.PlotArea()
	top, _ := c.PixelOf(Point{10, 50})
	if n := count(img, image.Rect(area.Min.X, area.Min.Y, area.Max.X, top.Y-3), Blue); n != 0 {
		t.Errorf("%d series pixels above the maximum", n)
	}
	// The axes are there: the x axis row is dark across the plot.
	if n := count(img, image.Rect(area.Min.X, area.Max.Y, area.Max.X, area.Max.Y+1), black); n < area.Dx()-1 {
		t.Errorf("x axis: %d of %d pixels", n, area.Dx())
	}
}

func TestLatencyOverTimeShowsFaultsFailuresAndBands(t *testing.T) {
	var reqs []Request
	for i := range 200 {
		at := time.Duration(i) * 100 * time.Millisecond // 20 s
		r := Request{At: at, Latency: 4 * time.Millisecond}
		if at >= 8*time.Second && at < 10*time.Second {
			r.Latency, r.Failed = 1500*time.Millisecond, true
		}
		reqs = append(reqs, r)
	}
	c := LatencyOverTime("failover", reqs, []Mark{{X: 8, Label: "kill nats-2"}})
	img := decode(t, c)
	okPx, _ := c.PixelOf(Point{2, 4})
	failPx, _ := c.PixelOf(Point{9, 1500})
	if !near(img, okPx, Blue) {
		t.Error("no ok dot at (2 s, 4 ms)")
	}
	if !near(img, failPx, Red) {
		t.Error("no failure dot at (9 s, 1500 ms)")
	}
	if failPx.Y >= okPx.Y {
		t.Error("1500 ms drawn below 4 ms")
	}
	area := c.PlotArea()
	markPx, _ := c.PixelOf(Point{8, 1})
	if n := count(img, image.Rect(markPx.X, area.Min.Y, markPx.X+1, area.Max.Y), markColor); n < area.Dy()/3 {
		t.Errorf("fault mark: %d pixels in its column", n)
	}
	// The failing seconds 8 and 9 are shaded, second 3 is not.
	in, _ := c.PixelOf(Point{9.5, 30})
	out, _ := c.PixelOf(Point{3.5, 30})
	if !same(img.At(in.X, in.Y), bandColor) || same(img.At(out.X, out.Y), bandColor) {
		t.Error("failure band not where the failures are")
	}
	// Log axis: 10 ms sits halfway between 1 and 100 ms.
	p1, _ := c.PixelOf(Point{0, 1})
	p10, _ := c.PixelOf(Point{0, 10})
	p100, _ := c.PixelOf(Point{0, 100})
	if d := (p1.Y - p10.Y) - (p10.Y - p100.Y); d < -1 || d > 1 {
		t.Errorf("log axis rows %d %d %d", p1.Y, p10.Y, p100.Y)
	}
}

func TestSlowestPerSecondAndThroughput(t *testing.T) {
	secs := []Second{{T: 0, OK: 10, MaxMs: 5}, {T: 1, OK: 3, Errors: 7, MaxMs: 900}, {T: 2, OK: 10, MaxMs: 6}}
	c := SlowestPerSecond("timeline", secs, nil)
	img := decode(t, c)
	spike, _ := c.PixelOf(Point{1, 900})
	if !near(img, spike, Blue) {
		t.Error("no line at the 900 ms second")
	}
	if len(c.Bands) != 1 || c.Bands[0] != (Band{1, 2}) {
		t.Errorf("bands %v", c.Bands)
	}

	tc := ThroughputVsConcurrency("peak", []Run{{32, 1900}, {1, 150}, {8, 1200}})
	img = decode(t, tc)
	for _, r := range []Point{{1, 150}, {8, 1200}, {32, 1900}} {
		px, _ := tc.PixelOf(r)
		if !near(img, px, Green) {
			t.Errorf("no point at %v", r)
		}
	}
	if tc.Series[0].Points[0].X != 1 {
		t.Error("runs not sorted by concurrency")
	}
}

func TestRefuses(t *testing.T) {
	for name, c := range map[string]Chart{
		"no points": {},
		"too small": {Width: 50, Height: 50, Series: []Series{{Points: []Point{{1, 1}}}}},
		"log of 0":  {LogY: true, Series: []Series{{Points: []Point{{1, 0}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := c.Render(); !errors.Is(err, ErrChart) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}
