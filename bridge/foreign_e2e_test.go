package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

const metricForeign = "productwatch_bridge_foreign_messages_total"

// TestForeignMessages is issue 9's stall: messages the bridge did not
// publish sit newest on product subjects of the stream (published before
// NATS was locked down, here by the test's privileged harness user) when the
// bridge restarts and checks the stream before publishing. For each kind of
// foreign message (junk without a seq, a seq with a body that is no event,
// another product's event under a made-up seq) the bridge logs it, counts
// it, publishes its own change over it, and keeps publishing every other
// product meanwhile; /readyz stays ready because nothing is stuck. In the
// end the stream, foreign messages aside, is exactly the change log, and
// each product's newest message is its latest change.
func TestForeignMessages(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ns := natsForBridge(t)
	if ns.Server == nil {
		t.Skip("NATS_URL names a shared server, whose PRODUCTS stream other tests' bridges may use")
	}
	_, js := connectJS(t, ns.URL) // as the harness: allowed to publish anything
	products := testenv.SeedProducts(t, pg.DB, 40)
	env := bridgeEnv(pg.DSN, ns, nil)
	b := startBridge(t, env)
	b.waitReady(t)
	waitStreamCount(t, js, changeCount(t, pg.DB), catchUpTimeout)
	if err := b.Stop(); err != nil {
		t.Fatalf("stop %s: %v", b.name, err)
	}

	// Foreign messages, newest on three products' subjects.
	var otherEvent string
	if err := pg.DB.QueryRowContext(t.Context(), `SELECT event::text FROM product_changes WHERE product_id = $1 ORDER BY seq DESC LIMIT 1`,
		products[3]).Scan(&otherEvent); err != nil {
		t.Fatal(err)
	}
	foreign := []struct {
		product int64
		msgID   string
		data    string
	}{
		{products[0], "", "junk, no seq"},
		{products[1], "99999999", "{}"},
		{products[2], "5000000", otherEvent}, // another product's real event
	}
	foreignAt := make(map[uint64]bool) // stream sequences of the foreign messages
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, f := range foreign {
		msg := &nats.Msg{Subject: change.Subject(f.product), Data: []byte(f.data), Header: nats.Header{}}
		if f.msgID != "" {
			msg.Header.Set(jetstream.MsgIDHeader, f.msgID)
		}
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil || ack.Duplicate {
			t.Fatalf("publish the foreign message on %s: %v (duplicate %v)", msg.Subject, err, ack != nil && ack.Duplicate)
		}
		foreignAt[ack.Sequence] = true
	}

	// Restart; the products with foreign messages change, and so do the
	// others, at the same time.
	b = startBridge(t, env)
	others := products[4:]
	w := startWriters(t, pg.DB, writeLoad{Writers: 4, Total: 2000, Products: others, Timeout: time.Minute})
	for _, f := range foreign {
		updateProduct(t, pg.DB, f.product)
	}
	w.Wait(t)
	for _, f := range foreign { // and once more after the load
		updateProduct(t, pg.DB, f.product)
	}
	b.waitReady(t)
	want := changeCount(t, pg.DB) + uint64(len(foreign))
	waitStreamCount(t, js, want, catchUpTimeout)

	// Nothing lost, nothing twice, foreign messages aside.
	rctx, rcancel := context.WithTimeout(t.Context(), verifyTimeout)
	defer rcancel()
	msgs, err := readStream(rctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ours := msgs[:0:0]
	for _, m := range msgs {
		if !foreignAt[m.streamSeq] {
			ours = append(ours, m)
		}
	}
	changes, err := readChanges(rctx, pg.DB)
	if err != nil {
		t.Fatal(err)
	}
	if report := diffStream(ours, changes); report != "" {
		t.Errorf("the stream, foreign messages aside, does not match the change log:\n%s", report)
	}

	// Each foreign product's newest message is its latest change again.
	stream, err := js.Stream(rctx, "PRODUCTS")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range foreign {
		var latest int64
		if err := pg.DB.QueryRowContext(rctx, `SELECT max(seq) FROM product_changes WHERE product_id = $1`, f.product).Scan(&latest); err != nil {
			t.Fatal(err)
		}
		last, err := stream.GetLastMsgForSubject(rctx, change.Subject(f.product))
		if err != nil {
			t.Fatal(err)
		}
		if got := last.Header.Get(jetstream.MsgIDHeader); got != strconv.FormatInt(latest, 10) {
			t.Errorf("%s: newest message has Nats-Msg-Id %q, want the latest change %d", change.Subject(f.product), got, latest)
		}
	}

	if n := b.metric(metricForeign); !(n >= float64(len(foreign))) {
		t.Errorf("%s = %v, want at least %d", metricForeign, n, len(foreign))
	}
	for _, f := range foreign {
		line := fmt.Sprintf("subject=%s", change.Subject(f.product))
		if !strings.Contains(b.proc.Output(), "not published by the bridge") || !strings.Contains(b.proc.Output(), line) {
			t.Errorf("the bridge's log does not report the foreign message on %s", change.Subject(f.product))
		}
	}
	if !b.ready() {
		_, body, _ := b.get("/readyz")
		t.Errorf("/readyz not ready after publishing everything: %s", body)
	}
}

// TestNotReadyWhileStuck: a bridge that cannot do its job although every
// dependency answers (here: it connects as the gateway user, which may not
// touch the stream) must not say it is ready. /readyz names the publishing
// check and the error once it has failed for its threshold (10 s).
func TestNotReadyWhileStuck(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ns := natsForBridge(t)
	if ns.Server == nil {
		t.Skip("NATS_URL names a shared server, whose users testenv does not make")
	}
	testenv.SeedProducts(t, pg.DB, 3)
	b := startBridge(t, bridgeEnv(pg.DSN, ns, map[string]string{
		"NATS_USER": ns.Gateway.User, "NATS_PASSWORD": ns.Gateway.Password, "PUBLISH_TIMEOUT": "1s",
	}))
	sawReady := false
	testenv.WaitFor(t, 45*time.Second, "/readyz to report the stuck publishing", func() (bool, string) {
		if b.hasExited() {
			t.Fatalf("%s exited: %s", b.name, b.describeExit())
		}
		status, body, err := b.get("/readyz")
		if err != nil {
			return false, err.Error()
		}
		if status == 200 {
			sawReady = true
		}
		return status == 503 && strings.Contains(body, `"publishing"`) && strings.Contains(body, "failing for"), body
	})
	if b.ready() {
		t.Error("ready again although nothing changed")
	}
	t.Logf("ready before the threshold passed: %v (a hiccup is not a stall)", sawReady)
}
