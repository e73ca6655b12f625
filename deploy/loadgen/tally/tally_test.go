package tally

import (
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// countAt returns how many values h recorded that are equivalent to v.
func countAt(h *hdrhistogram.Histogram, v int64) int64 {
	var n int64
	for _, bar := range h.Distribution() {
		if bar.From <= v && v <= bar.To {
			n += bar.Count
		}
	}
	return n
}

// ms returns n milliseconds in nanoseconds, as a clock reading.
func ms(n int64) int64 { return n * int64(time.Millisecond) }

// commitsOf product 1: versions 2..n+1, written at 10 ms intervals from 0.
func commitsOf(n int) Commits {
	list := make([]Commit, n)
	for i := range list {
		list[i] = Commit{Version: int64(i + 2), WriterClock: ms(int64(10 * i))}
	}
	return Commits{1: list}
}

// inOrder returns frames of product 1 for the given versions, each received
// 2 ms after its writer's clock, with changedAt 1 ms after it.
func inOrder(commits Commits, versions ...int64) []Frame {
	var out []Frame
	for _, v := range versions {
		c, _ := find(commits[1], v)
		out = append(out, Frame{ProductID: 1, Version: v, Received: c.WriterClock + ms(2), ChangedAt: c.WriterClock + ms(1)})
	}
	return out
}

func TestAccount(t *testing.T) {
	commits := commitsOf(5) // versions 2..6
	cases := []struct {
		name   string
		frames []Frame
		want   Client
	}{
		{"every version", inOrder(commits, 2, 3, 4, 5, 6),
			Client{Expected: 5, Delivered: 5}},
		{"one missing", inOrder(commits, 2, 3, 5, 6),
			Client{Expected: 5, Delivered: 4, Missing: 1}},
		{"the last missing is never fresh", inOrder(commits, 2, 3, 4, 5),
			Client{Expected: 5, Delivered: 4, Missing: 1, NeverFresh: 1}},
		{"a duplicate", inOrder(commits, 2, 3, 3, 4, 5, 6),
			Client{Expected: 5, Delivered: 5, Duplicates: 1}},
		{"a stale event after a newer one", inOrder(commits, 2, 4, 3, 5, 6),
			// 3 arrives after 4: stale, not delivered (the client already
			// held newer), so 3 counts as missing.
			Client{Expected: 5, Delivered: 4, Missing: 1, OutOfOrder: 1}},
		{"a frame for a product not watched", append(inOrder(commits, 2, 3, 4, 5, 6), Frame{ProductID: 7, Version: 9}),
			Client{Expected: 5, Delivered: 5, Wasted: 1}},
		{"a version nobody wrote", append(inOrder(commits, 2, 3, 4, 5, 6), Frame{ProductID: 1, Version: 40, Received: ms(100)}),
			Client{Expected: 5, Delivered: 5, Unexpected: 1}},
		{"nothing received", nil,
			Client{Expected: 5, Missing: 5, NeverFresh: 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Account([]int64{1}, commits, tc.frames, NewLatencies()); got != tc.want {
				t.Errorf("Account =\n %+v, want\n %+v", got, tc.want)
			}
		})
	}
}

// TestFreshnessConflated: a client that got only versions 4 and 6 of 2..6
// held version 2 from the receipt of 4 on, and so on: conflation costs
// freshness, not correctness.
func TestFreshnessConflated(t *testing.T) {
	commits := commitsOf(5) // v2@0, v3@10, v4@20, v5@30, v6@40 ms
	frames := []Frame{
		{ProductID: 1, Version: 4, Received: ms(25), ChangedAt: ms(21)},
		{ProductID: 1, Version: 6, Received: ms(47), ChangedAt: ms(41)},
	}
	lat := NewLatencies()
	got := Account([]int64{1}, commits, frames, lat)
	if want := (Client{Expected: 5, Delivered: 2, Missing: 3}); got != want {
		t.Fatalf("Account = %+v, want %+v", got, want)
	}
	// v2: 25-0, v3: 25-10, v4: 25-20, v5: 47-30, v6: 47-40.
	wantFresh := []int64{25, 15, 5, 17, 7}
	if n := lat.Freshness.TotalCount(); n != int64(len(wantFresh)) {
		t.Fatalf("freshness samples = %d, want %d", n, len(wantFresh))
	}
	for _, w := range wantFresh {
		if n := countAt(lat.Freshness, w*1000); n != 1 {
			t.Errorf("freshness %d ms recorded %d times, want once", w, n)
		}
	}
	if got, want := lat.Freshness.Max(), int64(25_000); !lat.Freshness.ValuesAreEquivalent(got, want) {
		t.Errorf("freshness max = %d µs, want %d", got, want)
	}
	// Latencies only for the delivered versions: commit 4 ms and 6 ms,
	// writer 5 ms and 7 ms.
	for name, c := range map[string]struct {
		h    *hdrhistogram.Histogram
		want []int64
	}{
		"commit": {lat.Commit, []int64{4, 6}},
		"writer": {lat.Writer, []int64{5, 7}},
	} {
		for _, w := range c.want {
			if n := countAt(c.h, w*1000); n != 1 {
				t.Errorf("%s latency %d ms recorded %d times, want once", name, w, n)
			}
		}
	}
}

// TestFreshnessSeveralProducts: each product is matched with its own
// commits, and a product with no commits expects nothing.
func TestFreshnessSeveralProducts(t *testing.T) {
	commits := Commits{
		1: {{Version: 2, WriterClock: ms(0)}, {Version: 3, WriterClock: ms(10)}},
		2: {{Version: 5, WriterClock: ms(5)}},
	}
	frames := []Frame{
		{ProductID: 2, Version: 5, Received: ms(8)},
		{ProductID: 1, Version: 3, Received: ms(12)},
	}
	lat := NewLatencies()
	got := Account([]int64{1, 2, 3}, commits, frames, lat)
	if want := (Client{Expected: 3, Delivered: 2, Missing: 1}); got != want {
		t.Fatalf("Account = %+v, want %+v", got, want)
	}
	for _, w := range []int64{12, 2, 3} { // v1.2: 12-0, v1.3: 12-10, v2.5: 8-5
		if n := countAt(lat.Freshness, w*1000); n != 1 {
			t.Errorf("freshness %d ms recorded %d times, want once", w, n)
		}
	}
	if lat.Commit.TotalCount() != 0 {
		t.Errorf("commit latency recorded for frames without changedAt")
	}
}

func TestCommitsSortAndFinal(t *testing.T) {
	c := Commits{1: {{Version: 4}, {Version: 2}, {Version: 3}}}
	c.Sort()
	if got := c.Final(1); got != 4 {
		t.Errorf("Final = %d, want 4", got)
	}
	if got := c.Final(9); got != 0 {
		t.Errorf("Final of a product without commits = %d, want 0", got)
	}
}

func TestRecordNanosClamps(t *testing.T) {
	h := NewHistogram()
	RecordNanos(h, -5_000_000)                   // a clock step backwards
	RecordNanos(h, int64(time.Hour))             // beyond the top
	RecordNanos(h, int64(1500*time.Microsecond)) // 1.5 ms
	if h.TotalCount() != 3 {
		t.Fatalf("recorded %d values, want 3", h.TotalCount())
	}
	if !h.ValuesAreEquivalent(h.Max(), highestMicros) {
		t.Errorf("max = %v µs, want the histogram's top %v", h.Max(), highestMicros)
	}
	if s := Summarize(h); s.P50 < 1.49 || s.P50 > 1.51 {
		t.Errorf("p50 = %v ms, want 1.5", s.P50)
	}
}

func TestSummarizeEmpty(t *testing.T) {
	if s := Summarize(NewHistogram()); s != (Summary{}) {
		t.Errorf("Summarize(empty) = %+v", s)
	}
}
