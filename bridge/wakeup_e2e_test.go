package main

// The adaptive wake-up under bursty load. Writers call pg_notify only while
// the bridge asks for it (product_change_wakeup = 2); while changes flow the
// bridge polls instead (1). Every switch is a race between a writer's
// trigger reading the flag and the bridge changing it. With the safety poll
// set to an hour, only the wake-up mechanism can deliver a change: the test
// fails when one takes longer than wakeupBound.

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/change"
)

// Kinds of change the wake-up test makes.
const (
	kindBurst = "burst"        // one of a burst of autocommit updates
	kindAfter = "after-gap"    // a single update after the idle gap
	kindRR    = "rr-after-gap" // a REPEATABLE READ transaction: snapshot before the gap, write after
	kindLate  = "late-commit"  // written at the end of a burst, committed after the gap
)

// commitRecord is one change the test committed: its seq and when COMMIT
// returned.
type commitRecord struct {
	seq   int64
	at    time.Time
	kind  string
	round int
	gap   time.Duration
}

// commitLog collects the records of concurrent writers.
type commitLog struct {
	mu      sync.Mutex
	records []commitRecord
}

func (l *commitLog) add(r commitRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r)
}

func (l *commitLog) all() []commitRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.records)
}

// arrivals records when each change (by Nats-Msg-Id) was first seen on
// product.*, through a core subscription: the moment the bridge published it.
type arrivals struct {
	mu    sync.Mutex
	first map[int64]time.Time
}

// watchArrivals subscribes to every product subject for the rest of the test.
func watchArrivals(t testing.TB, url string) *arrivals {
	t.Helper()
	a := &arrivals{first: make(map[int64]time.Time)}
	nc, _ := connectJS(t, url)
	sub, err := nc.Subscribe(change.SubjectPrefix+"*", func(m *nats.Msg) {
		now := time.Now()
		seq, err := strconv.ParseInt(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
		if err != nil {
			return // verifyStream reports bad ids
		}
		a.mu.Lock()
		if _, ok := a.first[seq]; !ok {
			a.first[seq] = now
		}
		a.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the subscription is in place
		t.Fatal(err)
	}
	return a
}

func (a *arrivals) at(seq int64) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.first[seq]
	return at, ok
}

// TestWakeupRace runs rounds of bursts separated by idle gaps just around
// IDLE_AFTER (50ms), with rate thresholds low enough that a burst of a few
// changes switches NOTIFY off, with REPEATABLE READ transactions that take their
// snapshot before a gap and write after it, and transactions that write at
// the end of a burst (when writers are told not to notify) and commit after
// the gap (when the bridge may have gone idle). Every change must be
// published within wakeupBound of its commit, with SAFETY_POLL_INTERVAL an
// hour.
func TestWakeupRace(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 40)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	burstProducts, rrProducts, lateProducts := products[:30], products[30:35], products[35:]
	b := startBridge(t, bridgeEnv(pg.DSN, ns, map[string]string{
		"SAFETY_POLL_INTERVAL": "1h",
		"IDLE_AFTER":           "50ms",
		// Low rate thresholds: even a short burst switches NOTIFY off,
		// so that most rounds race the switch both ways.
		"WAKEUP_MAX_RATE":    "20",
		"WAKEUP_RESUME_RATE": "10",
	}))
	b.waitReady(t)
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
	arrived := watchArrivals(t, ns.URL)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const burstWriters = 4
	conns := sessions(t, ctx, pg.DB, burstWriters+2) // burst writers, the RR transaction, the late one
	rrConn, lateConn := conns[burstWriters], conns[burstWriters+1]

	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	gaps := []time.Duration{0, 10, 25, 40, 45, 48, 50, 52, 55, 60, 75, 100, 150, 250}
	// After the gap, a random selection of the REPEATABLE READ write, the
	// late commit and a plain write commit, in a random order; the
	// transactions left out roll back (the late one leaves a seq that never
	// becomes visible). The last change of a round has nothing after it that
	// could wake the bridge: it must be delivered by its own wake-up (the
	// test waits for it before the next round), which is what makes a lost
	// wake-up visible.
	kinds := []string{kindRR, kindLate, kindAfter}
	var (
		log         commitLog
		pollingSeen int // rounds after whose burst writers were told not to notify
		idleSeen    int // rounds after whose gap they were told to notify
		lostRounds  int // rounds whose changes did not all arrive within wakeupBound
	)
	const rounds = 70
	for round := range rounds {
		gap := gaps[rng.IntN(len(gaps))]*time.Millisecond + time.Duration(rng.IntN(4000))*time.Microsecond
		order := slices.Clone(kinds)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		order = order[:1+rng.IntN(len(order))]
		burst := 1 + rng.IntN(40)
		if round%10 == 9 {
			burst = 300 // a long burst: the bridge surely switches to polling
		}
		rrProduct, lateProduct := rrProducts[round%len(rrProducts)], lateProducts[round%len(lateProducts)]
		mark := len(log.all())
		rec := func(seq int64, kind string) {
			log.add(commitRecord{seq: seq, at: time.Now(), kind: kind, round: round, gap: gap})
		}

		rrEarly := round%2 == 0 // the snapshot before the burst, or between it and the gap
		var rr *sql.Tx
		beginRR := func() {
			var err error
			if rr, err = rrConn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead}); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := rr.QueryRowContext(ctx, `SELECT count(*) FROM products`).Scan(&n); err != nil {
				t.Fatalf("take the REPEATABLE READ snapshot: %v", err)
			}
		}
		if rrEarly {
			beginRR()
		}
		if err := runBurst(ctx, conns[:burstWriters], burstProducts, burst, rng.Uint64(), func(seq int64) { rec(seq, kindBurst) }); err != nil {
			t.Fatalf("round %d: burst: %v", round, err)
		}
		late, lateSeq := beginChange(t, ctx, lateConn, lateProduct)
		if !rrEarly {
			beginRR()
		}
		if wakeupFlag(t, pg.DB) == 1 {
			pollingSeen++
		}

		time.Sleep(gap) // the idle gap is the scenario, not a wait for anything

		if wakeupFlag(t, pg.DB) == 2 {
			idleSeen++
		}
		for _, kind := range order {
			switch kind {
			case kindRR:
				if _, err := rr.ExecContext(ctx, `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`, rrProduct); err != nil {
					t.Fatalf("round %d: REPEATABLE READ update: %v", round, err)
				}
				rrSeq := currentSeq(t, ctx, rr)
				if err := rr.Commit(); err != nil {
					t.Fatalf("round %d: REPEATABLE READ commit: %v", round, err)
				}
				rec(rrSeq, kindRR)
			case kindLate:
				if err := late.Commit(); err != nil {
					t.Fatalf("round %d: late commit: %v", round, err)
				}
				rec(lateSeq, kindLate)
			case kindAfter:
				if err := runBurst(ctx, conns[:1], burstProducts, 1, rng.Uint64(), func(seq int64) { rec(seq, kindAfter) }); err != nil {
					t.Fatalf("round %d: write after the gap: %v", round, err)
				}
			}
		}
		if !slices.Contains(order, kindRR) {
			if err := rr.Rollback(); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Contains(order, kindLate) {
			if err := late.Rollback(); err != nil {
				t.Fatal(err)
			}
		}
		if !waitArrived(arrived, log.all()[mark:]) {
			lostRounds++
			if lostRounds == 3 {
				t.Errorf("stopped after round %d: 3 rounds lost a wake-up", round)
				break
			}
		}
	}

	records := log.all()
	checkLatencies(t, records, arrived)
	t.Logf("%d changes; writers were told not to notify after %d bursts, to notify after %d gaps",
		len(records), pollingSeen, idleSeen)
	if pollingSeen == 0 {
		t.Error("the wake-up flag never said \"poll\" (1) after a burst: the bridge never switched NOTIFY off, so the race was not exercised")
	}
	if idleSeen == 0 {
		t.Error("the wake-up flag never said \"notify\" (2) after a gap: the bridge never went idle, so the race was not exercised")
	}
	waitIdle(t, b, pg.DB)
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
}

// waitArrived waits until every change of records has arrived, or until
// wakeupBound has passed since the last commit; it reports whether all
// arrived.
func waitArrived(arrived *arrivals, records []commitRecord) bool {
	var last time.Time
	for _, r := range records {
		if r.at.After(last) {
			last = r.at
		}
	}
	deadline := last.Add(wakeupBound)
	for {
		all := true
		for _, r := range records {
			if _, ok := arrived.at(r.seq); !ok {
				all = false
				break
			}
		}
		if all {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runBurst commits n updates of random products over conns concurrently,
// calling rec with each change's seq after its commit.
func runBurst(ctx context.Context, conns []*sql.Conn, products []int64, n int, seed uint64, rec func(int64)) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i, c := range conns {
		share := n / len(conns)
		if i < n%len(conns) {
			share++
		}
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			for range share {
				id := products[rng.IntN(len(products))]
				if _, err := c.ExecContext(ctx, `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`, id); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("update %d: %w", id, err))
					mu.Unlock()
					return
				}
				// The session's last nextval: this autocommitted change's seq.
				var seq int64
				if err := c.QueryRowContext(ctx, `SELECT currval('product_changes_seq')`).Scan(&seq); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				rec(seq)
			}
		})
	}
	wg.Wait()
	return firstErr
}

// cmpErr keeps the first error.
func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// beginChange begins a transaction on c that updates product id, and returns
// it open with its change's seq.
func beginChange(t testing.TB, ctx context.Context, c *sql.Conn, id int64) (*sql.Tx, int64) {
	t.Helper()
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`, id); err != nil {
		t.Fatalf("update %d: %v", id, err)
	}
	return tx, currentSeq(t, ctx, tx)
}

// currentSeq returns the seq of the transaction's last change.
func currentSeq(t testing.TB, ctx context.Context, tx *sql.Tx) int64 {
	t.Helper()
	var seq int64
	if err := tx.QueryRowContext(ctx, `SELECT currval('product_changes_seq')`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	return seq
}

// checkLatencies fails the test for every change that arrived later than
// wakeupBound after its commit, or not at all, and logs the latencies by
// kind.
func checkLatencies(t testing.TB, records []commitRecord, arrived *arrivals) {
	t.Helper()
	byKind := make(map[string][]time.Duration)
	var late []string
	for _, r := range records {
		at, ok := arrived.at(r.seq)
		switch {
		case !ok:
			late = append(late, fmt.Sprintf("seq %d (%s, round %d, gap %v): not published %v after its commit",
				r.seq, r.kind, r.round, r.gap.Round(time.Millisecond), time.Since(r.at).Round(time.Millisecond)))
		case at.Sub(r.at) > wakeupBound:
			late = append(late, fmt.Sprintf("seq %d (%s, round %d, gap %v): published %v after its commit",
				r.seq, r.kind, r.round, r.gap.Round(time.Millisecond), at.Sub(r.at).Round(time.Millisecond)))
		default:
			byKind[r.kind] = append(byKind[r.kind], max(0, at.Sub(r.at)))
		}
	}
	for _, kind := range []string{kindBurst, kindAfter, kindRR, kindLate} {
		d := byKind[kind]
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		t.Logf("%-13s %5d changes: latency p50 %v, p99 %v, max %v", kind, len(d),
			d[len(d)/2].Round(time.Microsecond), d[len(d)*99/100].Round(time.Microsecond), d[len(d)-1].Round(time.Microsecond))
	}
	if len(late) > 0 {
		if len(late) > examples {
			late = append(late[:examples], fmt.Sprintf("… and %d more", len(late)-examples))
		}
		t.Errorf("%d changes missed the %v bound with SAFETY_POLL_INTERVAL=1h (a wake-up was lost):\n  %s",
			len(late), wakeupBound, strings.Join(late, "\n  "))
	}
}
