package main

import (
	"math"
	"time"
)

// rateEstimator estimates how many changes a second the relay carries: an
// exponentially weighted moving average in continuous time. Every change
// adds 1/window to the estimate, and the estimate decays by e^(-dt/window),
// so a steady rate R converges to R (63 % of the way after one window, 95 %
// after three), a silence lets it fall just as smoothly, and reads at
// irregular intervals weigh by time, not by read. It is owned by the relay's
// goroutine.
type rateEstimator struct {
	window time.Duration
	rate   float64   // changes per second, as of at
	at     time.Time // zero until the first add
}

// add counts n changes seen at now.
func (e *rateEstimator) add(now time.Time, n int) {
	e.rate = e.estimate(now) + float64(n)/e.window.Seconds()
	e.at = now
}

// estimate returns the rate as of now (changes per second).
func (e *rateEstimator) estimate(now time.Time) float64 {
	if e.at.IsZero() {
		return 0
	}
	dt := now.Sub(e.at)
	if dt <= 0 {
		return e.rate
	}
	return e.rate * math.Exp(-dt.Seconds()/e.window.Seconds())
}

// wakeupPolicy decides by rate, with hysteresis, whether writers should
// NOTIFY (wake-ups) or the relay should read the log continuously: a
// pg_notify per row serialises the writers' commits, which only matters when
// many commit (BENCHMARKS.md, "NOTIFY crossover"), while reading the log
// continuously costs a read every POLL_INTERVAL however few changes come.
type wakeupPolicy struct {
	maxRate    float64 // WAKEUP_MAX_RATE: above this, read continuously
	resumeRate float64 // WAKEUP_RESUME_RATE: below this, back to wake-ups
}

// readContinuously reports whether the relay should read the log
// continuously at the given rate, given whether it does so now: it starts
// at maxRate or more and stops below resumeRate, so a rate between the two
// keeps the mode it has.
func (p wakeupPolicy) readContinuously(reading bool, rate float64) bool {
	if reading {
		return rate >= p.resumeRate
	}
	return rate >= p.maxRate
}
