package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// kick is the outbox's ready hook: it starts a drain goroutine unless one
// runs or the connection is ending.
func (c *wsConn) kick() {
	c.wmu.Lock()
	if c.writing || c.closed {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	c.writers.Add(1)
	c.wmu.Unlock()
	go c.drain()
}

// drain writes what the outbox holds and ends when it is empty. It drops
// the client when a write times out or an event has waited too long.
func (c *wsConn) drain() {
	defer c.writers.Done()
	ctx := c.writeCtx
	for {
		msg, queued, ok := c.outbox.Pop()
		if !ok {
			c.wmu.Lock()
			// Something queued after Pop found nothing saw writing set and
			// started nothing: look again before leaving.
			if c.closed || c.outbox.Len() == 0 {
				c.writing = false
				c.wmu.Unlock()
				return
			}
			c.wmu.Unlock()
			continue
		}
		if ctx.Err() != nil {
			c.wmu.Lock()
			c.writing = false
			c.wmu.Unlock()
			return
		}
		if !queued.IsZero() && time.Since(queued) > c.srv.cfg.slowAfter {
			c.stop(closeTooSlow, "too slow: changes waited over "+c.srv.cfg.slowAfter.String(), "slow")
			c.wmu.Lock()
			c.writing = false
			c.wmu.Unlock()
			return
		}
		wctx, cancel := context.WithTimeout(ctx, c.srv.cfg.writeTimeout)
		err := c.ws.Write(wctx, websocket.MessageText, msg)
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
		cancel()
		if err != nil {
			// A deadline (not a cancel) means the socket is stuck: no close
			// frame can get through. coder/websocket closed it already, so
			// the reader may have ended first: record the reason even if
			// ctx is cancelled by now.
			if timedOut {
				c.reason.CompareAndSwap(nil, &closeReason{code: websocket.StatusPolicyViolation, text: "write timeout", metric: "write_timeout"})
				c.ws.CloseNow()
			}
			c.wmu.Lock()
			c.writing = false
			c.wmu.Unlock()
			return
		}
		c.srv.metrics.sent(msg, queued)
	}
}

// pinger pings the client from the ping timer and re-arms it; a ping that
// gets no pong within the write timeout drops the client.
func (c *wsConn) pinger() {
	c.wmu.Lock()
	if c.closed {
		c.wmu.Unlock()
		return
	}
	c.writers.Add(1)
	c.wmu.Unlock()
	defer c.writers.Done()
	pctx, cancel := context.WithTimeout(c.writeCtx, c.srv.cfg.writeTimeout)
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
	c.wmu.Lock()
	if !c.closed {
		c.ping.Reset(c.srv.cfg.pingInterval)
	}
	c.wmu.Unlock()
}

// socketBufferSize is the read and write buffer of an upgraded socket.
// net/http hands a hijacked connection 4 KiB buffers each way, which an idle
// socket would keep for its whole life; client commands are small, and
// events larger than the write buffer bypass it anyway.
const socketBufferSize = 512

// smallBuffers gives coder/websocket socketBufferSize buffers instead of
// net/http's: two thirds of a socket's idle heap otherwise
// (BenchmarkIdleConnectionMemory, BENCHMARKS.md).
type smallBuffers struct{ http.ResponseWriter }

// Hijack takes the connection over, keeping the bytes net/http had already
// read (a client may send its first command right after the handshake).
func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
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
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pending), conn), max(socketBufferSize, len(pending)))
	if len(pending) > 0 {
		if _, err := br.Peek(len(pending)); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, socketBufferSize)), nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w smallBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }
