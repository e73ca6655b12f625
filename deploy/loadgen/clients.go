package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/productwatch/productwatch/deploy/loadgen/tally"
	"github.com/productwatch/productwatch/pkg/change"
)

// connsPerSource is how many connections the load generator opens from one
// source address before it moves to the next one in 127.0.0.0/8: one source
// address has about 28,000 ephemeral ports (32768–60999) towards one
// gateway address, and earlier scenarios leave some in TIME_WAIT.
const connsPerSource = 10000

// dialer opens WebSocket connections to one gateway, spreading them over
// source addresses 127.0.0.1, 127.0.0.2, … (connsPerSource each).
type dialer struct {
	url     string
	clients []*http.Client // by source address
}

// newDialer returns a dialer for conns connections to url.
func newDialer(url string, conns int) *dialer {
	d := &dialer{url: url}
	sources := (conns + connsPerSource - 1) / connsPerSource
	for i := range max(sources, 1) {
		d.clients = append(d.clients, httpClientFrom(net.IPv4(127, 0, 0, byte(1+i)), 0))
	}
	return d
}

// httpClientFrom returns an HTTP client whose connections leave from ip;
// rcvbuf > 0 sets their receive buffer (a small one makes a client that
// does not read stall for real).
func httpClientFrom(ip net.IP, rcvbuf int) *http.Client {
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 30 * time.Second}
	if rcvbuf > 0 {
		nd.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		}
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:     nd.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}, // the gateway's development certificate
	}}
}

// dial opens connection number i.
func (d *dialer) dial(ctx context.Context, i int) (*websocket.Conn, error) {
	return d.dialWith(ctx, d.clients[min(i/connsPerSource, len(d.clients)-1)])
}

func (d *dialer) dialWith(ctx context.Context, hc *http.Client) (*websocket.Conn, error) {
	ws, _, err := websocket.Dial(ctx, d.url, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return ws, nil
}

// client is one simulated browser: it watches products and keeps every
// change event it receives, with the time it arrived.
type client struct {
	watch []int64
	ws    *websocket.Conn
	acked chan struct{} // closed on the subscribe's ack
	// closing is set when the load generator closes the connection, so
	// that the read loop's error is not taken for the gateway's doing.
	closing atomic.Bool
	// messages counts the messages that carried events (an array of
	// several with batched framing counts once).
	messages atomic.Int64
	events   atomic.Int64 // the events in them

	mu       sync.Mutex // guards the fields below; the read loop appends, the drain check reads
	frames   []tally.Frame
	newest   map[int64]int64 // product -> newest version received
	errors   []string        // error messages the gateway sent
	readErr  error           // why the read loop ended
	byUs     bool            // it ended because the load generator closed the connection
	finished bool
}

func newClient(ws *websocket.Conn, watch []int64, expectFrames int) *client {
	return &client{watch: watch, ws: ws, acked: make(chan struct{}),
		frames: make([]tally.Frame, 0, expectFrames), newest: make(map[int64]int64, len(watch))}
}

// subscribeCommand returns {"command":"subscribe","productIDs":[…]}.
func subscribeCommand(ids []int64) []byte {
	b := []byte(`{"command":"subscribe","productIDs":[`)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return append(b, "]}"...)
}

// subscribe sends the subscribe command.
func (c *client) subscribe(ctx context.Context) error {
	return c.ws.Write(ctx, websocket.MessageText, subscribeCommand(c.watch))
}

// readLoop reads until the connection ends (closing it ends the loop).
// Messages are not decoded: the event's product, version and changedAt are
// read from the bytes, in the trigger's fixed layout.
func (c *client) readLoop() {
	buf := make([]byte, 0, 8<<10)
	var err error
	for {
		buf, err = readMessage(c.ws, buf)
		if err != nil {
			break
		}
		c.handle(buf, time.Now().UnixNano())
	}
	c.mu.Lock()
	c.readErr, c.byUs, c.finished = err, c.closing.Load(), true
	c.mu.Unlock()
}

// readMessage reads the next message into buf[:0].
func readMessage(ws *websocket.Conn, buf []byte) ([]byte, error) {
	_, r, err := ws.Reader(context.Background()) // ended by closing the connection
	if err != nil {
		return buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

var (
	ackPrefix    = []byte(`{"type":"ack"`)
	errorPrefix  = []byte(`{"type":"error"`)
	productIDKey = []byte(`"productId":`)
)

// handle accounts for one message received at now.
func (c *client) handle(msg []byte, now int64) {
	switch {
	case bytes.HasPrefix(msg, ackPrefix):
		select {
		case <-c.acked:
		default:
			close(c.acked)
		}
		return
	case bytes.HasPrefix(msg, errorPrefix):
		c.mu.Lock()
		if len(c.errors) < 10 {
			c.errors = append(c.errors, string(msg))
		}
		c.mu.Unlock()
		return
	}
	c.messages.Add(1)
	if len(msg) > 0 && msg[0] == '[' { // a batch: /websocket?batch=1
		if !splitEvents(msg, func(event []byte) { c.event(event, now) }) {
			c.unreadable(msg)
		}
		return
	}
	c.event(msg, now)
}

// event accounts for one event received at now.
func (c *client) event(msg []byte, now int64) {
	c.events.Add(1)
	f, ok := parseEvent(msg)
	if !ok {
		c.unreadable(msg)
		return
	}
	f.Received = now
	c.mu.Lock()
	c.frames = append(c.frames, f)
	if f.Version > c.newest[f.ProductID] {
		c.newest[f.ProductID] = f.Version
	}
	c.mu.Unlock()
}

// unreadable keeps a message the load generator could not read among the
// client's errors.
func (c *client) unreadable(msg []byte) {
	c.mu.Lock()
	if len(c.errors) < 10 {
		c.errors = append(c.errors, "unreadable message: "+string(msg[:min(len(msg), 200)]))
	}
	c.mu.Unlock()
}

// splitEvents calls each with every element of a JSON array of objects,
// without decoding them (the strings inside may hold any bytes, escaped
// quotes included). It reports false, having called each for the elements
// before, when msg is not such an array (or nests deeper than 64).
func splitEvents(msg []byte, each func(event []byte)) bool {
	if len(msg) < 2 || msg[0] != '[' {
		return false
	}
	var closers [64]byte // what closes each open object or array
	depth, start, inString, escaped := 0, -1, false, false
	for i := 1; i < len(msg); i++ {
		b := msg[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case b == '\\':
				escaped = true
			case b == '"':
				inString = false
			}
		case b == '"':
			if depth == 0 {
				return false
			}
			inString = true
		case b == '{' || b == '[':
			if depth == 0 {
				if b != '{' {
					return false
				}
				start = i
			}
			if depth == len(closers) {
				return false
			}
			closers[depth] = b + 2 // '{'+2 is '}', '['+2 is ']'
			depth++
		case b == '}' || b == ']':
			if depth == 0 {
				return b == ']' && i == len(msg)-1 && start >= 0
			}
			if closers[depth-1] != b {
				return false
			}
			depth--
			if depth == 0 {
				each(msg[start : i+1])
			}
		case depth == 0 && (b == ',' || b == ' ' || b == '\n' || b == '\t' || b == '\r'):
		case depth == 0:
			return false
		}
	}
	return false
}

// parseEvent reads an event's productId (the first one: the top-level
// field precedes the product object), version and changedAt.
func parseEvent(msg []byte) (tally.Frame, bool) {
	var f tally.Frame
	i := bytes.Index(msg, productIDKey)
	if i < 0 {
		return f, false
	}
	rest := msg[i+len(productIDKey):]
	n := 0
	for n < len(rest) && n < 18 && rest[n] >= '0' && rest[n] <= '9' {
		f.ProductID = f.ProductID*10 + int64(rest[n]-'0')
		n++
	}
	if n == 0 || n < len(rest) && rest[n] >= '0' && rest[n] <= '9' { // none, or more than int64 holds
		return f, false
	}
	v, ok := change.EventVersion(msg)
	if !ok {
		return f, false
	}
	f.Version = v
	if at, ok := change.ChangedAt(msg); ok {
		f.ChangedAt = at.UnixNano()
	}
	return f, true
}

// holds reports whether the client has received version final (or newer)
// of every product in finals it watches.
func (c *client) holds(finals map[int64]int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return true // it will receive nothing more
	}
	for _, id := range c.watch {
		if c.newest[id] < finals[id] {
			return false
		}
	}
	return true
}

// result returns what the client received, the gateway's error messages,
// and why the read loop ended when it was not the load generator closing the
// connection; call it after the loop has ended.
func (c *client) result() ([]tally.Frame, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byUs {
		return c.frames, c.errors, nil
	}
	return c.frames, c.errors, c.readErr
}

// connectClients dials n clients (at most parallel at a time), subscribes
// client i to watch(i) and waits for every ack. Each client's read loop runs
// in readers; close the clients to end them.
func connectClients(ctx context.Context, d *dialer, n, parallel int, watch func(i int) []int64,
	expectFrames int, readers *sync.WaitGroup) ([]*client, error) {
	clients := make([]*client, n)
	next := make(chan int)
	errs := make(chan error, parallel)
	var dialers sync.WaitGroup
	for range parallel {
		dialers.Go(func() {
			for i := range next {
				dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				ws, err := d.dial(dctx, i)
				if err != nil {
					cancel()
					errs <- fmt.Errorf("dial client %d: %w", i, err)
					return
				}
				c := newClient(ws, watch(i), expectFrames)
				clients[i] = c
				readers.Go(c.readLoop)
				err = c.subscribe(dctx)
				if err == nil {
					select {
					case <-c.acked:
					case <-dctx.Done():
						err = fmt.Errorf("no ack within 60 s: %v", c.gatewayErrors())
					}
				}
				cancel()
				if err != nil {
					errs <- fmt.Errorf("subscribe client %d: %w", i, err)
					return
				}
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	dialers.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return clients, err
}

// gatewayErrors returns the error messages the gateway sent so far.
func (c *client) gatewayErrors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errors...)
}

// closeClients closes every connection at once (no close handshake: the
// measurement is over) and waits for the read loops.
func closeClients(clients []*client, readers *sync.WaitGroup) {
	for _, c := range clients {
		if c != nil {
			c.closing.Store(true)
			c.ws.CloseNow()
		}
	}
	readers.Wait()
}

// stalledClient is a client that subscribes, reads its ack, and then reads
// nothing: its tiny receive buffer fills and the gateway's writes to it
// block.
type stalledClient struct {
	ws    *websocket.Conn
	watch []int64
}

// dialStalled opens a stalled client from source address 127.0.0.250.
func dialStalled(ctx context.Context, url string, watch []int64) (*stalledClient, error) {
	d := &dialer{url: url}
	ws, err := d.dialWith(ctx, httpClientFrom(net.IPv4(127, 0, 0, 250), 4096))
	if err != nil {
		return nil, fmt.Errorf("dial the stalled client: %w", err)
	}
	if err := ws.Write(ctx, websocket.MessageText, subscribeCommand(watch)); err != nil {
		ws.CloseNow()
		return nil, err
	}
	buf, err := readMessage(ws, nil)
	if err != nil || !bytes.HasPrefix(buf, ackPrefix) {
		ws.CloseNow()
		return nil, fmt.Errorf("the stalled client's ack: %q, %v", buf, err)
	}
	return &stalledClient{ws: ws, watch: watch}, nil
}

// stalledResult is what a stalled client got once it finally read.
type stalledResult struct {
	Account tally.Client `json:"account"`
	// Closed: the gateway had closed the connection (it dropped the
	// client); CloseStatus is the close code it sent, -1 when none.
	Closed      bool   `json:"closed"`
	CloseStatus int    `json:"closeStatus"`
	ReadError   string `json:"readError,omitempty"`
}

// drain reads what the stalled client's socket holds, for at most limit,
// and accounts for it.
func (s *stalledClient) drain(commits tally.Commits, limit time.Duration) stalledResult {
	var frames []tally.Frame
	var readErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf []byte
		for {
			var err error
			buf, err = readMessage(s.ws, buf)
			if err != nil {
				readErr = err
				return
			}
			if f, ok := parseEvent(buf); ok {
				f.Received = time.Now().UnixNano()
				frames = append(frames, f)
			}
		}
	}()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.ws.CloseNow()
		<-done
		readErr = nil // still open after limit: not dropped
	}
	r := stalledResult{Account: tally.Account(s.watch, commits, frames, nil), CloseStatus: -1}
	if readErr != nil {
		r.Closed = true
		r.CloseStatus = int(websocket.CloseStatus(readErr))
		r.ReadError = readErr.Error()
	}
	return r
}
