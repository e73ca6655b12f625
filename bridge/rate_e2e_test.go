package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestWakeupModeByRate: the wake-up mode follows the rate of changes. A
// trickle that comes faster than one change per IDLE_AFTER (which alone
// would keep the bridge reading every POLL_INTERVAL) stays on wake-ups:
// writers notify and the bridge reads about once per change. Writers going
// well past WAKEUP_MAX_RATE switch NOTIFY off; when they stop, the bridge
// asks for wake-ups again. Every change reaches the stream once, in order,
// with the safety poll an hour.
func TestWakeupModeByRate(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 20)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startIdleBridge(t, map[string]string{
		"WAKEUP_MAX_RATE":      "150",
		"WAKEUP_RESUME_RATE":   "100",
		"RATE_WINDOW":          "250ms",
		"IDLE_AFTER":           "50ms",
		"POLL_INTERVAL":        "1ms",
		"SAFETY_POLL_INTERVAL": "1h",
	})

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	conns := sessions(t, ctx, pg.DB, 4)

	// The trickle: 40 changes a second, one every 25 ms, for 2 s. (A
	// ticker drops the ticks a slow update misses, so the rate never
	// bunches up to the threshold.)
	const trickle = 80
	readsBefore := b.metric(metricPolls)
	tick := time.NewTicker(25 * time.Millisecond)
	notNotifying := 0
	for i := range trickle {
		<-tick.C
		if _, err := conns[0].ExecContext(ctx, `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`,
			products[i%len(products)]); err != nil {
			t.Fatal(err)
		}
		if wakeupFlag(t, pg.DB) != 2 {
			notNotifying++
		}
	}
	tick.Stop()
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
	reads := b.metric(metricPolls) - readsBefore
	t.Logf("trickle: %d changes at 40/s, %v reads of the change log", trickle, reads)
	if notNotifying > 0 {
		t.Errorf("at 40 changes/s (WAKEUP_MAX_RATE 150) the writers were told not to notify after %d of %d changes", notNotifying, trickle)
	}
	if reads > 2*trickle {
		t.Errorf("the bridge read the change log %v times for %d changes at 40/s: it polled instead of waiting for wake-ups", reads, trickle)
	}

	// The flood: 4 writers as fast as they can, until the writers are told
	// to stop notifying.
	flooded, took := floodUntilNotifyOff(t, ctx, b, pg.DB, conns, products, 40, metricChangeRate)
	t.Logf("flood: writers told to stop notifying after %d changes, %v", flooded, took.Round(time.Millisecond))
	// And back to wake-ups once they stop.
	waitIdle(t, b, pg.DB)
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
}

// floodUntilNotifyOff writes bursts of per changes over conns, as fast as
// they go, until the bridge tells the writers to stop notifying, and returns
// how many changes that took and how long. It fails the test after 30 s,
// reporting the bridge's metric.
func floodUntilNotifyOff(t *testing.T, ctx context.Context, b *bridgeProc, db *sql.DB, conns []*sql.Conn, products []int64, per int, metric string) (int, time.Duration) {
	t.Helper()
	began := time.Now()
	written := 0
	for wakeupFlag(t, db) != 1 {
		if time.Since(began) > 30*time.Second {
			t.Fatalf("after %d changes in %v from %d writers the bridge still asks for NOTIFY (%s = %v)",
				written, time.Since(began).Round(time.Millisecond), len(conns), metric, b.metric(metric))
		}
		if err := runBurst(ctx, conns, products, per, uint64(written), func(int64) {}); err != nil {
			t.Fatal(err)
		}
		written += per
	}
	return written, time.Since(began)
}

// Metrics the rate test reads.
const (
	metricPolls           = "productwatch_bridge_polls_total"
	metricChangeRate      = "productwatch_bridge_change_rate"
	metricNotifyThrottled = "productwatch_bridge_notify_throttled_total"
)

// TestWakeupEndsWhenWritersQueueOnNotify: with a rate threshold no writer
// reaches, writers that queue on NOTIFY's commit lock (8 of them, as fast
// as they can: notifying commits serialise, so they queue) still make the
// bridge switch NOTIFY off; when they stop, it asks for wake-ups again.
func TestWakeupEndsWhenWritersQueueOnNotify(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 50)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startBridge(t, map[string]string{
		"WAKEUP_MAX_RATE":      "1000000000",
		"WAKEUP_RESUME_RATE":   "0",
		"WAKEUP_MAX_WAITERS":   "3",
		"SAFETY_POLL_INTERVAL": "1h",
	})
	waitIdle(t, b, pg.DB)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	conns := sessions(t, ctx, pg.DB, 8)
	written, took := floodUntilNotifyOff(t, ctx, b, pg.DB, conns, products, 80, metricNotifyThrottled)
	if got := b.metric(metricNotifyThrottled); !(got >= 1) {
		t.Errorf("NOTIFY switched off, but %s = %v: not because of the queue", metricNotifyThrottled, got)
	}
	t.Logf("writers told to stop notifying after %d changes, %v", written, took.Round(time.Millisecond))
	waitIdle(t, b, pg.DB)
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
}

// TestLongTransactionElsewhere: a transaction that writes in another
// database of the same server holds the server's xmin back for as long as
// it runs, although it can neither take a seq nor read the wake-up flag.
// With one open all along, the bridge still switches to waiting for
// wake-ups, and a trickle costs about one read per change, not one per
// POLL_INTERVAL; concurrent writers (whose commits leave gaps in seq order)
// flood, and the bridge still settles its gaps (its saved cursor reaches the
// end of the log) and goes back to waiting for wake-ups.
func TestLongTransactionElsewhere(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 20)
	other := testenv.Postgres(t)
	tx, err := other.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	var xid string
	if err := tx.QueryRow(`SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	b := f.startIdleBridge(t, map[string]string{
		"WAKEUP_MAX_RATE":      "150",
		"WAKEUP_RESUME_RATE":   "100",
		"SAFETY_POLL_INTERVAL": "1h",
	})

	const trickle = 40
	readsBefore := b.metric(metricPolls)
	tick := time.NewTicker(25 * time.Millisecond)
	for i := range trickle {
		<-tick.C
		updateProduct(t, f.pg.DB, f.products[i%len(f.products)])
	}
	tick.Stop()
	waitAllPublished(t, f.ns.URL, f.js, f.pg.DB, wakeupBound)
	reads := b.metric(metricPolls) - readsBefore
	t.Logf("trickle: %d changes at 40/s, %v reads of the change log", trickle, reads)
	if reads > 2*trickle {
		t.Errorf("the bridge read the change log %v times for %d changes at 40/s while a transaction ran in another database (reads by reason: %s)",
			reads, trickle, readsByReason(t, b))
	}

	w := startWriters(t, f.pg.DB, writeLoad{Writers: 4, Total: 400, Products: f.products, Timeout: time.Minute})
	w.Wait(t)
	waitAllPublished(t, f.ns.URL, f.js, f.pg.DB, wakeupBound)
	waitCursor(t, f.pg.DB)
	waitIdle(t, b, f.pg.DB)

	var status string
	if err := f.pg.DB.QueryRowContext(t.Context(), `SELECT pg_xact_status($1::xid8)`, xid).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "in progress" {
		t.Fatalf("the other database's transaction %s is %q: the test did not hold it open throughout", xid, status)
	}
	if n := b.metric("productwatch_bridge_local_horizon_reads_total"); !(n >= 1) {
		t.Errorf("productwatch_bridge_local_horizon_reads_total = %v: the local horizon was never read", n)
	}
}

// readsByReason lists the bridge's reads of the change log so far by what
// started them.
func readsByReason(t testing.TB, b *bridgeProc) string {
	t.Helper()
	var parts []string
	for _, reason := range []string{"start", "flowing", "switching", "idle", "wakeup", "backlog", "safety", "reconnect", "retry"} {
		if n := b.metric(metricPolls, "reason", reason); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %v", reason, n))
		}
	}
	return strings.Join(parts, ", ")
}
