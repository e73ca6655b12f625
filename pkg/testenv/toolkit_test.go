package testenv

import (
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	var calls atomic.Int32
	if !Poll(t, 10*time.Second, func() bool { return calls.Add(1) == 3 }) {
		t.Fatal("Poll gave up on a condition that held on the third call")
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("condition called %d times, want 3", n)
	}
	if Poll(t, 3*PollInterval, func() bool { return false }) {
		t.Error("Poll reported a condition that never held")
	}
	if took := WaitFor(t, 10*time.Second, "a true condition", func() (bool, string) { return true, "" }); took > time.Second {
		t.Errorf("WaitFor took %v for a condition that holds at once", took)
	}
}

const page = `# HELP jobs_total Jobs done.
# TYPE jobs_total counter
jobs_total{kind="a"} 2
jobs_total{kind="b"} 3
# TYPE lag gauge
lag 7.5
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 1
latency_seconds_bucket{le="1"} 4
latency_seconds_bucket{le="+Inf"} 5
latency_seconds_sum 3.2
latency_seconds_count 5
`

func TestMetrics(t *testing.T) {
	m, err := ParseMetrics(page)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		match []string
		want  float64
	}{
		{"jobs_total", nil, 5},
		{"jobs_total", []string{"kind", "b"}, 3},
		{"lag", nil, 7.5},
		{"latency_seconds", nil, 5},
	}
	for _, tc := range tests {
		if got := m.Sum(tc.name, tc.match...); got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, want %v", tc.name, tc.match, got, tc.want)
		}
	}
	for _, absent := range [][]string{{"missing"}, {"jobs_total", "kind", "c"}} {
		if got := m.Sum(absent[0], absent[1:]...); !math.IsNaN(got) {
			t.Errorf("Sum(%v) = %v, want NaN", absent, got)
		}
	}
	buckets, count := m.Histogram("latency_seconds")
	if count != 5 || buckets[0.1] != 1 || buckets[1] != 4 || buckets[math.Inf(1)] != 5 {
		t.Errorf("Histogram = %v %d", buckets, count)
	}
	if _, err := ParseMetrics("lag 1\nlag{x=} 2\n"); err == nil {
		t.Error("ParseMetrics accepted a malformed page")
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(page))
	}))
	defer srv.Close()
	if m, err := ScrapeMetrics(srv.URL + "/metrics"); err != nil || m.Sum("lag") != 7.5 {
		t.Errorf("ScrapeMetrics = %v, %v", m, err)
	}
	if _, err := ScrapeMetrics(srv.URL + "/other"); err == nil {
		t.Error("ScrapeMetrics accepted a 404")
	}
}
