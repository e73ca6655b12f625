package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// seqOf reads an event's seq and whether a message carries "all":true.
func seqOf(t *testing.T, m message) (seq int64, all bool) {
	t.Helper()
	var v struct {
		Seq int64 `json:"seq"`
		All bool  `json:"all"`
	}
	if err := json.Unmarshal([]byte(m.raw), &v); err != nil {
		t.Fatal(err)
	}
	return v.Seq, v.All
}

// natsAllSubscriptions counts the product.* subscriptions in the NATS
// server (every client's, so every gateway's).
func natsAllSubscriptions(t *testing.T, s *server.Server) int {
	t.Helper()
	sz, err := s.Subsz(&server.SubszOptions{Subscriptions: true, Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sub := range sz.Subs {
		if sub.Subject == "product.*" {
			n++
		}
	}
	return n
}

// TestWatchAll: watch-all clients get the INSERT, UPDATE and DELETE of a
// product created after they subscribed, through one product.* NATS
// subscription however many of them there are; a client that also watches
// the product one by one gets each change once; unsubscribing all stops the
// changes of unwatched products.
func TestWatchAll(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	seq := g.relay(t, 0)
	a, b, both := g.dial(t, nil), g.dial(t, nil), g.dial(t, nil)
	for i, c := range []*wsClient{a, b, both} {
		c.send(fmt.Sprintf(`{"command":"subscribe","all":true,"id":%d}`, i))
		ack := c.expect("ack")
		if _, all := seqOf(t, ack); !all || string(ack.ID) != fmt.Sprint(i) || len(ack.ProductIDs) != 0 {
			t.Fatalf("ack %s", ack.raw)
		}
	}
	if g.nats.Server != nil {
		if n := natsAllSubscriptions(t, g.nats.Server); n != 1 {
			t.Fatalf("%d product.* subscriptions in NATS for 3 watch-all clients, want 1", n)
		}
	}
	if !g.g.hub.AllSubscribed() || g.g.hub.AllSubscribers() != 3 {
		t.Fatalf("hub: subscribed %v, %d subscribers", g.g.hub.AllSubscribed(), g.g.hub.AllSubscribers())
	}

	p := g.create(t, macbook) // created after the subscriptions
	path := fmt.Sprintf("/products/%d", p.ProductID)
	both.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, p.ProductID))
	both.expect("ack")
	seq = g.relay(t, seq)
	g.write(t, http.MethodPatch, path, `{"unitsAvailable":5}`)
	seq = g.relay(t, seq)
	g.write(t, http.MethodDelete, path, "")
	seq = g.relay(t, seq)
	for _, c := range []*wsClient{a, b, both} {
		for i, want := range []string{"INSERT", "UPDATE", "DELETE"} {
			if ev := c.expect(want); ev.ProductID != p.ProductID || ev.Version != int64(i+1) {
				t.Fatalf("event %s", ev.raw)
			}
		}
	}

	// both gets nothing twice, and a leaves: the next message of each is
	// the ack of a command sent now, then the next change.
	both.send(`{"command":"subscribe","productIDs":[999999]}`)
	if m := both.next(); m.Type != "ack" {
		t.Fatalf("a duplicate reached the client watching both ways: %s", m.raw)
	}
	a.send(`{"command":"unsubscribe","all":true,"id":"u"}`)
	if ack := a.expect("ack"); string(ack.ID) != `"u"` || ack.Command != "unsubscribe" {
		t.Fatalf("ack %s", ack.raw)
	}
	q := g.create(t, macbook)
	seq = g.relay(t, seq)
	for _, c := range []*wsClient{b, both} {
		if ev := c.expect("INSERT"); ev.ProductID != q.ProductID {
			t.Fatalf("got %s", ev.raw)
		}
	}
	a.send(`{"command":"subscribe","productIDs":[999999]}`)
	if m := a.next(); m.Type != "ack" {
		t.Fatalf("after unsubscribing all, got %s", m.raw)
	}

	// both watches r one by one too. Unsubscribing all, it forgets every
	// product but r: a replayed old change of r is still dropped, and r's
	// new changes come.
	r := g.create(t, macbook)
	both.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, r.ProductID))
	both.expect("ack")
	beforeR := seq
	seq = g.relay(t, seq)
	if ev := both.expect("INSERT"); ev.ProductID != r.ProductID {
		t.Fatalf("got %s", ev.raw)
	}
	b.expect("INSERT")
	// The last watch-all client leaving removes the NATS subscription.
	b.ws.CloseNow()
	both.send(`{"command":"unsubscribe","all":true}`)
	both.expect("ack")
	// r's INSERT again, then a new UPDATE on the same subject: the
	// outbox still knows r's version, so the UPDATE is the next message.
	g.relay(t, beforeR)
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", r.ProductID), `{"unitsAvailable":7}`)
	seq = g.relay(t, seq)
	if ev := both.expect("UPDATE"); ev.ProductID != r.ProductID || ev.Version != 2 {
		t.Fatalf("after unsubscribing all, got %s for the product watched one by one", ev.raw)
	}
	testenv.WaitUntil(t, 10*time.Second, "the product.* subscription to go", func() bool {
		return !g.g.hub.AllSubscribed() && (g.nats.Server == nil || natsAllSubscriptions(t, g.nats.Server) == 0)
	})
	_ = seq
}

// TestWatchAllResume: a client that comes back with since gets exactly the
// changes it missed, in seq order, then live ones; since older than the
// change log keeps is answered with an error resync.
func TestWatchAllResume(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	keep, gone := g.create(t, macbook), g.create(t, macbook)
	seq := g.relay(t, 0)

	c := g.dial(t, nil)
	c.send(`{"command":"subscribe","all":true}`)
	c.expect("ack")
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", keep.ProductID), `{"unitsAvailable":3}`)
	seq = g.relay(t, seq)
	ev := c.expect("UPDATE")
	since, _ := seqOf(t, ev)
	c.ws.CloseNow()

	// Away: one change for each of three products.
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", keep.ProductID), `{"unitsAvailable":2}`)
	fresh := g.create(t, macbook)
	g.write(t, http.MethodDelete, fmt.Sprintf("/products/%d", gone.ProductID), "")
	seq = g.relay(t, seq)

	back := g.dial(t, nil)
	back.send(fmt.Sprintf(`{"command":"subscribe","all":true,"since":%d,"id":"r"}`, since))
	ack := back.expect("ack")
	if !json.Valid([]byte(ack.raw)) || string(ack.ID) != `"r"` {
		t.Fatalf("ack %s", ack.raw)
	}
	want := []struct {
		action  string
		id, ver int64
	}{{"UPDATE", keep.ProductID, 3}, {"INSERT", fresh.ProductID, 1}, {"DELETE", gone.ProductID, 2}}
	last := since
	for _, w := range want {
		m := back.expect(w.action)
		s, _ := seqOf(t, m)
		if m.ProductID != w.id || m.Version != w.ver || s <= last {
			t.Fatalf("resume: got %s, want %s of %d v%d after seq %d", m.raw, w.action, w.id, w.ver, last)
		}
		last = s
	}
	// Then live changes, and nothing else before them.
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", fresh.ProductID), `{"unitsAvailable":1}`)
	seq = g.relay(t, seq)
	if m := back.expect("UPDATE"); m.ProductID != fresh.ProductID || m.Version != 2 {
		t.Fatalf("live after resume: %s", m.raw)
	}

	// since at the newest seq: nothing to send, the ack alone.
	var newest int64
	if err := g.DB.QueryRow(`SELECT max(seq) FROM product_changes`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	now := g.dial(t, nil)
	now.send(`{"command":"subscribe","all":true}`)
	if ack := now.expect("ack"); !strings.Contains(ack.raw, fmt.Sprintf(`"seq":%d`, newest)) {
		t.Fatalf("the ack does not carry the log position %d: %s", newest, ack.raw)
	}
	now.send(fmt.Sprintf(`{"command":"subscribe","all":true,"since":%d}`, newest))
	now.expect("ack")
	now.send(`{"command":"subscribe","productIDs":[999999]}`)
	if m := now.next(); m.Type != "ack" {
		t.Fatalf("resume from the newest seq sent %s", m.raw)
	}

	// Pruned: the log lost the changes right after since.
	if _, err := g.DB.Exec(`DELETE FROM product_changes WHERE seq <= $1`, since+1); err != nil {
		t.Fatal(err)
	}
	late := g.dial(t, nil)
	late.send(fmt.Sprintf(`{"command":"subscribe","all":true,"since":%d,"id":"p"}`, since))
	late.expect("ack")
	e := late.expect("error")
	if _, all := seqOf(t, e); e.Code != "resync" || !all || string(e.ID) != `"p"` {
		t.Fatalf("pruned resume: %s", e.raw)
	}
	// Still subscribed: live changes flow (the client reloads over REST).
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", keep.ProductID), `{"unitsAvailable":9}`)
	g.relay(t, seq)
	if m := late.expect("UPDATE"); m.ProductID != keep.ProductID {
		t.Fatalf("live after resync: %s", m.raw)
	}
}

// TestWatchAllBadCommands: watch-all commands that cannot be served are
// answered with a clear error and change nothing.
func TestWatchAllBadCommands(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	c := g.dial(t, nil)
	for _, frame := range []string{
		`{"command":"subscribe","all":true,"productIDs":[1]}`,
		`{"command":"subscribe","all":true,"snapshot":true}`,
		`{"command":"subscribe","all":true,"since":-3}`,
		`{"command":"subscribe","productIDs":[1],"since":3}`,
		`{"command":"unsubscribe","all":true,"since":3}`,
		`{"command":"subscribe","all":"yes"}`,
	} {
		c.send(frame)
		if e := c.expect("error"); e.Code != "invalid_command" || e.Message == "" {
			t.Fatalf("%s: %s", frame, e.raw)
		}
	}
	if g.g.hub.AllSubscribed() || g.g.hub.Products() != 0 {
		t.Fatal("a refused command subscribed")
	}
	// Unsubscribing all without watching all is fine (nothing to remove).
	c.send(`{"command":"unsubscribe","all":true}`)
	c.expect("ack")
}

// TestWatchAllAfterNATSRestart: when the gateway's NATS connection comes
// back, its watch-all clients are told (an error resync with "all":true and
// no id) that live changes may have been missed; resuming with since then
// brings the change made while NATS was down.
func TestWatchAllAfterNATSRestart(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	if g.nats.Server == nil {
		t.Skip("NATS_URL names an external server: this test cannot restart it")
	}
	p := g.create(t, macbook)
	seq := g.relay(t, 0)
	c := g.dial(t, nil)
	c.send(`{"command":"subscribe","all":true}`)
	ack := c.expect("ack")
	var position struct {
		Seq int64 `json:"seq"`
	}
	if err := json.Unmarshal([]byte(ack.raw), &position); err != nil || position.Seq != seq {
		t.Fatalf("ack %s, want seq %d", ack.raw, seq)
	}
	// While NATS is down a change is made (and published by nobody: the
	// bridge would publish it before this gateway is back).
	g.nats.RestartWith(t, func() {
		g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", p.ProductID), `{"unitsAvailable":1}`)
	})
	e := c.expect("error")
	if _, all := seqOf(t, e); e.Code != "resync" || !all || len(e.ID) != 0 {
		t.Fatalf("after the NATS restart: %s", e.raw)
	}
	c.send(fmt.Sprintf(`{"command":"subscribe","all":true,"since":%d}`, position.Seq))
	c.expect("ack")
	if m := c.expect("UPDATE"); m.ProductID != p.ProductID || m.Version != 2 {
		t.Fatalf("resumed: %s", m.raw)
	}
}
