// Package tally is the load generator's accounting: it compares what a
// simulated client received with what the writers committed, and says how
// many versions were delivered, missed, duplicated or delivered out of order,
// how many frames were wasted on products the client did not watch, how late
// each event arrived and how fresh the client's view stayed.
//
// Everything here is a pure function of the recorded data, computed after a
// run, so that the clients' read loops only append what they saw.
//
// Definitions, per client and per product it watches:
//
//   - expected: the versions the writers committed during the run;
//   - delivered: expected versions the client received while it held an
//     older one (each counts once);
//   - missing: expected minus delivered. Conflation (the gateway sending a
//     lagging client only the newest version) is legitimate, so missing is
//     not by itself an error; freshness says how much it cost;
//   - duplicate: a frame whose version equals the newest one the client
//     already held;
//   - out of order (stale): a frame older than the newest one held;
//   - wasted: a frame for a product the client does not watch;
//   - unexpected: a newer version that no writer of the run committed (a
//     change made by someone else, or a seed row arriving late);
//   - freshness of a committed version: from the writer's clock before the
//     UPDATE that made it until the client held that version or a newer one.
//     A version the client never caught up with counts as never fresh.
package tally

import (
	"slices"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Frame is one change event as a client received it. Times are Unix
// nanoseconds.
type Frame struct {
	ProductID int64
	Version   int64
	Received  int64
	ChangedAt int64 // the event's changedAt; 0 when it has none
}

// Commit is one version a writer committed, with the writer's clock taken
// just before it sent the UPDATE (Unix nanoseconds).
type Commit struct {
	Version     int64
	WriterClock int64
}

// Commits holds, per product id, the versions committed during a run in
// increasing version order (see [Commits.Sort]).
type Commits map[int64][]Commit

// Sort puts every product's commits in version order. Writers append in
// completion order, which differs when several write the same product.
func (c Commits) Sort() {
	for _, list := range c {
		slices.SortFunc(list, func(a, b Commit) int { return compare(a.Version, b.Version) })
	}
}

// Final returns the newest committed version of product, 0 when none.
func (c Commits) Final(product int64) int64 {
	list := c[product]
	if len(list) == 0 {
		return 0
	}
	return list[len(list)-1].Version
}

// Client is the account of one client.
type Client struct {
	Expected   int64 `json:"expected"`
	Delivered  int64 `json:"delivered"`
	Missing    int64 `json:"missing"`
	Duplicates int64 `json:"duplicates"`
	OutOfOrder int64 `json:"outOfOrder"`
	Wasted     int64 `json:"wasted"`
	Unexpected int64 `json:"unexpected"`
	// NeverFresh counts committed versions the client held neither that
	// version nor a newer one of by the end.
	NeverFresh int64 `json:"neverFresh"`
}

// Add adds o's counts to c.
func (c *Client) Add(o Client) {
	c.Expected += o.Expected
	c.Delivered += o.Delivered
	c.Missing += o.Missing
	c.Duplicates += o.Duplicates
	c.OutOfOrder += o.OutOfOrder
	c.Wasted += o.Wasted
	c.Unexpected += o.Unexpected
	c.NeverFresh += o.NeverFresh
}

// Latencies are the distributions a run's accounting fills, in microseconds.
type Latencies struct {
	// Commit: from the event's changedAt (the trigger's clock, inside the
	// writing transaction) to the client's receipt, for every delivered
	// version.
	Commit *hdrhistogram.Histogram
	// Writer: from the writer's clock before the UPDATE to the client's
	// receipt, for every delivered version.
	Writer *hdrhistogram.Histogram
	// Freshness: for every committed version the client watched, from the
	// writer's clock until the client held it or a newer one.
	Freshness *hdrhistogram.Histogram
}

// Histogram bounds: 1 µs to 10 minutes at 3 significant digits.
const (
	lowestMicros  = 1
	highestMicros = 10 * 60 * 1_000_000
	sigFigs       = 3
)

// NewHistogram returns an empty latency histogram in microseconds (1 µs to
// 10 minutes, 3 significant digits; larger values are clamped to the top).
func NewHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(lowestMicros, highestMicros, sigFigs)
}

// NewLatencies returns empty histograms.
func NewLatencies() *Latencies {
	return &Latencies{Commit: NewHistogram(), Writer: NewHistogram(), Freshness: NewHistogram()}
}

// RecordNanos records a duration given in nanoseconds into h in
// microseconds, clamped to the histogram's range (a clock step can make a
// duration negative).
func RecordNanos(h *hdrhistogram.Histogram, nanos int64) {
	us := nanos / 1000
	us = min(max(us, lowestMicros), highestMicros)
	_ = h.RecordValue(us) // within range by construction
}

// held is one step of a client's view of a product: from Received on it
// held Version (or newer).
type held struct {
	version  int64
	received int64
}

// Account compares the frames a client received, in the order it received
// them, with the versions committed for the products it watches, and
// records latencies and freshness into lat (nil: counts only).
func Account(watched []int64, commits Commits, frames []Frame, lat *Latencies) Client {
	var c Client
	newest := make(map[int64]int64, len(watched)) // product -> newest version held
	steps := make(map[int64][]held, len(watched))
	for _, id := range watched {
		newest[id] = 0
		c.Expected += int64(len(commits[id]))
	}
	for _, f := range frames {
		have, ok := newest[f.ProductID]
		switch {
		case !ok:
			c.Wasted++
			continue
		case f.Version == have:
			c.Duplicates++
			continue
		case f.Version < have:
			c.OutOfOrder++
			continue
		}
		newest[f.ProductID] = f.Version
		steps[f.ProductID] = append(steps[f.ProductID], held{version: f.Version, received: f.Received})
		commit, found := find(commits[f.ProductID], f.Version)
		if !found {
			c.Unexpected++
			continue
		}
		c.Delivered++
		if lat != nil {
			if f.ChangedAt != 0 {
				RecordNanos(lat.Commit, f.Received-f.ChangedAt)
			}
			RecordNanos(lat.Writer, f.Received-commit.WriterClock)
		}
	}
	c.Missing = c.Expected - c.Delivered
	for _, id := range watched {
		c.NeverFresh += freshness(commits[id], steps[id], lat)
	}
	return c
}

// freshness records, for every commit, how long until the client held its
// version or a newer one, and returns how many it never caught up with.
// Both lists are in increasing version order (steps only ever increase).
func freshness(commits []Commit, steps []held, lat *Latencies) (never int64) {
	i := 0
	for _, cm := range commits {
		for i < len(steps) && steps[i].version < cm.Version {
			i++
		}
		if i == len(steps) {
			never++
			continue
		}
		if lat != nil {
			RecordNanos(lat.Freshness, steps[i].received-cm.WriterClock)
		}
	}
	return never
}

// find returns the commit of version in list (sorted by version).
func find(list []Commit, version int64) (Commit, bool) {
	i, ok := slices.BinarySearchFunc(list, version, func(c Commit, v int64) int { return compare(c.Version, v) })
	if !ok {
		return Commit{}, false
	}
	return list[i], true
}

func compare(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Summary is a latency distribution in milliseconds.
type Summary struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

// Summarize returns h's count, quantiles and maximum in milliseconds.
func Summarize(h *hdrhistogram.Histogram) Summary {
	if h == nil || h.TotalCount() == 0 {
		return Summary{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Summary{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}
