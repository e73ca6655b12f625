package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/productwatch/productwatch/pkg/protocol"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// panicCount reads productwatch_gateway_panics_total{where}.
func panicCount(g *wsGateway, where string) float64 {
	return testutil.ToFloat64(g.g.ws.panics.total.WithLabelValues(where))
}

// TestReaderPanicEndsOnlyItsConnection: a panic on a socket's reader
// closes that socket with 1011, is counted, gives its subscriptions back,
// and the process and the other sockets carry on.
func TestReaderPanicEndsOnlyItsConnection(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	g.g.ws.cfg.onCommand = func(cmd protocol.Command) { // set before any socket exists
		if len(cmd.ProductIDs) > 0 && cmd.ProductIDs[0] == 666 {
			panic("reader exploded")
		}
	}
	p := g.create(t, macbook)
	seq := g.relay(t, 0)
	other := g.dial(t, nil)
	other.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, p.ProductID))
	other.expect("ack")

	victim := g.dial(t, nil)
	victim.send(`{"command":"subscribe","productIDs":[1,2,3]}`)
	victim.expect("ack")
	victim.send(`{"command":"subscribe","productIDs":[666]}`)
	if code := victim.closed(); code != websocket.StatusInternalError {
		t.Errorf("close code %v, want 1011", code)
	}
	testenv.WaitUntil(t, 10*time.Second, "the panic to be counted and its subscriptions to go", func() bool {
		return panicCount(g, "websocket_reader") == 1 && testutil.ToFloat64(g.g.ws.metrics.subscriptions) == 1
	})
	g.write(t, "PATCH", fmt.Sprintf("/products/%d", p.ProductID), `{"unitsAvailable":2}`)
	g.relay(t, seq)
	if m := other.expect("UPDATE"); m.Version != 2 {
		t.Errorf("the other socket got %s", m.raw)
	}
}

// panicky is a hub subscriber whose Deliver panics.
type panicky struct{}

func (panicky) Deliver(int64, int64, []byte) { panic("deliver exploded") }

// TestResyncerSurvivesPanic: a panic in a re-sync round is recovered and
// counted; the round is retried and the re-syncer goes on serving.
func TestResyncerSurvivesPanic(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	p := g.create(t, macbook)
	c := g.dial(t, nil)
	c.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, p.ProductID))
	c.expect("ack")
	if err := g.g.hub.Subscribe(t.Context(), panicky{}, []int64{p.ProductID}); err != nil {
		t.Fatal(err)
	}
	g.g.resyncer.queue.requestAll()
	testenv.WaitUntil(t, 10*time.Second, "the re-syncer's panic to be counted", func() bool { return panicCount(g, "resyncer") >= 1 })
	g.g.hub.Unsubscribe(panicky{}, []int64{p.ProductID})
	// The re-syncer still serves: a change that never went through NATS
	// reaches the client by the next re-sync.
	g.write(t, "PATCH", fmt.Sprintf("/products/%d", p.ProductID), `{"unitsAvailable":2}`)
	g.g.resyncer.queue.requestAll()
	for {
		m := c.next()
		if m.ProductID != p.ProductID || m.Action != "SNAPSHOT" {
			t.Fatalf("after the panic: %s", m.raw)
		}
		if m.Version == 2 {
			break
		}
	}
}

// TestWriterPanicEndsOnlyItsConnection: a panic on a socket's writer
// closes that socket with 1011 and is counted; the other sockets carry on.
func TestWriterPanicEndsOnlyItsConnection(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	g.g.ws.cfg.onWrite = func(msg []byte) { // set before any socket exists
		if bytes.Contains(msg, []byte("Explosive")) {
			panic("writer exploded")
		}
	}
	calm := g.create(t, macbook)
	hot := g.create(t, strings.Replace(macbook, "MacBook Pro", "Explosive", 1))
	seq := g.relay(t, 0)
	other := g.dial(t, nil)
	other.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, calm.ProductID))
	other.expect("ack")

	victim := g.dial(t, nil)
	victim.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d],"snapshot":true}`, hot.ProductID))
	if code := victim.closed(); code != websocket.StatusInternalError {
		t.Errorf("close code %v, want 1011", code)
	}
	testenv.WaitUntil(t, 10*time.Second, "the writer's panic to be counted", func() bool { return panicCount(g, "websocket_writer") == 1 })
	g.write(t, "PATCH", fmt.Sprintf("/products/%d", calm.ProductID), `{"unitsAvailable":2}`)
	g.relay(t, seq)
	if m := other.expect("UPDATE"); m.Version != 2 {
		t.Errorf("the other socket got %s", m.raw)
	}
}
