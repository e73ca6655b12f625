package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// bigEvent is a change event as the trigger would build it, padded to make
// socket buffers fill quickly.
func bigEvent(id, version int64, pad string) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"action":"UPDATE","productId":%d,"version":%d,"changedAt":"%s","product":{"productId":%d,"manufacturer":"M","productName":"%s","pricePerUnit":"1EUR","unitsAvailable":1,"version":%d,"updatedAt":"%s"}}`,
		version, id, version, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), id, pad, version, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"))
}

// TestStalledClient: a client that never reads sits next to readers. The
// readers get every product's last version, in increasing order; the
// stalled one is conflated, then dropped; its queue never holds more than
// one event per product.
func TestStalledClient(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) {
		// Only the write timeout drops the stalled client here; readers on a
		// busy test machine must not count as slow, nor be dropped by a
		// 64 KiB batch that waited a second or two for their goroutine.
		c.WSWriteTimeout, c.WSSlowClientAfter = 6*time.Second, time.Minute
	})
	const products, rounds, readers = 200, 4, 3
	ids := make([]string, products)
	for i := range ids {
		ids[i] = fmt.Sprint(i + 1)
	}
	subscribe := `{"command":"subscribe","productIDs":[` + strings.Join(ids, ",") + `]}`

	// The stalled client has a tiny receive buffer, so that its socket
	// stops taking data after a few events, as a stuck browser's would.
	tinyBuffer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	stalled := g.dialWith(t, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: tinyBuffer.DialContext}}})
	stalled.send(subscribe) // and never reads again
	var clients []*wsClient
	for range readers {
		c := g.dial(t, nil)
		c.validator = nil // these readers must keep up; other tests check the messages
		c.send(subscribe)
		c.expect("ack")
		clients = append(clients, c)
	}
	testenv.WaitUntil(t, 10*time.Second, "all subscriptions", func() bool { return testutil.ToFloat64(g.g.ws.metrics.subscriptions) == products*(readers+1) })

	pad := strings.Repeat("x", 16000) // a round of 200 × 16 KB is nearly the 4 MB a socket buffers
	var wg sync.WaitGroup
	errs := make(chan string, readers)
	for _, c := range clients {
		wg.Go(func() {
			last := map[int64]int64{}
			done := 0
			for done < products {
				m, err := c.read()
				if err != nil {
					errs <- err.Error()
					return
				}
				if m.Action != "UPDATE" {
					continue
				}
				if m.Version <= last[m.ProductID] {
					errs <- fmt.Sprintf("product %d: version %d after %d", m.ProductID, m.Version, last[m.ProductID])
					return
				}
				last[m.ProductID] = m.Version
				if m.Version == rounds {
					done++
				}
			}
		})
	}
	for v := int64(1); v <= rounds; v++ {
		for id := int64(1); id <= products; id++ {
			if err := g.nc.Publish(change.Subject(id), bigEvent(id, v, pad)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	dropped := func() float64 {
		return testutil.ToFloat64(g.g.ws.metrics.dropped.WithLabelValues("write_timeout")) +
			testutil.ToFloat64(g.g.ws.metrics.dropped.WithLabelValues("slow"))
	}
	testenv.WaitUntil(t, 10*time.Second, "the stalled client to be dropped", func() bool { return dropped() == 1 })
	if testutil.ToFloat64(g.g.ws.metrics.conflated) == 0 {
		t.Error("nothing was conflated for the stalled client")
	}
	if q := g.g.ws.queued(); q > products {
		t.Errorf("%v messages queued, more than one per watched product", q)
	}
	testenv.WaitUntil(t, 10*time.Second, "its subscriptions to go", func() bool {
		return testutil.ToFloat64(g.g.ws.metrics.subscriptions) == products*readers
	})
}

// TestPingTimeout: a client that never answers pings (it never reads, so
// its WebSocket library never sends the pong) is dropped.
func TestPingTimeout(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) {
		c.WSPingInterval, c.WSWriteTimeout = 100*time.Millisecond, 300*time.Millisecond
	})
	mute := g.dial(t, nil)
	mute.send(`{"command":"unsubscribe","productIDs":[1]}`) // then never reads
	testenv.WaitUntil(t, 10*time.Second, "the mute client to be dropped", func() bool {
		return testutil.ToFloat64(g.g.ws.metrics.dropped.WithLabelValues("ping_timeout")) == 1
	})
	testenv.WaitUntil(t, 10*time.Second, "its connection to be counted out", func() bool {
		return testutil.ToFloat64(g.g.ws.metrics.connections) == 0
	})
}
