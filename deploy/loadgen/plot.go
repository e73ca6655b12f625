package main

import (
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// The latency picture: per scenario, commit → client latency against the
// percentile, HdrHistogram-style: x is −log10(1 − p), so 90 %, 99 %,
// 99.9 % and 99.99 % are equally spaced, and y is logarithmic.

// nines is how far right the picture goes: 99.99 %.
const nines = 4

// writePlot saves the picture as a PNG.
func writePlot(path string, results []*result) error {
	p := plot.New()
	p.Title.Text = "commit → client latency by percentile"
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Min, p.X.Max = 0, nines
	p.X.Tick.Marker = plot.ConstantTicks{
		{Value: 0, Label: "0"}, {Value: 1, Label: "90"}, {Value: 2, Label: "99"},
		{Value: 3, Label: "99.9"}, {Value: 4, Label: "99.99"},
	}
	p.Add(plotter.NewGrid())
	// Bottom right: below the curves, which rise to the right.
	p.Legend.Top = false
	p.Legend.Left = false
	var lines []any
	for _, res := range results {
		if res.latencies == nil || res.latencies.Commit.TotalCount() == 0 {
			continue
		}
		h := res.latencies.Commit
		var pts plotter.XYs
		for x := 0.0; x <= nines+1e-9; x += 0.02 {
			q := 100 * (1 - math.Pow(10, -x))
			ms := float64(h.ValueAtQuantile(q)) / 1000
			pts = append(pts, plotter.XY{X: x, Y: max(ms, 0.01)})
		}
		lines = append(lines, res.Scenario.Name, pts)
	}
	if len(lines) == 0 {
		return nil
	}
	if err := plotutil.AddLines(p, lines...); err != nil {
		return err
	}
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, path)
}
