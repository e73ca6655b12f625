package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestRateEstimator: a steady rate converges to itself, whatever the read
// cadence; a silence decays it; nothing seen is zero.
func TestRateEstimator(t *testing.T) {
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		every     time.Duration // one read every …
		perRead   int           // … finding this many changes
		reads     int
		silence   time.Duration // then nothing for this long
		want      float64
		tolerance float64
	}{
		{name: "nothing seen", want: 0},
		{name: "50/s, a change per read", every: 20 * time.Millisecond, perRead: 1, reads: 500, want: 50, tolerance: 0.05},
		{name: "5000/s read every 3 ms", every: 3 * time.Millisecond, perRead: 15, reads: 2000, want: 5000, tolerance: 0.05},
		{name: "5000/s read every 50 ms", every: 50 * time.Millisecond, perRead: 250, reads: 100, want: 5000, tolerance: 0.15},
		{name: "1000/s then 3 windows of silence", every: time.Millisecond, perRead: 1, reads: 5000,
			silence: 750 * time.Millisecond, want: 1000 * math.Exp(-3), tolerance: 0.05},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := rateEstimator{window: 250 * time.Millisecond}
			now := start
			for range tc.reads {
				now = now.Add(tc.every)
				e.add(now, tc.perRead)
			}
			got := e.estimate(now.Add(tc.silence))
			if math.Abs(got-tc.want) > tc.tolerance*tc.want {
				t.Errorf("estimate %.1f/s, want %.1f/s ± %.0f %%", got, tc.want, 100*tc.tolerance)
			}
		})
	}
}

// TestRateEstimatorRisesWithinAWindow: from nothing, a burst well above
// the threshold is recognised within about one window.
func TestRateEstimatorRisesWithinAWindow(t *testing.T) {
	e := rateEstimator{window: 250 * time.Millisecond}
	now := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var crossed time.Duration
	for i := 1; i <= 1000 && crossed == 0; i++ {
		now = now.Add(time.Millisecond)
		e.add(now, 2) // 2,000/s
		if e.estimate(now) >= 500 {
			crossed = time.Duration(i) * time.Millisecond
		}
	}
	// 2000·(1 − e^(−t/250ms)) = 500 at t = 72 ms.
	if crossed < 60*time.Millisecond || crossed > 85*time.Millisecond {
		t.Errorf("2,000/s crossed 500/s after %v, want about 72 ms", crossed)
	}
}

// TestWakeupPolicy: hysteresis between the two thresholds.
func TestWakeupPolicy(t *testing.T) {
	p := wakeupPolicy{maxRate: 500, resumeRate: 250}
	tests := []struct {
		reading bool
		rate    float64
		want    bool
	}{
		{reading: false, rate: 0, want: false},
		{reading: false, rate: 499, want: false},
		{reading: false, rate: 500, want: true},
		{reading: true, rate: 5000, want: true},
		{reading: true, rate: 300, want: true}, // between: keeps reading
		{reading: false, rate: 300, want: false},
		{reading: true, rate: 250, want: true},
		{reading: true, rate: 249, want: false},
	}
	for _, tc := range tests {
		if got := p.readContinuously(tc.reading, tc.rate); got != tc.want {
			t.Errorf("readContinuously(reading %v, %v/s) = %v, want %v", tc.reading, tc.rate, got, tc.want)
		}
	}
	// Zero thresholds: read continuously whenever changes come, as before
	// the rate decided (IDLE_AFTER alone ends it).
	zero := wakeupPolicy{}
	if !zero.readContinuously(false, 0) || !zero.readContinuously(true, 0) {
		t.Error("WAKEUP_MAX_RATE=0 must always read continuously")
	}
}

// TestWakeupConfigErrors: the wake-up knobs refuse values that make no
// sense, with a message naming them.
func TestWakeupConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the error
	}{
		{name: "resume above max", args: []string{"-wakeup-max-rate", "100", "-wakeup-resume-rate", "200"}, want: "WAKEUP_RESUME_RATE"},
		{name: "negative resume", args: []string{"-wakeup-max-rate", "100", "-wakeup-resume-rate", "-1"}, want: "WAKEUP_RESUME_RATE"},
		{name: "NaN", args: []string{"-wakeup-max-rate", "NaN"}, want: "WAKEUP_MAX_RATE"},
		{name: "negative waiters", args: []string{"-wakeup-max-waiters", "-1"}, want: "WAKEUP_MAX_WAITERS"},
		{name: "zero window", args: []string{"-rate-window", "0s"}, want: "RATE_WINDOW"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("loadConfig(%q) = %v, want an error naming %s", tc.args, err, tc.want)
			}
		})
	}
	cfg, err := loadConfig([]string{"-wakeup-max-rate", "0", "-wakeup-resume-rate", "0", "-wakeup-max-waiters", "0"})
	if err != nil {
		t.Fatalf("zero thresholds (the behaviour before the rate decided): %v", err)
	}
	if rc := cfg.relayConfig(); rc.policy != (wakeupPolicy{}) || rc.maxNotifyWaiters != 0 || rc.rateWindow != 250*time.Millisecond {
		t.Errorf("relayConfig = %+v", rc)
	}
}
