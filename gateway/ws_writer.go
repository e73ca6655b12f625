package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The writer side of a WebSocket connection. One goroutine per connection,
// the writer, owns every write of events and answers. It is started when
// something is queued and ends after writerIdle without anything to write,
// so a busy connection keeps it (no goroutine started per message) and an
// idle one costs no writer at all (BenchmarkIdleConnectionMemory). When
// several messages wait it writes them with one system call: the frames
// coder/websocket makes go into a per-connection buffer (the cork, under the
// library's buffered writer) and the writer sends the buffer when the batch
// is complete. A lone message goes out at once: nothing waits for company,
// except while the gateway is busy (coalesceSwitch): then a socket written
// less than WS_WRITE_COALESCE ago waits out the rest of it first.
// Pings come from a timer; the pong is awaited on the timer's goroutine, so
// that events never wait behind a round trip.

// Batch limits: a batch is sent when the outbox is empty, or after this
// many messages or bytes (so that one busy client does not hold a large
// buffer, and its first bytes leave early).
const (
	maxBatchMessages = 64
	maxBatchBytes    = 64 << 10
	// poolBufferLimit: larger batch buffers are not kept for reuse.
	poolBufferLimit = 256 << 10
	// writerIdle: a writer that has had nothing to write for between one
	// and two of these ends.
	writerIdle = 250 * time.Millisecond
)

// connWriter is the writer side of a wsConn.
type connWriter struct {
	cork *cork         // under coder/websocket's buffered writer
	wake chan struct{} // the outbox has work for the running writer
	quit chan struct{} // closed when the connection ends

	mu      sync.Mutex // guards running, closed and ping; wake is sent to under it
	running bool       // a writer goroutine runs
	closed  bool       // the connection is ending: start nothing more
	ping    *time.Timer
	tasks   sync.WaitGroup // the writer and a ping in flight

	// batch: the client asked for batched framing (ws_batch.go); events
	// collect in events and go out as one message per batch. batch is set
	// before the writer first runs; events is the writer's.
	batch  bool
	events eventArray

	// wrote is when the last writer last wrote, with WS_WRITE_COALESCE
	// set: the writers' (one at a time), kept across them so that a
	// writer started after an idle spell honours it too.
	wrote time.Time
}

// setUpWriter gives a new connection its outbox limits and metric hooks and
// the cork that smallBuffers put under the socket.
func (s *wsServer) setUpWriter(c *wsConn, sb *smallBuffers) {
	c.w.cork = sb.cork
	c.w.events.pool = s.batchBuffers
	c.w.wake = make(chan struct{}, 1)
	c.w.quit = make(chan struct{})
	c.outbox.SetConflation(s.cfg.conflation)
	c.outbox.OnConflate(s.metrics.eventsConflated, s.metrics.clientsConflated.Inc)
	c.outbox.OnReady(c.kick)
}

// kick is the outbox's ready hook, called when something is queued for an
// idle writer: it wakes the running writer or starts one.
func (c *wsConn) kick() {
	w := &c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
	case w.running:
		select { // under mu, so that a writer deciding to end sees it
		case w.wake <- struct{}{}:
		default:
		}
	default:
		w.running = true
		w.tasks.Add(1)
		go c.writeLoop()
	}
}

// startWriter arms the ping timer; stop ends the writer, the pings and the
// socket, and waits for them.
func (c *wsConn) startWriter() (stop func()) {
	c.w.mu.Lock()
	c.w.ping = time.AfterFunc(c.srv.cfg.pingInterval, c.pinger)
	c.w.mu.Unlock()
	return func() {
		c.w.mu.Lock()
		c.w.closed = true
		c.w.ping.Stop()
		c.w.mu.Unlock()
		close(c.w.quit)
		c.outbox.Close()
		c.ws.CloseNow() // a write stuck on a stalled socket returns
		c.w.tasks.Wait()
	}
}

// writeLoop writes what the outbox holds, and again whenever it is woken,
// until the connection ends or nothing has come for writerIdle.
func (c *wsConn) writeLoop() {
	defer c.w.tasks.Done()
	// A panic ends this connection (1011), not the process. The writer
	// stays marked running, so no other starts for a closing socket.
	defer c.srv.panics.recovered("websocket_writer", func() {
		_ = c.w.cork.flush() // whole frames only: the panic came between writes
		c.stop(websocket.StatusInternalError, "internal error", "panic")
	})
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	var coalesce *time.Timer // WS_WRITE_COALESCE, made on first use
	for {
		// Sooner than WS_WRITE_COALESCE after the last write (of this
		// writer or an earlier one): let more come, and write them
		// together.
		if d := c.srv.cfg.writeCoalesce - time.Since(c.w.wrote); c.srv.coalescing.Load() && d > 0 {
			if coalesce == nil {
				coalesce = time.NewTimer(d)
				defer coalesce.Stop()
			} else {
				coalesce.Reset(d)
			}
			select {
			case <-c.w.quit:
				return
			case <-coalesce.C:
			}
		}
		if !c.writeQueued() {
			return // the socket failed or is closing: stay "running", start no other
		}
		if c.srv.cfg.writeCoalesce > 0 {
			c.w.wrote = time.Now()
		}
		active := true
	wait:
		for {
			select {
			case <-c.w.quit:
				return
			case <-c.w.wake:
				break wait
			case <-idle.C:
				idle.Reset(writerIdle)
				if active { // wrote since the last tick
					active = false
					continue
				}
				if c.retire() {
					return
				}
				break wait // woken meanwhile
			}
		}
	}
}

// retire ends the writer unless a wake-up is pending.
func (c *wsConn) retire() bool {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	select {
	case <-c.w.wake:
		return false
	default:
		c.w.running = false
		return true
	}
}

// errSlow ends a batch whose oldest event waited past WS_SLOW_CLIENT_AFTER.
var errSlow = errors.New("too slow")

// writeQueued writes the outbox's messages until it is empty, each batch in
// one system call. It drops the client when an event waited past the slow
// bound or a write times out; false means the connection is finished.
func (c *wsConn) writeQueued() bool {
	slowAfter := c.srv.cfg.slowAfter
	for {
		c.w.cork.hold()
		n, emptied := 0, false
		var werr error
		now := time.Now()
		for n < maxBatchMessages && c.w.cork.buffered()+c.w.events.size() < maxBatchBytes {
			msg, queued, ok := c.outbox.Pop()
			if !ok {
				emptied = true
				break
			}
			if !queued.IsZero() && now.Sub(queued) > slowAfter {
				c.stop(closeTooSlow, "too slow: changes waited over "+slowAfter.String(), "slow")
				werr = errSlow
				break
			}
			if c.srv.cfg.onWrite != nil {
				c.srv.cfg.onWrite(msg)
			}
			n++
			if c.w.batch && !queued.IsZero() { // an event, for a batching client
				c.w.events.add(msg)
				c.srv.metrics.sent(msg, queued)
				continue
			}
			// An answer goes after the events queued before it.
			if err := c.w.events.write(c.ws); err != nil {
				werr = err
				break
			}
			// No deadline here: the frame only goes into the cork's
			// buffer. The write timeout applies to the socket write in
			// flush, and a context without one spares coder/websocket a
			// timer per message.
			if err := c.ws.Write(context.Background(), websocket.MessageText, msg); err != nil {
				werr = err
				break
			}
			c.srv.metrics.sent(msg, queued)
		}
		if werr == nil {
			werr = c.w.events.write(c.ws)
		}
		c.w.events.release()
		err := c.w.cork.flush()
		if n > 0 {
			c.srv.metrics.batchMessages.Observe(float64(n))
			c.srv.sentMessages.Add(int64(n))
		}
		if err != nil {
			// A deadline means the socket is stuck: no close frame can
			// get through. Record why even if the reader has ended first.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.reason.CompareAndSwap(nil, &closeReason{code: websocket.StatusPolicyViolation, text: "write timeout", metric: "write_timeout"})
			}
			c.ws.CloseNow()
			return false
		}
		if werr != nil {
			return false // closing: the close frame, if any, went out with the flush
		}
		if emptied {
			return true
		}
	}
}

// pinger pings the client from the ping timer and re-arms it; a ping that
// gets no pong within the write timeout drops the client.
func (c *wsConn) pinger() {
	c.w.mu.Lock()
	if c.w.closed {
		c.w.mu.Unlock()
		return
	}
	c.w.tasks.Add(1)
	c.w.mu.Unlock()
	defer c.w.tasks.Done()
	defer c.srv.panics.recovered("websocket_pinger", func() {
		c.stop(websocket.StatusInternalError, "internal error", "panic")
	})
	// No parent context: the connection's end (CloseNow) ends the ping.
	pctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.writeTimeout)
	err := c.ws.Ping(pctx)
	timedOut := errors.Is(pctx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		if timedOut {
			c.reason.CompareAndSwap(nil, &closeReason{code: websocket.StatusPolicyViolation, text: "ping timeout", metric: "ping_timeout"})
			c.ws.CloseNow()
		}
		return
	}
	c.w.mu.Lock()
	if !c.w.closed {
		c.w.ping.Reset(c.srv.cfg.pingInterval)
	}
	c.w.mu.Unlock()
}

// cork is the writer under coder/websocket's buffered writer. While the
// connection's writer holds it, the frames coder/websocket writes collect
// in a buffer that flush sends with one system call; otherwise (pongs and
// close frames written by other goroutines between batches) writes go
// straight to the socket. Every socket write gets the write timeout as its
// deadline. Safe for concurrent use: coder/websocket serialises its frames,
// and the mutex orders them against flush.
type cork struct {
	conn    net.Conn
	timeout time.Duration
	pool    *sync.Pool // of *[]byte

	mu   sync.Mutex
	held bool
	buf  *[]byte // from pool while held
}

// hold starts a batch.
func (k *cork) hold() {
	k.mu.Lock()
	k.held = true
	k.mu.Unlock()
}

// buffered returns how many bytes the batch holds.
func (k *cork) buffered() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.buf == nil {
		return 0
	}
	return len(*k.buf)
}

// Write takes a frame's bytes from coder/websocket's buffered writer.
func (k *cork) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.held {
		if k.buf == nil {
			k.buf = k.pool.Get().(*[]byte)
		}
		*k.buf = append(*k.buf, p...)
		return len(p), nil
	}
	if err := k.conn.SetWriteDeadline(time.Now().Add(k.timeout)); err != nil {
		return 0, err
	}
	return k.conn.Write(p)
}

// flush ends the batch: what it holds goes to the socket in one write.
func (k *cork) flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.held = false
	if k.buf == nil {
		return nil
	}
	b := *k.buf
	var err error
	if len(b) > 0 {
		if err = k.conn.SetWriteDeadline(time.Now().Add(k.timeout)); err == nil {
			_, err = k.conn.Write(b)
		}
	}
	if cap(b) <= poolBufferLimit {
		*k.buf = b[:0]
		k.pool.Put(k.buf)
	}
	k.buf = nil
	return err
}

// newBatchPool returns the pool of batch buffers the corks share; a buffer
// is taken for a batch and given back after it, so idle connections hold
// none.
func newBatchPool() *sync.Pool {
	return &sync.Pool{New: func() any {
		b := make([]byte, 0, 4096)
		return &b
	}}
}

// socketReadBufferSize is the read buffer of an upgraded socket. net/http
// hands a hijacked connection 4 KiB buffers each way, which an idle socket
// would keep for its whole life; client commands are small.
const socketReadBufferSize = 512

// socketWriteBufferSize is coder/websocket's write buffer: the cork under
// it does the buffering, so it only has to hold a frame header (at most 10
// bytes from a server) before the payload passes through.
const socketWriteBufferSize = 16

// smallBuffers gives coder/websocket small buffers instead of net/http's
// (two thirds of a socket's idle heap otherwise; BenchmarkIdleConnectionMemory,
// BENCHMARKS.md) and puts the cork under its writer.
type smallBuffers struct {
	http.ResponseWriter
	writeTimeout time.Duration
	pool         *sync.Pool
	cork         *cork // set by Hijack
}

// Hijack takes the connection over, keeping the bytes net/http had already
// read (a client may send its first command right after the handshake).
func (w *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot be hijacked")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered())
	pending := bytes.Clone(buffered)
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	// The pending bytes must sit in the new reader's buffer, not behind it:
	// coder/websocket re-points the reader at the bare connection, keeping
	// only what is buffered.
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pending), conn), max(socketReadBufferSize, len(pending)))
	if len(pending) > 0 {
		if _, err := br.Peek(len(pending)); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	w.cork = &cork{conn: conn, timeout: w.writeTimeout, pool: w.pool}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(w.cork, socketWriteBufferSize)), nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *smallBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// coalesceSample is how often Serve samples the gateway's message rate for
// coalesceSwitch.
const coalesceSample = 100 * time.Millisecond

// coalesceSwitch turns write coalescing on while the gateway sends many
// messages a second: a write costs a system call and a writer wake-up per
// socket, which matters when there are very many of them (S2: 200,000 a
// second on 2 cores), while the wait it adds (up to WS_WRITE_COALESCE)
// buys nothing at lower rates (S4: 20,000 a second). It counts messages,
// which coalescing does not change, not writes, which it does (counting
// writes would turn it off by its own effect). On at WS_WRITE_COALESCE_ABOVE
// messages a second, off below half of that. Owned by Serve's goroutine.
type coalesceSwitch struct {
	above  float64   // messages a second
	on     bool      // coalescing now
	last   int64     // the message count at lastAt
	lastAt time.Time // zero before the first sample
}

// update takes the message count total at now and returns whether to
// coalesce.
func (sw *coalesceSwitch) update(now time.Time, total int64) bool {
	if !sw.lastAt.IsZero() {
		if dt := now.Sub(sw.lastAt).Seconds(); dt > 0 {
			rate := float64(total-sw.last) / dt
			if sw.on {
				sw.on = rate >= sw.above/2
			} else {
				sw.on = rate >= sw.above
			}
		}
	}
	sw.last, sw.lastAt = total, now
	return sw.on
}
