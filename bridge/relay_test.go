package main

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func rowsOf(seqs ...int64) []changeRow {
	rows := make([]changeRow, len(seqs))
	for i, s := range seqs {
		rows[i] = changeRow{seq: s, productID: s}
	}
	return rows
}

// TestGapBookkeeping drives the cursor arithmetic through the cases that
// make seq order differ from commit order.
func TestGapBookkeeping(t *testing.T) {
	type read struct {
		gapRows, rows []int64
		xmin, bound   uint64
	}
	tests := []struct {
		name       string
		start      int64
		reads      []read
		wantCursor int64
		wantHigh   int64
		wantGaps   string
	}{
		{name: "contiguous", reads: []read{{rows: []int64{1, 2, 3}, xmin: 10, bound: 11}}, wantCursor: 3, wantHigh: 3, wantGaps: "[]"},
		{name: "in-flight seq holds the cursor", reads: []read{{rows: []int64{1, 3, 4}, xmin: 10, bound: 12}},
			wantCursor: 1, wantHigh: 4, wantGaps: "[{2 2 12}]"},
		{name: "late commit fills the gap", reads: []read{
			{rows: []int64{1, 3, 4}, xmin: 10, bound: 12},
			{gapRows: []int64{2}, rows: []int64{5}, xmin: 11, bound: 13},
		}, wantCursor: 5, wantHigh: 5, wantGaps: "[]"},
		{name: "rolled back: settled once its transactions ended", reads: []read{
			{rows: []int64{1, 3}, xmin: 10, bound: 12},
			{rows: []int64{4}, xmin: 11, bound: 13}, // still possibly in flight
			{rows: []int64{5}, xmin: 12, bound: 14}, // every transaction below 12 ended: 2 never comes
		}, wantCursor: 5, wantHigh: 5, wantGaps: "[]"},
		{name: "part of a range arrives", reads: []read{
			{rows: []int64{1, 6}, xmin: 10, bound: 20},
			{gapRows: []int64{3, 4}, xmin: 15, bound: 21},
		}, wantCursor: 1, wantHigh: 6, wantGaps: "[{2 2 20} {5 5 20}]"},
		{name: "restart above zero", start: 100, reads: []read{{rows: []int64{102}, xmin: 5, bound: 6}},
			wantCursor: 100, wantHigh: 102, wantGaps: "[{101 101 6}]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &relay{cursor: tc.start, highSeq: tc.start, high: new(atomic.Int64)}
			for _, rd := range tc.reads {
				r.fillGaps(rowsOf(rd.gapRows...))
				r.extend(rowsOf(rd.rows...), rd.bound)
				r.settleGaps(rd.xmin)
			}
			if r.cursor != tc.wantCursor || r.highSeq != tc.wantHigh || fmt.Sprint(r.gaps) != tc.wantGaps {
				t.Errorf("cursor %d high %d gaps %v, want %d %d %s", r.cursor, r.highSeq, r.gaps, tc.wantCursor, tc.wantHigh, tc.wantGaps)
			}
			if r.high.Load() != r.highSeq {
				t.Errorf("shared high %d, want %d", r.high.Load(), r.highSeq)
			}
		})
	}
}

// TestNextWave: a wave never holds two changes of one product, never more
// than maxInFlight, and a product's later changes wait behind its first.
func TestNextWave(t *testing.T) {
	row := func(seq, product int64) changeRow { return changeRow{seq: seq, productID: product} }
	p := newPublisher(nil, nil, 3, nil, nil, nil)
	rows := []changeRow{row(1, 7), row(2, 8), row(3, 7), row(4, 9), row(5, 10), row(6, 8), row(7, 11)}
	var waves []string
	for pending := rows; len(pending) > 0; {
		wave, rest := p.nextWave(pending)
		var s []int64
		for _, r := range wave {
			s = append(s, r.seq)
		}
		waves = append(waves, fmt.Sprint(s))
		pending = rest
	}
	if got, want := fmt.Sprint(waves), "[[1 2 4] [3 5 6] [7]]"; got != want {
		t.Errorf("waves %s, want %s", got, want)
	}
}

func TestMayBePublished(t *testing.T) {
	r := &relay{verifyUpTo: 10, verifyExtra: 2}
	var got []bool
	for _, seq := range []int64{9, 10, 11, 12, 13, 5} {
		got = append(got, r.mayBePublished(seq))
	}
	if fmt.Sprint(got) != "[true true true true false true]" {
		t.Errorf("mayBePublished = %v", got)
	}
}

// TestThrottledHold: writers queueing on NOTIFY's lock end wake-ups
// whatever the rate, for a hold that doubles while it recurs (up to
// throttledHoldMax) and starts again at throttledHold after a quiet spell.
func TestThrottledHold(t *testing.T) {
	r := &relay{
		cfg:     relayConfig{policy: wakeupPolicy{maxRate: 200, resumeRate: 100}, maxNotifyWaiters: 3},
		metrics: newBridgeMetrics(prometheus.NewRegistry()),
		logger:  slog.New(slog.DiscardHandler),
	}
	now := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	if r.tooFastForNotify(now, 50, snapshot{notifyWaiters: 2}) {
		t.Error("2 waiters (WAKEUP_MAX_WAITERS 3) at 50/s ended wake-ups")
	}
	if r.tooFastForNotify(now, 50, snapshot{notifyWaiters: -1}) {
		t.Error("an uncounted read ended wake-ups")
	}
	if !r.tooFastForNotify(now, 250, snapshot{notifyWaiters: -1}) {
		t.Error("250/s (WAKEUP_MAX_RATE 200) did not end wake-ups")
	}
	var holds []time.Duration
	for range 7 {
		if !r.tooFastForNotify(now, 50, snapshot{notifyWaiters: 3}) {
			t.Fatal("3 waiters did not end wake-ups")
		}
		holds = append(holds, r.throttledUntil.Sub(now))
		now = r.throttledUntil.Add(time.Second) // throttled again soon after the hold
	}
	if got, want := fmt.Sprint(holds), "[1s 2s 4s 8s 16s 30s 30s]"; got != want {
		t.Errorf("holds %s, want %s", got, want)
	}
	now = r.throttledUntil.Add(throttledHoldMax + time.Second)
	r.tooFastForNotify(now, 50, snapshot{notifyWaiters: 5})
	if got := r.throttledUntil.Sub(now); got != throttledHold {
		t.Errorf("after a quiet spell the hold is %v, want %v", got, throttledHold)
	}
}
