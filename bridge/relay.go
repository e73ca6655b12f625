package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/productwatch/productwatch/pkg/sleep"
)

// The relay's modes. Which one it is in is decided by the rate of changes
// (see wakeupPolicy): while few changes come, writers NOTIFY (the flag is
// on) and the relay reads the log only when woken; while many come, writers
// do not NOTIFY (it would serialise their commits) and the relay reads the
// log every pollInterval. When the rate falls below the resume rate, or the
// log stays empty for idleAfter, it turns the flag on, keeps reading until
// every transaction that might have read the flag as off has ended, and then
// waits for a notification (or the safety poll) before reading again.
type relayMode int

const (
	modeFlowing   relayMode = iota // flag off, reading continuously
	modeSwitching                  // flag on, reading until the switch is safe
	modeIdle                       // flag on, waiting for a wake-up
)

// relayConfig are the relay's knobs (see Config).
type relayConfig struct {
	batchSize          int
	pollInterval       time.Duration
	idleAfter          time.Duration
	safetyPollInterval time.Duration
	rateWindow         time.Duration // the rate estimate's window (see rateEstimator)
	policy             wakeupPolicy
	maxNotifyWaiters   int // this many writers queueing on NOTIFY's commit lock: read continuously; 0: never
}

// localHorizonAfter is how long a bound (a gap's, or the switch's) may wait
// for the cluster-wide xmin before the relay asks for this database's own
// (snapshot.localXmin), and how often it asks while one waits. Reading
// pg_locks costs more than reading the snapshot, and the cluster-wide xmin
// passes a bound within a read or two unless some transaction runs long;
// when one does in another database (an import, a migration, a session left
// open in psql), the local xmin keeps the relay from reading every
// POLL_INTERVAL, and its cursor from standing still, for as long as that
// transaction runs.
const localHorizonAfter = 20 * time.Millisecond

// throttledHold is how long the relay keeps reading continuously after
// writers were seen queueing on NOTIFY's commit lock, whatever the rate:
// while NOTIFY throttles the writers, the rate they reach says little about
// the rate they want, and going straight back to wake-ups would only
// throttle them again. When it happens again within throttledHoldMax of the
// last hold's end, the hold doubles, up to throttledHoldMax: a database
// too busy for NOTIFY at a low rate settles on continuous reading instead
// of switching back and forth.
const (
	throttledHold    = time.Second
	throttledHoldMax = 30 * time.Second
)

// relay carries the change log to JetStream for as long as its bridge leads.
// All its state is owned by the goroutine that calls run.
type relay struct {
	cfg     relayConfig
	reader  *logReader
	pub     *publisher
	wake    <-chan string // from the listener: "wakeup" or "reconnect"
	logger  *slog.Logger
	metrics *bridgeMetrics
	high    *atomic.Int64 // published high, shared with the lag sampler

	cursor      int64 // every change with seq <= cursor is in JetStream (or never will be)
	highSeq     int64 // the highest seq read and published
	gaps        []gap // ranges in (cursor, highSeq] not seen yet, in order
	savedCursor int64
	savedHigh   int64
	savedAt     time.Time
	verifyUpTo  int64 // rows up to this seq may already be in the stream (published before a restart)
	verifyExtra int   // and so may this many rows above it

	mode           relayMode
	switchBound    uint64        // a transaction id taken after the flag went on
	switchWait     time.Duration // while switching: the pause between reads, doubling up to idleAfter
	horizon        uint64        // the highest localXmin of the reads so far (see snapshot)
	pendingBound   uint64        // the oldest bound waiting (a gap's or the switch's); 0: none
	pendingSince   time.Time     // since when it waits
	localAskedAt   time.Time     // when a read last asked for localXmin
	lastChange     time.Time
	rate           rateEstimator
	throttledUntil time.Time     // see throttledHold
	throttledFor   time.Duration // the last hold
	waitersAt      time.Time     // when a read last counted the writers waiting for NOTIFY's lock
	safetyTimer    *time.Timer
}

// run relays until ctx ends (it then returns ctx's error) or the database
// cannot be read at start.
func (r *relay) run(ctx context.Context) error {
	if err := r.reader.open(ctx); err != nil {
		return err
	}
	defer r.reader.close()
	cursor, publishedHigh, err := r.reader.loadCursor(ctx)
	if err != nil {
		return err
	}
	r.cursor, r.highSeq, r.savedCursor, r.savedHigh = cursor, cursor, cursor, publishedHigh
	r.verifyUpTo, r.verifyExtra = publishedHigh, 4*r.cfg.batchSize
	r.high.Store(cursor)
	r.metrics.cursor.Set(float64(cursor))
	r.logger.Info("relaying changes", "cursor", cursor, "published_high", publishedHigh)

	// Start by reading continuously: writers need not notify meanwhile.
	if err := r.setMode(ctx, modeFlowing); err != nil {
		return err
	}
	r.lastChange = time.Now()
	r.rate = rateEstimator{window: r.cfg.rateWindow}
	r.safetyTimer = time.NewTimer(r.cfg.safetyPollInterval)
	defer r.safetyTimer.Stop()

	reason := "start"
	backoff := 100 * time.Millisecond
	for {
		n, snap, err := r.step(ctx, reason)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.logger.Warn("relaying changes failed; retrying", "err", err, "retry_in", backoff)
			r.reader.close() // a fresh connection next time: this one may be dead
			if !sleep.For(ctx, backoff) {
				return ctx.Err()
			}
			backoff = min(backoff*2, 5*time.Second)
			reason = "retry"
			continue
		}
		backoff = 100 * time.Millisecond
		if reason, err = r.next(ctx, n, snap); err != nil {
			return err
		}
	}
}

// next moves the mode machine after a read that found n changes in
// snapshot snap, waits as the new mode says, and returns why the next read
// happens.
func (r *relay) next(ctx context.Context, n int, snap snapshot) (string, error) {
	now := time.Now()
	if n > 0 {
		r.lastChange = now
		r.rate.add(now, n)
	}
	rate := r.rate.estimate(now)
	r.metrics.changeRate.Set(rate)
	backlog := n >= r.cfg.batchSize // more is waiting: read again at once
	switch {
	case r.mode != modeFlowing && n > 0 && r.tooFastForNotify(now, rate, snap):
		// Writers notify (switching or idle), but changes come fast enough
		// for NOTIFY to cost them more than reading continuously costs the
		// bridge.
		if err := r.setMode(ctx, modeFlowing); err != nil {
			return "", err
		}
		if backlog {
			return "flowing", nil
		}
	case r.mode == modeFlowing:
		if backlog {
			return "flowing", nil
		}
		quiet := n == 0 && now.Sub(r.lastChange) >= r.cfg.idleAfter
		slow := !r.cfg.policy.readContinuously(true, rate) && now.After(r.throttledUntil)
		if quiet || slow {
			if err := r.setMode(ctx, modeSwitching); err != nil {
				return "", err
			}
			return "switching", nil
		}
	case r.mode == modeSwitching:
		if backlog {
			return "switching", nil
		}
		// This read saw nothing, and its snapshot is later than the end of
		// every transaction that may have read the flag as off: whatever
		// commits from now on notifies.
		if n == 0 && snap.xmin >= r.switchBound {
			if err := r.setMode(ctx, modeIdle); err != nil {
				return "", err
			}
			return r.waitWakeup(ctx)
		}
		// A transaction that read the flag as off still runs. Whatever
		// commits meanwhile with the flag read as on wakes the relay; only
		// that transaction's commit waits for a read, so the reads slow
		// down (to one per IDLE_AFTER) while it runs.
		wait := r.switchWait
		r.switchWait = min(2*r.switchWait, max(r.cfg.idleAfter, r.cfg.pollInterval))
		return r.waitWakeupFor(ctx, wait)
	case r.mode == modeIdle:
		if backlog {
			// A large transaction, not a high rate: read on, stay idle.
			return "backlog", nil
		}
		// A trickle: a read per wake-up costs less than reading
		// continuously, and it delivers sooner.
		return r.waitWakeup(ctx)
	}
	if !sleep.For(ctx, r.cfg.pollInterval) {
		return "", ctx.Err()
	}
	return r.mode.String(), nil
}

// tooFastForNotify reports, in a mode where writers notify, whether they
// should stop: the rate reached WAKEUP_MAX_RATE, or writers were seen
// queueing on NOTIFY's commit lock (then the rate cannot reach the
// threshold: the lock caps it, at one commit per WAL flush or worse on a
// busy machine).
func (r *relay) tooFastForNotify(now time.Time, rate float64, snap snapshot) bool {
	if r.cfg.policy.readContinuously(false, rate) {
		return true
	}
	if r.cfg.maxNotifyWaiters > 0 && snap.notifyWaiters >= r.cfg.maxNotifyWaiters {
		r.metrics.notifyThrottled.Inc()
		if now.Before(r.throttledUntil.Add(throttledHoldMax)) {
			r.throttledFor = min(2*r.throttledFor, throttledHoldMax)
		} else {
			r.throttledFor = throttledHold
		}
		r.throttledUntil = now.Add(r.throttledFor)
		r.logger.Debug("writers queue on NOTIFY's commit lock: reading continuously",
			"waiters", snap.notifyWaiters, "rate", rate, "for", r.throttledFor)
		return true
	}
	return false
}

// waitWakeup waits for a notification, a listener reconnect or the safety
// poll.
func (r *relay) waitWakeup(ctx context.Context) (string, error) {
	return r.waitWakeupFor(ctx, 0)
}

// waitWakeupFor waits for a notification, a listener reconnect, the safety
// poll or, when d > 0, d, whichever comes first.
func (r *relay) waitWakeupFor(ctx context.Context, d time.Duration) (string, error) {
	var timeout <-chan time.Time // nil: never
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case reason := <-r.wake:
		return reason, nil
	case <-r.safetyTimer.C:
		r.safetyTimer.Reset(r.cfg.safetyPollInterval)
		return "safety", nil
	case <-timeout:
		return r.mode.String(), nil
	}
}

// setMode switches mode, turning the writers' wake-up flag on or off.
func (r *relay) setMode(ctx context.Context, m relayMode) error {
	switch m {
	case modeFlowing:
		if _, err := r.reader.setWakeup(ctx, false); err != nil {
			return err
		}
		r.metrics.wakeupWanted.Set(0)
	case modeSwitching:
		bound, err := r.reader.setWakeup(ctx, true)
		if err != nil {
			return err
		}
		r.switchBound = bound
		r.switchWait = r.cfg.pollInterval
		r.metrics.wakeupWanted.Set(1)
	case modeIdle:
	}
	if m != r.mode {
		r.logger.Debug("relay mode", "mode", m)
		r.metrics.relayMode.WithLabelValues(r.mode.String()).Set(0)
	}
	r.metrics.relayMode.WithLabelValues(m.String()).Set(1)
	r.mode = m
	return nil
}

// step reads what the change log shows beyond the cursor, publishes it and
// advances the cursor. It returns how many changes it published and the
// snapshot it read them in.
func (r *relay) step(ctx context.Context, reason string) (int, snapshot, error) {
	r.metrics.polls.WithLabelValues(reason).Inc()
	if err := r.reader.open(ctx); err != nil {
		return 0, snapshot{}, err
	}
	// Counting the waiters reads every backend's status (a millisecond
	// or more on a busy server): only in wake-up modes, while changes
	// come, and at most once per rate window.
	countWaiters := r.mode != modeFlowing && r.cfg.maxNotifyWaiters > 0 &&
		time.Since(r.lastChange) < r.cfg.idleAfter && time.Since(r.waitersAt) >= r.cfg.rateWindow
	if countWaiters {
		r.waitersAt = time.Now()
	}
	askLocal := r.pendingBound != 0 && time.Since(r.pendingSince) >= localHorizonAfter &&
		time.Since(r.localAskedAt) >= localHorizonAfter
	if askLocal {
		r.localAskedAt = time.Now()
		r.metrics.horizonReads.Inc()
	}
	snap, gapRows, rows, err := r.reader.read(ctx, r.highSeq, r.gaps, r.cfg.batchSize, countWaiters, askLocal)
	if err != nil {
		return 0, snapshot{}, err
	}
	// What an earlier read learnt of this database's transactions holds
	// for this read's snapshot, which was taken after it; what this read
	// learnt holds for the next.
	snap.xmin = max(snap.xmin, r.horizon)
	r.horizon = max(r.horizon, snap.localXmin)
	// Gap rows all have seqs below highSeq, the new rows above it: together
	// they are in seq order, which per product is version order.
	all := append(gapRows, rows...)
	if err := r.pub.publish(ctx, all, r.mayBePublished); err != nil {
		return 0, snapshot{}, err
	}
	r.fillGaps(gapRows)
	var bound uint64
	if r.skipsSeqs(rows) {
		// New gaps: bound them by a transaction id taken after this read.
		if bound, err = r.reader.nextXid(ctx); err != nil {
			return 0, snapshot{}, err
		}
	}
	r.extend(rows, bound)
	r.settleGaps(snap.xmin)
	r.notePending(snap.xmin)
	if err := r.saveCursor(ctx, len(all) == 0); err != nil {
		return 0, snapshot{}, err
	}
	return len(all), snap, nil
}

// mayBePublished tells the publisher which rows to look for in the stream
// first: those a previous leader may have published (up to its last
// recorded high, and a margin beyond it for the batch it had in flight).
func (r *relay) mayBePublished(seq int64) bool {
	if seq <= r.verifyUpTo {
		return true
	}
	if r.verifyExtra > 0 {
		r.verifyExtra--
		return true
	}
	return false
}

// fillGaps removes the seqs of rows (sorted) from the gaps.
func (r *relay) fillGaps(rows []changeRow) {
	if len(rows) == 0 {
		return
	}
	kept := r.gaps[:0:0]
	i := 0
	for _, g := range r.gaps {
		lo := g.lo
		for ; i < len(rows) && rows[i].seq <= g.hi; i++ {
			if rows[i].seq < lo {
				continue
			}
			if rows[i].seq > lo {
				kept = append(kept, gap{lo: lo, hi: rows[i].seq - 1, bound: g.bound})
			}
			lo = rows[i].seq + 1
		}
		if lo <= g.hi {
			kept = append(kept, gap{lo: lo, hi: g.hi, bound: g.bound})
		}
	}
	r.gaps = kept
}

// skipsSeqs reports whether rows (sorted, all above highSeq) leave seqs out.
func (r *relay) skipsSeqs(rows []changeRow) bool {
	return len(rows) > 0 && rows[len(rows)-1].seq-r.highSeq != int64(len(rows))
}

// extend records rows (sorted, all above highSeq) as published, and the
// seqs they skipped as gaps with the given bound (see gap).
func (r *relay) extend(rows []changeRow, bound uint64) {
	for _, row := range rows {
		if row.seq > r.highSeq+1 {
			r.gaps = append(r.gaps, gap{lo: r.highSeq + 1, hi: row.seq - 1, bound: bound})
		}
		r.highSeq = row.seq
	}
	r.high.Store(r.highSeq)
}

// settleGaps drops the gaps whose transactions have all ended by a snapshot
// with the given xmin: the rows of theirs that were visible in it have been
// read (the gap query has no limit), so the rest never will be.
func (r *relay) settleGaps(xmin uint64) {
	kept := r.gaps[:0]
	for _, g := range r.gaps {
		if xmin < g.bound {
			kept = append(kept, g)
		}
	}
	r.gaps = kept
	if len(r.gaps) == 0 {
		r.cursor = r.highSeq
	} else {
		r.cursor = r.gaps[0].lo - 1
	}
}

// notePending records which bound waits (the oldest gap's, or the switch's
// when xmin has not reached it) and since when, for askLocal in step.
func (r *relay) notePending(xmin uint64) {
	var bound uint64
	if len(r.gaps) > 0 {
		bound = r.gaps[0].bound // gaps are in seq order, so their bounds ascend
	}
	if r.mode == modeSwitching && xmin < r.switchBound && (bound == 0 || r.switchBound < bound) {
		bound = r.switchBound
	}
	if bound != r.pendingBound {
		r.pendingBound, r.pendingSince = bound, time.Now()
	}
}

// cursorSaveInterval is how often a moving cursor is saved. Saving is a
// round trip; what a crash loses by waiting is only re-checked against the
// stream on restart: the restarted relay checks the rows up to the saved
// high plus 4 × BATCH_SIZE beyond it, which covers up to 40 × BATCH_SIZE
// changes a second.
const cursorSaveInterval = 100 * time.Millisecond

// saveCursor persists the cursor when it moved, at most every
// cursorSaveInterval unless force is set (the log ran dry).
func (r *relay) saveCursor(ctx context.Context, force bool) error {
	if r.cursor == r.savedCursor && r.highSeq <= r.savedHigh {
		return nil
	}
	if !force && time.Since(r.savedAt) < cursorSaveInterval {
		return nil
	}
	r.savedAt = time.Now()
	if err := r.reader.saveCursor(ctx, r.cursor, r.highSeq); err != nil {
		return err
	}
	r.savedCursor, r.savedHigh = r.cursor, max(r.savedHigh, r.highSeq)
	r.metrics.cursor.Set(float64(r.cursor))
	return nil
}

// String names a mode in logs and metrics.
func (m relayMode) String() string {
	return [...]string{"flowing", "switching", "idle"}[m]
}
