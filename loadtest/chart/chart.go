// Package chart draws the PNG charts of docs/BENCHMARKS.md: x/y line and dot
// series on linear or logarithmic axes, with vertical marks (the faults of a
// failover run) and shaded x ranges (the seconds with errors). Drawing uses
// only image/draw and the fixed 7x13 font of golang.org/x/image: no
// plotting library, no system fonts, the same pixels on every machine.
package chart

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// ErrChart is wrapped by every error of this package.
var ErrChart = errors.New("chart: cannot draw")

// Style is how a series is drawn.
type Style int

const (
	Line    Style = iota // points joined in order, 2 px wide
	Dots                 // a 3x3 square per point
	Markers              // a 7x7 square per point (few points)
)

// Point is one (x, y) value in data units.
type Point struct{ X, Y float64 }

// Series is one named set of points.
type Series struct {
	Name   string
	Color  color.RGBA
	Style  Style
	Points []Point
}

// Mark is a vertical line at X with a short label at its top (a fault).
type Mark struct {
	X     float64
	Label string
}

// Band shades the x range [From, To) over the whole plot height.
type Band struct{ From, To float64 }

// Chart is one plot. Zero Width/Height mean 800x400.
type Chart struct {
	Title          string
	XLabel, YLabel string
	Width, Height  int
	LogY           bool    // decades on the y axis; values <= 0 are left out
	YMin, YMax     float64 // fixed y range when YMax > YMin; else from the data
	Series         []Series
	Marks          []Mark
	Bands          []Band
	BandName       string // legend entry of the bands (empty: none)
}

// Colours of the house palette.
var (
	Blue   = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	Orange = color.RGBA{0xff, 0x7f, 0x0e, 0xff}
	Green  = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	Red    = color.RGBA{0xd6, 0x27, 0x28, 0xff}
	Grey   = color.RGBA{0x7f, 0x7f, 0x7f, 0xff}

	white     = color.RGBA{0xff, 0xff, 0xff, 0xff}
	black     = color.RGBA{0x20, 0x20, 0x20, 0xff}
	gridColor = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	markColor = color.RGBA{0x99, 0x33, 0x99, 0xff}
	bandColor = color.RGBA{0xfb, 0xd5, 0xd5, 0xff}
)

// Margins around the plot area, in pixels.
const (
	marginLeft, marginRight = 64, 16
	marginTop, marginBottom = 44, 40
)

// layout maps data units to pixels.
type layout struct {
	plot                   image.Rectangle
	xMin, xMax, yMin, yMax float64 // yMin/yMax are log10 values when logY
	logY                   bool
}

func (c Chart) size() (int, int) {
	w, h := c.Width, c.Height
	if w == 0 {
		w = 800
	}
	if h == 0 {
		h = 400
	}
	return w, h
}

func (c Chart) layout() (layout, error) {
	w, h := c.size()
	if w < 200 || h < 150 || w > 8000 || h > 8000 {
		return layout{}, fmt.Errorf("%w: size %dx%d", ErrChart, w, h)
	}
	l := layout{plot: image.Rect(marginLeft, marginTop, w-marginRight, h-marginBottom), logY: c.LogY}
	l.xMin, l.xMax = math.Inf(1), math.Inf(-1)
	l.yMin, l.yMax = math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for _, p := range s.Points {
			if c.LogY && p.Y <= 0 || math.IsNaN(p.X) || math.IsNaN(p.Y) || math.IsInf(p.X, 0) || math.IsInf(p.Y, 0) {
				continue
			}
			l.xMin, l.xMax = math.Min(l.xMin, p.X), math.Max(l.xMax, p.X)
			l.yMin, l.yMax = math.Min(l.yMin, p.Y), math.Max(l.yMax, p.Y)
		}
	}
	for _, m := range c.Marks {
		l.xMin, l.xMax = math.Min(l.xMin, m.X), math.Max(l.xMax, m.X)
	}
	if math.IsInf(l.xMin, 1) {
		return layout{}, fmt.Errorf("%w: no points", ErrChart)
	}
	if c.YMax > c.YMin {
		l.yMin, l.yMax = c.YMin, c.YMax
	}
	if l.xMax == l.xMin {
		l.xMin, l.xMax = l.xMin-1, l.xMax+1
	}
	if c.LogY {
		if l.yMin <= 0 {
			l.yMin = l.yMax / 1000
		}
		l.yMin, l.yMax = math.Floor(math.Log10(l.yMin)), math.Ceil(math.Log10(l.yMax))
		if l.yMax == l.yMin {
			l.yMax++
		}
	} else {
		if c.YMax <= c.YMin {
			l.yMin = math.Min(0, l.yMin)
			l.yMax = niceCeil(l.yMax * 1.05)
		}
		if l.yMax == l.yMin {
			l.yMax = l.yMin + 1
		}
	}
	return l, nil
}

func (l layout) x(v float64) int {
	return l.plot.Min.X + int(math.Round((v-l.xMin)/(l.xMax-l.xMin)*float64(l.plot.Dx()-1)))
}

func (l layout) y(v float64) int {
	if l.logY {
		v = math.Log10(v)
	}
	return l.plot.Max.Y - 1 - int(math.Round((v-l.yMin)/(l.yMax-l.yMin)*float64(l.plot.Dy()-1)))
}

// PixelOf is where p is drawn (for tests and annotations); ok is false when
// the chart cannot be laid out or p falls outside the plot area.
func (c Chart) PixelOf(p Point) (pt image.Point, ok bool) {
	l, err := c.layout()
	if err != nil || c.LogY && p.Y <= 0 {
		return image.Point{}, false
	}
	pt = image.Pt(l.x(p.X), l.y(p.Y))
	return pt, pt.In(l.plot)
}

// PlotArea is the rectangle the data is drawn in.
func (c Chart) PlotArea() image.Rectangle {
	l, err := c.layout()
	if err != nil {
		return image.Rectangle{}
	}
	return l.plot
}

// Render draws the chart.
func (c Chart) Render() (*image.RGBA, error) {
	l, err := c.layout()
	if err != nil {
		return nil, err
	}
	w, h := c.size()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(white), image.Point{}, draw.Src)
	for _, b := range c.Bands {
		r := image.Rect(l.x(b.From), l.plot.Min.Y, max(l.x(b.To), l.x(b.From)+1), l.plot.Max.Y).Intersect(l.plot)
		draw.Draw(img, r, image.NewUniform(bandColor), image.Point{}, draw.Src)
	}
	c.drawAxes(img, l)
	clip := clipped{img, l.plot}
	for i, m := range c.Marks {
		x := l.x(m.X)
		for y := l.plot.Min.Y; y < l.plot.Max.Y; y++ {
			if (y/4)%2 == 0 {
				clip.set(x, y, markColor)
			}
		}
		// Labels alternate between two rows so close marks stay readable.
		text(img, x+3, l.plot.Min.Y+12+13*(i%2), m.Label, markColor)
	}
	for _, s := range c.Series {
		drawSeries(clip, l, s)
	}
	c.drawLegend(img, l)
	return img, nil
}

// Encode writes the chart as a PNG.
func (c Chart) Encode(w io.Writer) error {
	img, err := c.Render()
	if err != nil {
		return err
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("%w: %v", ErrChart, err)
	}
	return nil
}

func drawSeries(img clipped, l layout, s Series) {
	var prev image.Point
	have := false
	for _, p := range s.Points {
		if l.logY && p.Y <= 0 || math.IsNaN(p.Y) || math.IsInf(p.Y, 0) {
			have = false
			continue
		}
		pt := image.Pt(l.x(p.X), l.y(p.Y))
		switch s.Style {
		case Dots, Markers:
			r := 1
			if s.Style == Markers {
				r = 3
			}
			for dx := -r; dx <= r; dx++ {
				for dy := -r; dy <= r; dy++ {
					img.set(pt.X+dx, pt.Y+dy, s.Color)
				}
			}
		default:
			if have {
				line(img, prev, pt, s.Color)
			} else {
				img.set(pt.X, pt.Y, s.Color)
			}
		}
		prev, have = pt, true
	}
}

func (c Chart) drawAxes(img *image.RGBA, l layout) {
	// Grid and y ticks.
	for _, t := range c.yTicks(l) {
		y := l.y(t)
		hline(img, l.plot.Min.X, l.plot.Max.X, y, gridColor)
		hline(img, l.plot.Min.X-4, l.plot.Min.X, y, black)
		s := formatTick(t)
		text(img, l.plot.Min.X-6-7*len(s), y+4, s, black)
	}
	step := niceStep((l.xMax - l.xMin) / 8)
	for i := math.Ceil(l.xMin / step); i*step <= l.xMax+step/1e6; i++ {
		t := i * step
		x := l.x(t)
		vline(img, x, l.plot.Max.Y, l.plot.Max.Y+4, black)
		s := formatTick(t)
		text(img, x-7*len(s)/2, l.plot.Max.Y+16, s, black)
	}
	hline(img, l.plot.Min.X, l.plot.Max.X, l.plot.Max.Y, black)
	vline(img, l.plot.Min.X-1, l.plot.Min.Y, l.plot.Max.Y, black)
	text(img, l.plot.Min.X, 16, c.Title, black)
	text(img, 4, l.plot.Min.Y-6, c.YLabel, black)
	text(img, l.plot.Min.X+l.plot.Dx()/2-7*len(c.XLabel)/2, l.plot.Max.Y+33, c.XLabel, black)
}

func (c Chart) yTicks(l layout) []float64 {
	var out []float64
	if l.logY {
		for d := l.yMin; d <= l.yMax; d++ {
			out = append(out, math.Pow(10, d))
		}
		return out
	}
	step := niceStep((l.yMax - l.yMin) / 6)
	for i := math.Ceil(l.yMin / step); i*step <= l.yMax+step/1e6; i++ {
		out = append(out, i*step)
	}
	return out
}

func (c Chart) drawLegend(img *image.RGBA, l layout) {
	x := l.plot.Max.X
	entry := func(name string, col color.RGBA) {
		x -= 7*len(name) + 24
		draw.Draw(img, image.Rect(x, 24, x+10, 34), image.NewUniform(col), image.Point{}, draw.Src)
		text(img, x+14, 34, name, black)
	}
	if c.BandName != "" && len(c.Bands) > 0 {
		entry(c.BandName, bandColor)
	}
	for i := len(c.Series) - 1; i >= 0; i-- {
		if c.Series[i].Name != "" {
			entry(c.Series[i].Name, c.Series[i].Color)
		}
	}
}

// clipped draws only inside r.
type clipped struct {
	img *image.RGBA
	r   image.Rectangle
}

func (c clipped) set(x, y int, col color.RGBA) {
	if image.Pt(x, y).In(c.r) {
		c.img.SetRGBA(x, y, col)
	}
}

// line draws a 2 px wide segment (Bresenham, doubled vertically).
func line(img clipped, a, b image.Point, col color.RGBA) {
	dx, dy := abs(b.X-a.X), -abs(b.Y-a.Y)
	sx, sy := sign(b.X-a.X), sign(b.Y-a.Y)
	e := dx + dy
	for x, y := a.X, a.Y; ; {
		img.set(x, y, col)
		img.set(x, y+1, col)
		if x == b.X && y == b.Y {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x += sx
		} else {
			e += dx
			y += sy
		}
	}
}

func hline(img *image.RGBA, x0, x1, y int, col color.RGBA) {
	for x := x0; x < x1; x++ {
		img.SetRGBA(x, y, col)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, col color.RGBA) {
	for y := y0; y < y1; y++ {
		img.SetRGBA(x, y, col)
	}
}

func text(img *image.RGBA, x, y int, s string, col color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// niceCeil rounds v up to a multiple of its nice step.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	s := niceStep(v / 5)
	return math.Ceil(v/s) * s
}

func formatTick(v float64) string {
	v = math.Round(v*1e6) / 1e6
	if math.Abs(v) >= 10000 && math.Mod(v, 1000) == 0 {
		return strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
