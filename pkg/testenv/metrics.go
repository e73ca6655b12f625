package testenv

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition (a /metrics page), by
// metric family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses a Prometheus text exposition with the Prometheus
// text parser.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(text))
}

// ScrapeMetrics reads and parses the /metrics page at url. A page that does
// not answer 200 or does not parse is an error, so that a poll can retry.
func ScrapeMetrics(url string) (Metrics, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// Sum returns the sum of the samples of the counter or gauge name whose
// labels include every label of match (name=value pairs; none: all of them),
// or NaN when there is no such sample. For a histogram or summary it sums
// the observation counts.
func (m Metrics) Sum(name string, match ...string) float64 {
	fam, ok := m[name]
	if !ok {
		return math.NaN()
	}
	sum, found := 0.0, false
	for _, metric := range fam.GetMetric() {
		if !hasLabels(metric, match) {
			continue
		}
		switch {
		case metric.Counter != nil:
			sum += metric.Counter.GetValue()
		case metric.Gauge != nil:
			sum += metric.Gauge.GetValue()
		case metric.Untyped != nil:
			sum += metric.Untyped.GetValue()
		case metric.Histogram != nil:
			sum += float64(metric.Histogram.GetSampleCount())
		case metric.Summary != nil:
			sum += float64(metric.Summary.GetSampleCount())
		default:
			continue
		}
		found = true
	}
	if !found {
		return math.NaN()
	}
	return sum
}

// Histogram returns the buckets of the histogram name (upper bound →
// cumulative count) and its count, summed over its label sets; nil when
// there is none.
func (m Metrics) Histogram(name string) (buckets map[float64]uint64, count uint64) {
	fam, ok := m[name]
	if !ok {
		return nil, 0
	}
	for _, metric := range fam.GetMetric() {
		h := metric.GetHistogram()
		if h == nil {
			continue
		}
		if buckets == nil {
			buckets = make(map[float64]uint64)
		}
		inf := false
		for _, b := range h.GetBucket() {
			buckets[b.GetUpperBound()] += b.GetCumulativeCount()
			inf = inf || math.IsInf(b.GetUpperBound(), 1)
		}
		if !inf {
			buckets[math.Inf(1)] += h.GetSampleCount()
		}
		count += h.GetSampleCount()
	}
	return buckets, count
}

func hasLabels(metric *dto.Metric, match []string) bool {
	for i := 0; i+1 < len(match); i += 2 {
		found := false
		for _, l := range metric.GetLabel() {
			if l.GetName() == match[i] && l.GetValue() == match[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
