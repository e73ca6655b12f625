package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/productwatch/productwatch/api/apitest"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestBatchedFraming: under a burst, a client that opened
// /websocket?batch=1 gets every version in order in far fewer messages
// (JSON arrays of the events, as asyncapi.yaml's EventBatch says), its
// answers as messages of their own; a client without the parameter on the
// same product gets one event per message, as before.
func TestBatchedFraming(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) { c.WSConflateAfter, c.WSConflateMaxEvents = time.Minute, 4096 })
	// The writers wait at their first event until the whole burst is
	// queued, so that the batching is certain, not a matter of timing.
	gate := make(chan struct{})
	var gateOnce sync.Once
	t.Cleanup(func() { gateOnce.Do(func() { close(gate) }) })
	g.g.ws.cfg.onWrite = func(msg []byte) { // set before any socket exists
		if bytes.Contains(msg, []byte(`"action"`)) {
			<-gate
		}
	}
	batching := dialQuery(t, g, "batch=1")
	plain := g.dial(t, nil)
	for _, c := range []*wsClient{batching, plain} {
		c.send(`{"command":"subscribe","productIDs":[1]}`)
		c.expect("ack")
	}
	const versions = 300
	for v := int64(1); v <= versions; v++ {
		if err := g.nc.Publish(change.Subject(1), fullEvent(1, v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Each writer holds version 1; the rest wait in the outboxes.
	testenv.WaitUntil(t, 10*time.Second, "the burst queued for both clients", func() bool { return g.g.ws.queued() == 2*(versions-1) })
	// A command while events wait: its ack is a message of its own.
	batching.send(`{"command":"subscribe","productIDs":[2],"id":"late"}`)
	testenv.WaitUntil(t, 10*time.Second, "the ack queued", func() bool { return g.g.ws.queued() == 2*(versions-1)+1 })
	gateOnce.Do(func() { close(gate) })

	validator := apitest.NewMessageValidator(t)
	messages, arrays, acks := 0, 0, 0
	for want := int64(1); want <= versions; {
		data := readRaw(t, batching)
		messages++
		validator.CheckServerMessage(t, data)
		var events []json.RawMessage
		switch {
		case data[0] == '[':
			arrays++
			if err := json.Unmarshal(data, &events); err != nil {
				t.Fatalf("batch %s: %v", data, err)
			}
			if len(events) < 2 || len(events) > maxBatchMessages {
				t.Errorf("a batch of %d events, want 2..%d", len(events), maxBatchMessages)
			}
		case bytes.Contains(data, []byte(`"type":"ack"`)):
			acks++
			if !bytes.Contains(data, []byte(`"id":"late"`)) {
				t.Errorf("unexpected answer %s", data)
			}
			continue
		default:
			events = []json.RawMessage{data}
		}
		for _, ev := range events {
			if id, v := productAndVersion(ev); id != 1 || v != want {
				t.Fatalf("got product %d version %d, want version %d: every version, in order", id, v, want)
			}
			if !bytes.Equal(ev, fullEvent(1, want)) {
				t.Fatalf("event %s is not the published bytes %s", ev, fullEvent(1, want))
			}
			want++
		}
	}
	if acks == 0 {
		if data := readRaw(t, batching); !bytes.Contains(data, []byte(`"id":"late"`)) {
			t.Errorf("got %s, want the ack of the late subscribe", data)
		}
	}
	t.Logf("batching client: %d versions in %d messages (%d arrays)", versions, messages-acks, arrays)
	if arrays == 0 || messages-acks > versions/10 {
		t.Errorf("%d versions came in %d messages (%d arrays): want them batched", versions, messages-acks, arrays)
	}

	for want := int64(1); want <= versions; want++ {
		data := readRaw(t, plain)
		if data[0] != '{' {
			t.Fatalf("a client that did not ask for batches got %s", data)
		}
		if id, v := productAndVersion(data); id != 1 || v != want {
			t.Fatalf("plain client: got product %d version %d, want version %d", id, v, want)
		}
	}
}

// TestBatchedFramingLoneEvent: a batching client's lone event comes at
// once, as the plain object.
func TestBatchedFramingLoneEvent(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	c := dialQuery(t, g, "batch=true")
	c.send(`{"command":"subscribe","productIDs":[7]}`)
	c.expect("ack")
	for v := int64(1); v <= 3; v++ {
		if err := g.nc.Publish(change.Subject(7), fullEvent(7, v)); err != nil {
			t.Fatal(err)
		}
		// One at a time: each is alone in the queue when the writer looks.
		data := readRaw(t, c)
		if !bytes.Equal(data, fullEvent(7, v)) {
			t.Fatalf("got %s, want the lone event as it was published", data)
		}
	}
}

// TestBatchParameter: the batch parameter's values, and a clear refusal
// (400 invalid_parameter, before the upgrade) for anything else.
func TestBatchParameter(t *testing.T) {
	for _, tc := range []struct {
		query   string
		on, bad bool
	}{
		{"", false, false},
		{"batch=0", false, false},
		{"batch=false", false, false},
		{"batch=1", true, false},
		{"batch=true", true, false},
		{"batch", true, false},
		{"batch=yes", false, true},
		{"batch=2", false, true},
	} {
		t.Run(tc.query, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			on, refusal := batchParam(q)
			if on != tc.on || (refusal != nil) != tc.bad {
				t.Errorf("batchParam(%q) = %v, %v; want %v, refused %v", tc.query, on, refusal, tc.on, tc.bad)
			}
		})
	}

	g := newWSGateway(t, nil, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket?batch=please", nil)
	if err == nil {
		t.Fatal("a bad batch value was accepted")
	}
	if res == nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("got %v (%v), want 400", res, err)
	}
	var body struct {
		Error struct{ Code, Field, Message string } `json:"error"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Error.Code != codeInvalidParameter || body.Error.Field != "batch" || body.Error.Message == "" {
		t.Errorf("error body %+v, want invalid_parameter on batch with a message", body.Error)
	}
}

// TestEventArrayAllocations: collecting and releasing a batch allocates
// nothing once the pool holds a buffer.
func TestEventArrayAllocations(t *testing.T) {
	a := eventArray{pool: newBatchPool()}
	ev := fullEvent(1, 1)
	a.add(ev)
	a.release()
	allocs := testing.AllocsPerRun(100, func() {
		for range 10 {
			a.add(ev)
		}
		if a.size() == 0 {
			t.Fatal("empty")
		}
		a.release()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
}

// dialQuery opens /websocket?query on g.
func dialQuery(t *testing.T, g *wsGateway, query string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket?"+query, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &wsClient{t: t, ws: ws, validator: apitest.NewMessageValidator(t)}
}

// readRaw reads the next message's bytes (10 s at most).
func readRaw(t *testing.T, c *wsClient) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, data, err := c.ws.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return data
}

// fullEvent is a change event of product id at version v that matches
// asyncapi.yaml's ChangeEvent (the whole product).
func fullEvent(id, v int64) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"action":"UPDATE","productId":%d,"version":%d,"changedAt":"2026-11-25T01:02:03.456789Z",`+
		`"product":{"productId":%d,"manufacturer":"Apple","productName":"MacBook","pricePerUnit":"500EUR","unitsAvailable":%d,"version":%d,"updatedAt":"2026-11-25T01:02:03.456789Z"}}`,
		v, id, v, id, v%100, v)
}

// TestWriteCoalesce: with WS_WRITE_COALESCE (and WS_WRITE_COALESCE_ABOVE 0:
// always), a connection writes at most
// once per interval: events that come sooner after a write wait and go
// together, here as one batch (batched framing) of all five, although the
// writer retired meanwhile (an idle spell) and a new one wrote them.
func TestWriteCoalesce(t *testing.T) {
	t.Parallel()
	const interval = 2 * time.Second
	g := newWSGateway(t, nil, nil, func(c *Config) { c.WSWriteCoalesce, c.WSWriteCoalesceAbove = interval, 0 })
	c := dialQuery(t, g, "batch=1")
	c.send(`{"command":"subscribe","productIDs":[9]}`)
	c.expect("ack") // the first write: at once
	publish := func(from, to int64) {
		for v := from; v <= to; v++ {
			if err := g.nc.Publish(change.Subject(9), fullEvent(9, v)); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// The first event waits (written at once, it would not be seen
	// queued), then the others join it.
	publish(1, 1)
	testenv.WaitUntil(t, interval, "the first event waiting in the queue", func() bool { return g.g.ws.queued() == 1 })
	publish(2, 5)
	testenv.WaitUntil(t, interval, "all five waiting", func() bool { return g.g.ws.queued() == 5 })
	data := readRaw(t, c)
	var events []json.RawMessage
	if data[0] != '[' || json.Unmarshal(data, &events) != nil || len(events) != 5 {
		t.Fatalf("got %s, want the five events in one batch, written %v after the ack", data, interval)
	}
	for i, ev := range events {
		if !bytes.Equal(ev, fullEvent(9, int64(i+1))) {
			t.Fatalf("event %d is %s", i, ev)
		}
	}
}

// TestCoalesceSwitch: coalescing turns on at WS_WRITE_COALESCE_ABOVE
// messages a second and off below half of it, by the rate between samples.
func TestCoalesceSwitch(t *testing.T) {
	sw := coalesceSwitch{above: 1000}
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var total int64
	var got []bool
	for _, perTenth := range []int64{0, 50, 99, 100, 60, 50, 49, 99, 100, 0} { // messages per 100 ms
		total += perTenth
		at = at.Add(100 * time.Millisecond)
		got = append(got, sw.update(at, total))
	}
	// The first sample has no rate yet; 990/s stays off, 1,000/s turns it
	// on, 600 and 500/s keep it, 490/s turns it off, 990/s does not turn
	// it on again, 1,000/s does, silence ends it.
	if want := "[false false false true true true false false true false]"; fmt.Sprint(got) != want {
		t.Errorf("coalescing %v, want %s", got, want)
	}
}

// TestCoalescingFollowsTheRate: with WS_WRITE_COALESCE_ABOVE, the gateway
// turns coalescing on while it sends that many messages a second (here a
// client reading bursts of events) and off once they stop.
func TestCoalescingFollowsTheRate(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) { c.WSWriteCoalesce, c.WSWriteCoalesceAbove = 5*time.Millisecond, 200 })
	if g.g.ws.coalescing.Load() {
		t.Fatal("coalescing before any message")
	}
	c := g.dial(t, nil)
	c.send(`{"command":"subscribe","productIDs":[3]}`)
	c.expect("ack")
	v := int64(0)
	deadline := time.Now().Add(20 * time.Second)
	for !g.g.ws.coalescing.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("no coalescing after %d messages", v)
		}
		for range 50 { // a burst, read to the end: 50 messages in far less than 100 ms
			v++
			if err := g.nc.Publish(change.Subject(3), fullEvent(3, v)); err != nil {
				t.Fatal(err)
			}
		}
		for want := v - 49; want <= v; want++ {
			if _, got := productAndVersion(readRaw(t, c)); got != want {
				t.Fatalf("version %d, want %d", got, want)
			}
		}
	}
	testenv.WaitUntil(t, 10*time.Second, "coalescing off once the messages stop", func() bool { return !g.g.ws.coalescing.Load() })
}
