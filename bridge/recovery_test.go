package main

// End-to-end tests of the bridge's contract: every committed change of
// product_changes reaches the stream PRODUCTS exactly once, per product in
// version order, through crashes and restarts of every process involved.
// The bridge runs as a subprocess (harness_test.go); verifyStream
// (verify_e2e_test.go) is the judge.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/pgserver/pgservertest"
	"github.com/productwatch/productwatch/pkg/schema"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// Metric names of the bridge's contract.
const (
	metricLeader    = "productwatch_bridge_leader"
	metricPublished = "productwatch_bridge_changes_published_total"
	metricRelayMode = "productwatch_bridge_relay_mode"
)

// catchUpTimeout bounds how long the stream may take to hold every change
// once the writes have ended, after a recovery.
const catchUpTimeout = 30 * time.Second

// wakeupBound is how soon a change must be published when SAFETY_POLL_INTERVAL
// is an hour, so that only the wake-up mechanism (NOTIFY or continuous
// polling) can deliver it: far below the hour, far above a healthy latency.
const wakeupBound = 5 * time.Second

// noSafetyPoll turns the bridge's safety poll practically off, so that a
// test can tell whether the wake-up mechanism alone delivers.
var noSafetyPoll = map[string]string{"SAFETY_POLL_INTERVAL": "1h"}

// TestPublishesEveryChange: 10,000 changes from 32 concurrent writers, a mix
// of inserts, updates and deletes over 200 products, all reach the stream,
// each once, per product in version order, each byte for byte the logged
// event.
func TestPublishesEveryChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 200)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startBridge(t, nil)

	w := startWriters(t, pg.DB, writeLoad{Writers: 32, Total: 10_000, Products: products, Timeout: 2 * time.Minute})
	w.Wait(t)
	waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)

	if leader := b.metric(metricLeader); leader != 1 {
		t.Errorf("%s = %v on the only bridge, want 1", metricLeader, leader)
	}
	if published, changes := b.metric(metricPublished), changeCount(t, pg.DB); !(published >= float64(changes)) {
		t.Errorf("%s = %v, want at least the %d changes", metricPublished, published, changes)
	}
}

// TestBridgeKilled: the bridge is killed with SIGKILL twice while 16 writers
// run. The first time it is restarted at once; the second time it stays down
// longer than the stream's duplicate window (1s here), so that JetStream's
// dedupe cannot hide a republished change: only the bridge's own check of
// the stream keeps each change once.
func TestBridgeKilled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 100)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startBridge(t, map[string]string{"STREAM_DUPLICATE_WINDOW": "1s"})

	w := startWriters(t, pg.DB, writeLoad{Writers: 16, Total: 100_000, Products: products, Timeout: 2 * time.Minute})
	w.waitCommitted(t, 1000)
	waitStreamCount(t, js, 500, catchUpTimeout) // publishing is under way
	killMidBurst(t, w, b)

	b = b.restart(t)
	b.waitReady(t)
	msgs := streamMsgs(t, js)
	waitStreamCount(t, js, msgs+500, catchUpTimeout) // the new process publishes
	killMidBurst(t, w, b)
	committed := w.Committed()
	// The outage itself, not a wait for something: longer than the duplicate
	// window, while the writers go on.
	time.Sleep(1500 * time.Millisecond)
	t.Logf("%d changes committed while the bridge was down", w.Committed()-committed)

	b = b.restart(t)
	b.waitReady(t)
	w.waitCommitted(t, w.Committed()+1000)
	w.stop(t)
	waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)
}

// killMidBurst kills b, failing the test if the writers have already ended
// (the kill would not be mid-burst).
func killMidBurst(t *testing.T, w *writers, b *bridgeProc) {
	t.Helper()
	if !w.running() {
		t.Fatalf("the writers ended before %s was killed", b.name)
	}
	b.Kill(t)
	t.Logf("killed %s with SIGKILL after %d committed changes", b.name, w.Committed())
}

// streamMsgs returns the number of messages in PRODUCTS now.
func streamMsgs(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	msgs, _, err := streamState(ctx, js)
	if err != nil {
		t.Fatalf("stream state: %v", err)
	}
	return msgs
}

// TestNATSRestarted: the NATS server is restarted twice while writers run.
// The first outage lasts two seconds, longer than PUBLISH_TIMEOUT (1s here),
// so that publishes in flight fail and are retried while the server is still
// down; the bridge must notice (its /readyz stops answering 200) and changes
// keep committing. The second restart is immediate. Everything committed
// reaches the stream after recovery, each change once.
func TestNATSRestarted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 100)
	if f.ns.Server == nil {
		t.Skip("NATS_URL is an external server, which the test cannot restart")
	}
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startBridge(t, map[string]string{"PUBLISH_TIMEOUT": "1s"})

	w := startWriters(t, pg.DB, writeLoad{Writers: 8, Total: 100_000, Products: products, Timeout: 2 * time.Minute})
	w.waitCommitted(t, 1000)
	waitStreamCount(t, js, 500, catchUpTimeout)
	ns.RestartWith(t, func() {
		began, committed := time.Now(), w.Committed()
		noticed := testenv.Poll(t, 10*time.Second, func() bool { return !b.ready() })
		if !noticed {
			t.Errorf("%s: /readyz still answers 200 10s into the NATS outage", b.name)
		}
		w.waitCommitted(t, committed+500) // changes commit while NATS is down
		// The outage's length is the scenario, not a wait for something.
		time.Sleep(time.Until(began.Add(2 * time.Second)))
		t.Logf("NATS down for %v: bridge noticed: %v; %d changes committed meanwhile",
			time.Since(began).Round(time.Millisecond), noticed, w.Committed()-committed)
	})
	b.waitReady(t)
	w.waitCommitted(t, w.Committed()+500)
	ns.Restart(t)
	w.waitCommitted(t, w.Committed()+500)
	w.stop(t)
	waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)
}

// listenBackends returns the pids of the sessions on db's database whose
// last statement was a LISTEN: the bridge's listener connection.
func listenBackends(t testing.TB, db *sql.DB) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid() ORDER BY pid`)
	if err != nil {
		t.Fatalf("find the LISTEN backend: %v", err)
	}
	defer rows.Close()
	var pids []int64
	for rows.Next() {
		var pid int64
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return pids
}

// killListener waits until the bridge LISTENs on a backend other than
// previous (0: any), terminates it with pg_terminate_backend and returns its
// pid.
func killListener(t testing.TB, db *sql.DB, previous int64) int64 {
	t.Helper()
	var pid int64
	testenv.WaitFor(t, 10*time.Second, "a LISTEN backend", func() (bool, string) {
		pids := listenBackends(t, db)
		pids = slices.DeleteFunc(pids, func(p int64) bool { return p == previous })
		if len(pids) != 1 {
			return false, fmt.Sprintf("LISTEN backends %v (previous %d)", pids, previous)
		}
		pid = pids[0]
		return true, ""
	})
	var ok bool
	if err := db.QueryRowContext(t.Context(), `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	t.Logf("terminated the LISTEN backend %d", pid)
	return pid
}

// waitIdle waits until the bridge has gone idle: it asks for wake-ups (the
// metric) and the flag says so to writers.
func waitIdle(t testing.TB, b *bridgeProc, db *sql.DB) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, b.name+" idle, asking for wake-ups", func() (bool, string) {
		idle, flag := b.metric(metricRelayMode, "mode", "idle"), wakeupFlag(t, db)
		return idle == 1 && flag == 2, fmt.Sprintf(`%s{mode="idle"} = %v, product_change_wakeup = %d`, metricRelayMode, idle, flag)
	})
}

// wakeupFlag returns the wake-up flag writers read: 2 notify, 1 do not.
func wakeupFlag(t testing.TB, db *sql.DB) int64 {
	t.Helper()
	var v int64
	if err := db.QueryRowContext(t.Context(), `SELECT last_value FROM product_change_wakeup`).Scan(&v); err != nil {
		t.Fatalf("read the wake-up flag: %v", err)
	}
	return v
}

// updateProduct commits one change of product id.
func updateProduct(t testing.TB, db *sql.DB, id int64) {
	t.Helper()
	if _, err := db.ExecContext(t.Context(), `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`, id); err != nil {
		t.Fatalf("update %d: %v", id, err)
	}
}

// TestListenerKilled: the bridge's LISTEN connection is terminated by the
// server (pg_terminate_backend), first while the bridge is idle, with a
// change committed at once (its NOTIFY goes nowhere), then twice under load.
// The safety poll is an hour: the bridge must reconnect, LISTEN again and
// catch up from the change log by itself.
func TestListenerKilled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 50)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	b := f.startIdleBridge(t, noSafetyPoll)

	// Idle.
	pid := killListener(t, pg.DB, 0)
	updateProduct(t, pg.DB, products[0]) // while the listener is gone
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
	waitIdle(t, b, pg.DB)
	testenv.WaitFor(t, 10*time.Second, "a new LISTEN backend", func() (bool, string) {
		pids := listenBackends(t, pg.DB)
		return len(pids) == 1 && pids[0] != pid, fmt.Sprintf("LISTEN backends %v", pids)
	})
	updateProduct(t, pg.DB, products[1]) // woken up by the new listener
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)

	// Under load.
	w := startWriters(t, pg.DB, writeLoad{Writers: 8, Total: 100_000, Products: products, Timeout: 2 * time.Minute})
	w.waitCommitted(t, 500)
	pid = killListener(t, pg.DB, pid)
	w.waitCommitted(t, w.Committed()+500)
	killListener(t, pg.DB, pid)
	w.waitCommitted(t, w.Committed()+500)
	w.stop(t)
	waitAllPublished(t, ns.URL, js, pg.DB, 2*wakeupBound)
}

// TestPostgresRestarted: the PostgreSQL server is stopped (pg_ctl stop -m
// fast) while writers run, kept down until the bridge reports not ready, and
// started again on the same port. The writers go on through the errors; the
// change log, not their count, says what committed, and all of it reaches
// the stream.
func TestPostgresRestarted(t *testing.T) {
	t.Parallel()
	server, f := newPrivateFixture(t, 100)
	db, ns, js, products := f.pg.DB, f.ns, f.js, f.products
	b := f.startBridge(t, nil)

	w := startWriters(t, db, writeLoad{Writers: 8, Total: 100_000, Products: products, Timeout: 2 * time.Minute, TolerateErrors: true})
	w.waitCommitted(t, 1000)
	waitStreamCount(t, js, 500, catchUpTimeout)
	if !w.running() {
		t.Fatal("the writers ended before the restart")
	}
	began := time.Now()
	noticed := false
	server.restartWith(t, func() {
		noticed = testenv.Poll(t, 10*time.Second, func() bool { return !b.ready() })
		if !noticed {
			t.Errorf("%s: /readyz still answers 200 10s after PostgreSQL stopped", b.name)
		}
	})
	t.Logf("PostgreSQL down for %v (bridge noticed: %v)", time.Since(began).Round(time.Millisecond), noticed)

	b.waitReady(t)
	w.waitCommitted(t, w.Committed()+1000)
	w.stop(t)
	if w.failed.Load() == 0 {
		t.Error("no write failed: the restart did not happen under load")
	}
	waitAllPublished(t, ns.URL, js, db, catchUpTimeout)
}

// newPrivateFixture starts a private cluster (startPrivatePG), migrates its
// postgres database and sets up a fixture on it with n seeded products.
func newPrivateFixture(t *testing.T, n int) (*privatePG, *fixture) {
	t.Helper()
	server := startPrivatePG(t)
	dsn := server.cluster.DSN("postgres")
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, db, nil); err != nil {
		t.Fatalf("migrate the private cluster: %v", err)
	}
	f := &fixture{pg: &testenv.PG{DSN: dsn, Name: "postgres", DB: db}, ns: natsForBridge(t)}
	_, f.js = connectJS(t, f.ns.URL)
	f.products = testenv.SeedProducts(t, db, n)
	return server, f
}

// privatePG is a PostgreSQL cluster of one test's own, which it may stop and
// start again on the same port and data.
type privatePG struct {
	cluster *pgserver.Cluster
	opts    pgserver.Options
}

// startPrivatePG starts a private cluster on a free port. It is stopped and
// removed when the test ends.
func startPrivatePG(t *testing.T) *privatePG {
	t.Helper()
	if _, err := pgserver.FindBinDir(); errors.Is(err, pgserver.ErrBinariesNotFound) {
		// A machine that reaches PostgreSQL only through DATABASE_URL: no
		// server of the test's own to stop and start.
		t.Skipf("needs a private PostgreSQL cluster: %v", err)
	}
	parent := pgservertest.Parent(t, "pwtest-bridge-pg-")
	p := &privatePG{opts: pgserver.Options{
		Dir:    filepath.Join(parent, "data"),
		Logger: testenv.Logger(t),
		// Throw-away data: durability is not what this test is about (a fast
		// stop checkpoints whatever committed).
		Settings: map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var err error
	if p.cluster, err = pgserver.StartPrivate(ctx, p.opts); err != nil {
		t.Fatalf("private cluster: %v", err)
	}
	p.opts.Port = p.cluster.Port()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.cluster.Stop(ctx); err != nil {
			t.Errorf("stop private cluster: %v", err)
		}
	})
	return p
}

// restartWith stops the server (pg_ctl stop -m fast: sessions are cut, open
// transactions roll back), calls whileDown, and starts it again on the same
// port.
func (p *privatePG) restartWith(t testing.TB, whileDown func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := p.cluster.Stop(ctx); err != nil {
		t.Fatalf("stop postgres: %v", err)
	}
	whileDown()
	cluster, err := pgserver.StartPrivate(ctx, p.opts)
	if err != nil {
		t.Fatalf("start postgres again on port %d: %v", p.opts.Port, err)
	}
	p.cluster = cluster
}

// TestLongTransaction: a transaction takes a seq early (its UPDATE, in the
// middle of a burst, when writers are told not to notify) and stays open
// while the rest of the burst commits and is published, and past IDLE_AFTER;
// its change must be published within wakeupBound of its commit, once, with
// the safety poll an hour. In the second round the bridge is killed with
// SIGKILL and restarted while the transaction is open: its cursor must not
// have moved past the open seq.
func TestLongTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 52)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	held, products := products[:2], products[2:] // the open transactions' rows
	b := f.startBridge(t, noSafetyPoll)

	const later = 1500
	for round, id := range held {
		w := startWriters(t, pg.DB, writeLoad{Writers: 8, Total: later + 300, Products: products, Timeout: time.Minute})
		w.waitCommitted(t, 300)
		if !w.running() {
			t.Fatal("the writers ended before the long transaction began")
		}
		tx, seq := openChange(t, pg.DB, id)
		w.Wait(t)
		// Everything visible is published: the open seq is not in the log
		// yet, and the later ones must not wait for it.
		waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)
		if round == 1 {
			b.Kill(t)
			b = b.restart(t)
			b.waitReady(t)
			waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)
		}
		// Past IDLE_AFTER with nothing else to do. The open transaction is
		// the scenario: this sleep is its duration.
		time.Sleep(time.Second)
		if err := tx.Commit(); err != nil {
			t.Fatalf("commit the long transaction: %v", err)
		}
		committed := time.Now()
		waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)
		t.Logf("round %d: seq %d, committed after about %d later changes, published within %v",
			round, seq, later, time.Since(committed).Round(time.Millisecond))
	}
}

// openChange begins a transaction that updates product id and returns it
// open, with the seq its change took.
func openChange(t testing.TB, db *sql.DB, id int64) (*sql.Tx, int64) {
	t.Helper()
	tx, err := db.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	if _, err := tx.Exec(`UPDATE products SET units_available = 0 WHERE product_id = $1`, id); err != nil {
		t.Fatalf("update %d: %v", id, err)
	}
	var seq int64
	if err := tx.QueryRow(`SELECT currval('product_changes_seq')`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	return tx, seq
}

// TestTwoBridges: two bridges on one database and one NATS server. Exactly
// one leads (leader metric 1, the other 0) and only it publishes; when it is
// killed mid-burst the other takes over within a few seconds, nothing is
// lost or duplicated, and the killed one, restarted, stands by.
func TestTwoBridges(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 100)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	env := bridgeEnv(pg.DSN, ns, nil)
	bridges := []*bridgeProc{startBridge(t, env), startBridge(t, env)}
	for _, b := range bridges {
		b.waitReady(t)
	}
	leader, standby := leaderOf(t, bridges)

	w := startWriters(t, pg.DB, writeLoad{Writers: 16, Total: 100_000, Products: products, Timeout: 2 * time.Minute})
	w.waitCommitted(t, 1000)
	waitStreamCount(t, js, 500, catchUpTimeout)
	for range 10 { // still one leader under load
		if l, s := leader.metric(metricLeader), standby.metric(metricLeader); l != 1 || s != 0 {
			t.Fatalf("under load: %s leader = %v, %s leader = %v; want 1 and 0", leader.name, l, standby.name, s)
		}
		time.Sleep(testenv.PollInterval)
	}
	if p := standby.metric(metricPublished); p != 0 {
		t.Errorf("standby %s: %s = %v, want 0", standby.name, metricPublished, p)
	}

	killMidBurst(t, w, leader)
	took := testenv.WaitFor(t, 5*time.Second, standby.name+" taking the lead", func() (bool, string) {
		v := standby.metric(metricLeader)
		return v == 1, fmt.Sprintf("%s = %v", metricLeader, v)
	})
	t.Logf("%s took the lead %v after the leader was killed", standby.name, took.Round(time.Millisecond))
	msgs := streamMsgs(t, js)
	waitStreamCount(t, js, msgs+500, catchUpTimeout) // the new leader publishes

	restarted := leader.restart(t)
	restarted.waitReady(t)
	if newLeader, _ := leaderOf(t, []*bridgeProc{standby, restarted}); newLeader != standby {
		t.Errorf("the restarted %s took the lead from %s", restarted.name, standby.name)
	}
	w.waitCommitted(t, w.Committed()+1000)
	w.stop(t)
	waitAllPublished(t, ns.URL, js, pg.DB, catchUpTimeout)
}

// leaderOf waits until exactly one of two bridges reports leading and the
// other standing by, and returns them in that order.
func leaderOf(t testing.TB, bridges []*bridgeProc) (leader, standby *bridgeProc) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "one leader and one standby", func() (bool, string) {
		a, b := bridges[0].metric(metricLeader), bridges[1].metric(metricLeader)
		switch {
		case a == 1 && b == 0:
			leader, standby = bridges[0], bridges[1]
		case a == 0 && b == 1:
			leader, standby = bridges[1], bridges[0]
		default:
			return false, fmt.Sprintf("%s = %v on %s, %v on %s", metricLeader, a, bridges[0].name, b, bridges[1].name)
		}
		return true, ""
	})
	return leader, standby
}

// TestLargeChange: changes whose event is over 8000 bytes (two fields of 4096
// characters of two bytes each; NOTIFY carries only a reference then) are
// published whole, when the bridge is idle (woken by the reference: the
// safety poll is an hour) and under load.
func TestLargeChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 20)
	pg, ns, js, products := f.pg, f.ns, f.js, f.products
	f.startIdleBridge(t, noSafetyPoll)

	var id int64
	if err := pg.DB.QueryRowContext(t.Context(), insertProduct,
		strings.Repeat("é", 4096), strings.Repeat(`"ü`, 2048), "1.00", "EUR", 1).Scan(&id); err != nil {
		t.Fatalf("insert a large product: %v", err)
	}
	var size int
	if err := pg.DB.QueryRowContext(t.Context(), `SELECT octet_length(event::text) FROM product_changes WHERE product_id = $1`, id).
		Scan(&size); err != nil || size <= 8000 {
		t.Fatalf("the large event is %d bytes (%v); want more than 8000", size, err)
	}
	waitAllPublished(t, ns.URL, js, pg.DB, wakeupBound)

	w := startWriters(t, pg.DB, writeLoad{Writers: 4, Total: 100_000, Products: products, Timeout: time.Minute})
	w.waitCommitted(t, 200)
	updateProduct(t, pg.DB, id)
	w.waitCommitted(t, w.Committed()+200)
	updateProduct(t, pg.DB, id)
	w.stop(t)
	waitAllPublished(t, ns.URL, js, pg.DB, 2*wakeupBound)

	stream, err := js.Stream(t.Context(), broker.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	last, err := stream.GetLastMsgForSubject(t.Context(), change.Subject(id))
	if err != nil {
		t.Fatalf("last message of product %d: %v", id, err)
	}
	if len(last.Data) <= 8000 {
		t.Errorf("last message of product %d is %d bytes, want the whole event (over 8000)", id, len(last.Data))
	}
}

// TestSeqOrderIsNotXidOrder: seqs are taken in one order and transaction ids
// in another. Transaction A gets its id first (any write does that), then B
// gets a later id but the earlier seq s; A takes s+1 and commits while B is
// open. A snapshot now shows no transaction in flight below its xmax (B's id
// is not below it: xmax is the latest completed id plus one), although B's
// change s is not visible yet. The bridge must still publish s when B
// commits. The test runs on a private cluster: any other transaction that
// completes with a later id than B's would hide the case.
func TestSeqOrderIsNotXidOrder(t *testing.T) {
	t.Parallel()
	_, f := newPrivateFixture(t, 2)
	db, ns, js, products := f.pg.DB, f.ns, f.js, f.products
	f.startBridge(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	for round := range 3 {
		waitAllPublished(t, ns.URL, js, db, catchUpTimeout)
		// The bridge's own cursor update is a transaction too: let it end.
		waitCursor(t, db)

		txA, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var xidA, xidB string
		if err := txA.QueryRowContext(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xidA); err != nil {
			t.Fatal(err)
		}
		txB, seqB := openChange(t, db, products[0]) // a later id, the earlier seq
		if err := txB.QueryRowContext(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xidB); err != nil {
			t.Fatal(err)
		}
		if _, err := txA.ExecContext(ctx, `UPDATE products SET units_available = 7 WHERE product_id = $1`, products[1]); err != nil {
			t.Fatal(err)
		}
		if err := txA.Commit(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: transaction A (xid %s) committed seq %d; B (xid %s) holds seq %d open", round, xidA, seqB+1, xidB, seqB)
		// The bridge reads the log while B is open: A's change is published.
		waitAllPublished(t, ns.URL, js, db, catchUpTimeout)

		if err := txB.Commit(); err != nil {
			t.Fatal(err)
		}
		waitAllPublished(t, ns.URL, js, db, wakeupBound)
	}
}

// waitCursor waits until the bridge's saved cursor has reached the last seq
// of the change log.
func waitCursor(t testing.TB, db *sql.DB) {
	t.Helper()
	testenv.WaitFor(t, catchUpTimeout, "the bridge's cursor at the end of the log", func() (bool, string) {
		var cursor, last int64
		if err := db.QueryRowContext(t.Context(), `SELECT (SELECT cursor_seq FROM bridge_cursor),
			(SELECT coalesce(max(seq), 0) FROM product_changes)`).Scan(&cursor, &last); err != nil {
			return false, err.Error()
		}
		return cursor >= last, fmt.Sprintf("cursor %d, last seq %d", cursor, last)
	})
}
