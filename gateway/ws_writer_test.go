package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestBurstEveryVersion: clients that keep up get every one of 2,000
// versions of a product published in bursts of 100 (10,000 a second), in
// order; nothing is conflated. The bounds are wider than the defaults
// (250 ms, 1,024 events): under -race on a busy shared machine the test's
// own clients lag more than that, and then conflation is right.
func TestBurstEveryVersion(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) { c.WSConflateAfter, c.WSConflateMaxEvents = 5*time.Second, 4096 })
	const clients, versions = 3, 2000
	var readers []*wsClient
	for range clients {
		c := g.dial(t, nil)
		c.validator = nil // 6,000 messages; other tests check the schema
		c.send(`{"command":"subscribe","productIDs":[1]}`)
		c.expect("ack")
		readers = append(readers, c)
	}
	// No wait for the hub here: the ack is written only once the
	// subscription is registered, so the burst published after it reaches
	// every client.
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for _, c := range readers {
		wg.Go(func() {
			for want := int64(1); want <= versions; want++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, data, err := c.ws.Read(ctx)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				if id, v := productAndVersion(data); id != 1 || v != want {
					errs <- fmt.Errorf("got product %d version %d, want version %d: a client that keeps up gets every version in order", id, v, want)
					return
				}
			}
		})
	}
	tick := time.NewTicker(10 * time.Millisecond) // the burst rate
	defer tick.Stop()
	for v := int64(1); v <= versions; v++ {
		if err := g.nc.Publish(change.Subject(1), event(1, v)); err != nil {
			t.Fatal(err)
		}
		if v%100 == 0 {
			<-tick.C
		}
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m := g.g.ws.metrics
	if n := testutil.ToFloat64(m.conflated); n != 0 {
		t.Errorf("%v events conflated for clients that keep up", n)
	}
	writes, msgs := histogram(t, m.batchMessages)
	t.Logf("%d messages in %d socket writes (%.1f per write)", msgs, writes, float64(msgs)/float64(max(writes, 1)))
	if msgs < clients*versions {
		t.Errorf("the batch histogram counts %d messages, want at least %d", msgs, clients*versions)
	}
}

// event is a small change event of product id at version v.
func event(id, v int64) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"action":"UPDATE","productId":%d,"version":%d,"changedAt":"%s","product":{"productId":%d,"version":%d}}`,
		v, id, v, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), id, v)
}

// histogram returns a histogram's sample count and sum.
func histogram(t testing.TB, h prometheus.Histogram) (count uint64, sum int) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), int(m.GetHistogram().GetSampleSum())
}

// TestSlowClientConflatedThenDropped: a client that reads, but far slower
// than its products change, is conflated (its queue holds at most one event
// per watched product, each newer than what it got before) and, once its
// changes wait longer than WS_SLOW_CLIENT_AFTER, dropped with 4008.
func TestSlowClientConflatedThenDropped(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) {
		c.WSConflateAfter, c.WSSlowClientAfter, c.WSWriteTimeout = 50*time.Millisecond, 300*time.Millisecond, time.Minute
	})
	const products = 10
	slow := g.dialWith(t, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: tinyReceiveBuffer().DialContext}}})
	slow.validator = nil
	slow.send(`{"command":"subscribe","productIDs":[1,2,3,4,5,6,7,8,9,10]}`)
	slow.expect("ack")

	// The client reads one message every 20 ms: about 800 KB/s of 16 KB
	// events, while ten products change 100 times a second. Once the
	// gateway's send buffer is full, a socket write waits until the client
	// has read half of it (Linux wakes a blocked writer then): that is
	// longer than WS_SLOW_CLIENT_AFTER, so the next batch finds its events
	// too old.
	type result struct {
		got      int
		backward string
		closeErr error
	}
	res := make(chan result, 1)
	go func() {
		var r result
		last := map[int64]int64{}
		tick := time.NewTicker(20 * time.Millisecond) // the client's pace, not synchronisation
		defer tick.Stop()
		for {
			_, data, err := slow.ws.Read(context.Background())
			if err != nil {
				r.closeErr = err
				res <- r
				return
			}
			id, v := productAndVersion(data)
			if v <= last[id] && r.backward == "" {
				r.backward = fmt.Sprintf("product %d: version %d after %d", id, v, last[id])
			}
			last[id] = v
			r.got++
			<-tick.C
		}
	}()

	pad := strings.Repeat("x", 16000)
	m := g.g.ws.metrics
	dropped := func() bool { return testutil.ToFloat64(m.dropped.WithLabelValues("slow")) == 1 }
	maxQueued := 0.0
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond) // the publisher's rate
	defer tick.Stop()
	v := int64(1)
	for ; !dropped(); v++ {
		if time.Now().After(deadline) {
			t.Fatal("the slow client was not dropped within 30 s")
		}
		for id := int64(1); id <= products; id++ {
			if err := g.nc.Publish(change.Subject(id), bigEvent(id, v, pad)); err != nil {
				t.Fatal(err)
			}
		}
		maxQueued = max(maxQueued, conflatedQueue(g.g.ws))
		<-tick.C
	}
	r := <-res
	if websocket.CloseStatus(r.closeErr) != closeTooSlow {
		t.Errorf("closed with %v, want %d (too slow)", r.closeErr, closeTooSlow)
	}
	if r.backward != "" {
		t.Error(r.backward)
	}
	if maxQueued > products {
		t.Errorf("%v events queued for a conflated client watching %d products", maxQueued, products)
	}
	if testutil.ToFloat64(m.conflated) == 0 || testutil.ToFloat64(m.clientsConflated) == 0 {
		t.Errorf("conflated %v events of %v clients, want some", testutil.ToFloat64(m.conflated), testutil.ToFloat64(m.clientsConflated))
	}
	t.Logf("%d rounds published; the slow client read %d messages; at most %v queued while conflated", v, r.got, maxQueued)
}

// conflatedQueue returns the longest queue of a conflated connection.
func conflatedQueue(s *wsServer) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	longest := 0
	for c := range s.conns {
		if c.outbox.Conflating() {
			longest = max(longest, c.outbox.Len())
		}
	}
	return float64(longest)
}

// countingConn counts the writes that reach a real socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestCork: while held, writes collect and flush sends them with one
// socket write; otherwise they go straight through; a socket that takes
// nothing fails the flush with a deadline error after the write timeout.
func TestCork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()
	conn := &countingConn{Conn: server}
	k := &cork{conn: conn, timeout: 200 * time.Millisecond, pool: newBatchPool()}

	k.hold()
	for _, part := range []string{"one,", "two,", "three."} {
		if _, err := k.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	if conn.writes.Load() != 0 || k.buffered() != len("one,two,three.") {
		t.Fatalf("%d socket writes, %d bytes held while corked", conn.writes.Load(), k.buffered())
	}
	if err := k.flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Write([]byte("pong")); err != nil { // not held: straight through
		t.Fatal(err)
	}
	if n := conn.writes.Load(); n != 2 {
		t.Errorf("%d socket writes, want 2 (one batch, one pass-through)", n)
	}
	got := make([]byte, len("one,two,three.pong"))
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "one,two,three.pong" {
		t.Fatalf("the peer read %q, %v", got, err)
	}

	// The client stops reading: batches pile up in the socket buffers
	// until one cannot be written within the timeout.
	big := make([]byte, 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("a socket nobody reads took batches for 10 s without a deadline error")
		}
		k.hold()
		_, _ = k.Write(big)
		if err := k.flush(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("flush to a stalled socket: %v, want a deadline error", err)
			}
			break
		}
	}
}

// TestWriterRetiresAndRestarts: an idle connection's writer ends, and the
// next change starts another that delivers it.
func TestWriterRetiresAndRestarts(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	c := g.dial(t, nil)
	c.send(`{"command":"subscribe","productIDs":[7]}`)
	c.expect("ack")
	running := func() (n int) {
		s := g.g.ws
		s.mu.Lock()
		defer s.mu.Unlock()
		for conn := range s.conns {
			conn.w.mu.Lock()
			if conn.w.running {
				n++
			}
			conn.w.mu.Unlock()
		}
		return n
	}
	for round := int64(1); round <= 2; round++ {
		testenv.WaitUntil(t, 10*time.Second, "the idle writer to end", func() bool { return running() == 0 })
		if err := g.nc.Publish(change.Subject(7), bigEvent(7, round, "p")); err != nil {
			t.Fatal(err)
		}
		if m := c.next(); m.ProductID != 7 || m.Version != round {
			t.Fatalf("got product %d version %d, want 7 version %d", m.ProductID, m.Version, round)
		}
	}
}
