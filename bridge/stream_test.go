package main

// The stream side of the end-to-end tests: the NATS server a bridge
// publishes to, and the waits and diagnostics on the PRODUCTS stream and the
// change log. verify_e2e_test.go holds the check of the stream against the
// change log.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// externalNATS serialises the tests of this package when NATS_URL names an
// external server: the bridge's stream name is fixed, so two tests' bridges
// would publish into one stream.
var externalNATS sync.Mutex

// natsForBridge returns the test's NATS server (testenv.NATS). On an external
// server (NATS_URL) it holds externalNATS until the test ends and deletes the
// PRODUCTS stream first, so that the test starts from an empty stream with an
// empty dedupe window. Tests of other packages must not use PRODUCTS on that
// server meanwhile.
func natsForBridge(t testing.TB) *testenv.NATSServer {
	t.Helper()
	ns := testenv.NATS(t)
	if ns.Server != nil {
		return ns
	}
	externalNATS.Lock()
	t.Cleanup(externalNATS.Unlock)
	_, js := connectJS(t, ns.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, broker.StreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("delete stream %s on %s: %v", broker.StreamName, ns.URL, err)
	}
	return ns
}

// connectJS connects to url for the test, reconnecting forever (the server
// may be restarted), and closes the connection when the test ends.
func connectJS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return testenv.ConnectJS(t, url, nats.Name("productwatch-bridge-test"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond))
}

// streamState returns the number of messages in PRODUCTS and its last
// sequence; a missing stream holds none.
func streamState(ctx context.Context, js jetstream.JetStream) (msgs, lastSeq uint64, err error) {
	stream, err := js.Stream(ctx, broker.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.LastSeq, nil
}

// waitStreamCount waits until PRODUCTS holds at least want messages and
// returns how long that took.
func waitStreamCount(t testing.TB, js jetstream.JetStream, want uint64, timeout time.Duration) time.Duration {
	t.Helper()
	return testenv.WaitFor(t, timeout, fmt.Sprintf("%d messages in %s", want, broker.StreamName), func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		msgs, _, err := streamState(ctx, js)
		if err != nil {
			return false, err.Error()
		}
		return msgs >= want, fmt.Sprintf("%d messages", msgs)
	})
}

// changeCount returns the number of rows of product_changes.
func changeCount(t testing.TB, db *sql.DB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var n uint64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM product_changes`).Scan(&n); err != nil {
		t.Fatalf("count changes: %v", err)
	}
	return n
}

// waitAllPublished waits until the stream holds as many messages as the
// change log has rows, then checks it with verifyStream. When the stream
// falls short it reports what is missing before failing.
func waitAllPublished(t testing.TB, natsURL string, js jetstream.JetStream, db *sql.DB, timeout time.Duration) {
	t.Helper()
	want := changeCount(t, db)
	began := time.Now()
	deadline := began.Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		msgs, _, err := streamState(ctx, js)
		cancel()
		if err == nil && msgs >= want {
			t.Logf("%d changes in the stream %v after the writes ended", want, time.Since(began).Round(time.Millisecond))
			verifyStream(t, natsURL, db)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after %v the stream holds %d messages (err %v), the change log %d rows; %s",
				timeout, msgs, err, want, describeState(t, js, db))
			verifyStream(t, natsURL, db)
			t.FailNow()
		}
		time.Sleep(testenv.PollInterval)
	}
}

// describeState describes the stream's and the bridge's state, for a
// failure: a stream whose sequences have holes lost messages it had
// acknowledged; a cursor past a missing seq means the bridge skipped it.
func describeState(t testing.TB, js jetstream.JetStream, db *sql.DB) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var parts []string
	if stream, err := js.Stream(ctx, broker.StreamName); err != nil {
		parts = append(parts, fmt.Sprintf("stream: %v", err))
	} else if info, err := stream.Info(ctx); err != nil {
		parts = append(parts, fmt.Sprintf("stream info: %v", err))
	} else {
		s := info.State
		parts = append(parts, fmt.Sprintf("stream: msgs %d, first seq %d, last seq %d, deleted %d",
			s.Msgs, s.FirstSeq, s.LastSeq, s.NumDeleted))
	}
	var cursor, high int64
	if err := db.QueryRowContext(ctx, `SELECT cursor_seq, published_high FROM bridge_cursor`).Scan(&cursor, &high); err != nil {
		parts = append(parts, fmt.Sprintf("bridge_cursor: %v", err))
	} else {
		parts = append(parts, fmt.Sprintf("bridge_cursor: cursor_seq %d, published_high %d", cursor, high))
	}
	bridgesOf.Lock()
	bridges := slices.Clone(bridgesOf.m[t])
	bridgesOf.Unlock()
	for _, b := range bridges {
		if b.hasExited() {
			continue
		}
		status, body, err := b.get("/metrics")
		if err != nil || status != http.StatusOK {
			parts = append(parts, fmt.Sprintf("%s: /metrics %d %v", b.name, status, err))
			continue
		}
		var values []string
		for _, name := range diagnosticMetrics {
			values = append(values, fmt.Sprintf("%s %v", strings.TrimPrefix(name, "productwatch_bridge_"), sumMetric(body, name)))
		}
		parts = append(parts, b.name+": "+strings.Join(values, ", "))
	}
	return strings.Join(parts, "; ")
}

// fixture is what an end-to-end test of the bridge starts from: a database
// of its own with seeded products, a NATS server (natsForBridge) and a
// JetStream client on it.
type fixture struct {
	pg       *testenv.PG
	ns       *testenv.NATSServer
	js       jetstream.JetStream
	products []int64 // the seeded products' ids
}

// newFixture sets up a fixture with n seeded products.
func newFixture(t testing.TB, n int) *fixture {
	t.Helper()
	f := &fixture{pg: testenv.Postgres(t), ns: natsForBridge(t)}
	_, f.js = connectJS(t, f.ns.URL)
	f.products = testenv.SeedProducts(t, f.pg.DB, n)
	return f
}

// startIdleBridge starts a bridge like startBridge and waits until it has
// published every change made so far and is idle (waiting for wake-ups).
func (f *fixture) startIdleBridge(t testing.TB, extra map[string]string) *bridgeProc {
	t.Helper()
	b := f.startBridge(t, extra)
	waitAllPublished(t, f.ns.URL, f.js, f.pg.DB, wakeupBound)
	waitIdle(t, b, f.pg.DB)
	return b
}

// startBridge starts a bridge on the fixture's database and NATS server,
// with extra's settings (bridgeEnv), and waits until it is ready.
func (f *fixture) startBridge(t testing.TB, extra map[string]string) *bridgeProc {
	t.Helper()
	b := startBridge(t, bridgeEnv(f.pg.DSN, f.ns, extra))
	b.waitReady(t)
	return b
}
