package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/protocol"
)

// Close codes of the WebSocket endpoint beyond RFC 6455's: 4000–4999 are the
// application's.
const (
	closeTooSlow     websocket.StatusCode = 4008 // events waited longer than SlowClientAfter
	closeRateLimited websocket.StatusCode = 4029 // kept sending commands over the rate limit
)

// wsConfig are the WebSocket endpoint's limits (see Config).
type wsConfig struct {
	originPatterns   []string
	readLimit        int64
	maxIDsPerCommand int
	maxSubscriptions int
	commandRate      rate.Limit
	commandBurst     int
	maxConnections   int
	writeTimeout     time.Duration
	pingInterval     time.Duration
	slowAfter        time.Duration
	maxUnreadAnswers int
	conflation       hub.Conflation // when a client's queue conflates (ws_writer.go)
}

// wsServer serves /websocket: it upgrades, then runs one wsConn per socket
// until it ends, and closes them all on Drain.
type wsServer struct {
	cfg     wsConfig
	hub     *hub.Hub
	catchUp *catchUp
	logger  *slog.Logger
	metrics *wsMetrics
	base    context.Context // the server's; ends only after Drain

	mu       sync.Mutex // guards conns, slots and draining
	conns    map[*wsConn]struct{}
	slots    int // sockets open or being upgraded: at most cfg.maxConnections
	draining bool
	nextID   atomic.Uint64

	batchBuffers *sync.Pool // the writers' batch buffers (ws_writer.go)
}

func newWSServer(base context.Context, cfg wsConfig, h *hub.Hub, cu *catchUp, logger *slog.Logger, m *wsMetrics) *wsServer {
	return &wsServer{cfg: cfg, hub: h, catchUp: cu, logger: logger, metrics: m, base: base, conns: make(map[*wsConn]struct{}), batchBuffers: newBatchPool()}
}

// queued returns how many messages wait in all connections' queues (for the
// queue depth metric; it visits every connection, so only scrapes call it).
func (s *wsServer) queued() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		n += c.outbox.Len()
	}
	return float64(n)
}

func (s *wsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A slot is reserved before the upgrade, so that sockets being upgraded
	// count against the limit too.
	s.mu.Lock()
	refuse := ""
	switch {
	case s.draining:
		refuse = "the gateway is shutting down; reconnect to another"
	case s.slots >= s.cfg.maxConnections:
		refuse = "the gateway has reached its connection limit; retry later or elsewhere"
	default:
		s.slots++
	}
	s.mu.Unlock()
	if refuse != "" {
		s.metrics.refused.Inc()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(marshalError(&apiError{Code: codeUnavailable, Message: refuse}))
		return
	}
	sb := &smallBuffers{ResponseWriter: w, writeTimeout: s.cfg.writeTimeout, pool: s.batchBuffers}
	ws, err := websocket.Accept(sb, r, &websocket.AcceptOptions{
		OriginPatterns:  s.cfg.originPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.release()
		s.metrics.refused.Inc()
		s.logger.Info("websocket upgrade refused", "err", err, "origin", r.Header.Get("Origin"))
		return // Accept has answered (403 for a foreign origin, 400/426 for a bad upgrade)
	}
	ws.SetReadLimit(s.cfg.readLimit)
	c := &wsConn{
		finished: make(chan struct{}),
		id:       s.nextID.Add(1),
		srv:      s,
		ws:       ws,
		outbox:   hub.NewOutbox(s.cfg.maxUnreadAnswers),
		subs:     make(map[int64]struct{}),
		limit:    rate.NewLimiter(s.cfg.commandRate, s.cfg.commandBurst),
	}
	s.setUpWriter(c, sb)
	if !s.add(c) {
		s.release()
		_ = ws.Close(websocket.StatusGoingAway, "the gateway is shutting down")
		return
	}
	// The socket gets a goroutine of its own and this handler returns: the
	// HTTP goroutine's stack has grown through routing and middleware, and
	// an idle socket should not keep it (BenchmarkIdleConnectionMemory).
	go func() {
		defer s.remove(c)
		c.run(s.base)
	}()
}

func (s *wsServer) add(c *wsConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.conns[c] = struct{}{}
	s.metrics.connections.Inc()
	return true
}

func (s *wsServer) remove(c *wsConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.release()
	s.metrics.connections.Dec()
}

// release frees a connection slot.
func (s *wsServer) release() {
	s.mu.Lock()
	s.slots--
	s.mu.Unlock()
}

// Drain refuses new sockets and closes the open ones with 1001 (going
// away), spread evenly over window so that their reconnects do not all land
// on the other gateways at once. It returns when every socket is closed or
// ctx ends.
func (s *wsServer) Drain(ctx context.Context, window time.Duration) {
	s.mu.Lock()
	s.draining = true
	conns := make([]*wsConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		return
	}
	s.logger.Info("draining websockets", "connections", len(conns), "window", window)
	step := window / time.Duration(len(conns))
	for i, c := range conns {
		if i > 0 && step > 0 && !sleepCtx(ctx, step) {
			break
		}
		c.stop(websocket.StatusGoingAway, "gateway shutting down: reconnect", "drain")
	}
	for _, c := range conns { // stragglers, at the end of the window or on ctx
		c.stop(websocket.StatusGoingAway, "gateway shutting down: reconnect", "drain")
		select {
		case <-c.done():
		case <-ctx.Done():
			c.ws.CloseNow()
		}
	}
}

// wsConn is one client socket. Its subscriptions (subs) are owned by the
// goroutine running run (the reader); the outbox is shared with the hub's
// dispatchers and drained by the writer goroutine.
type wsConn struct {
	id     uint64
	srv    *wsServer
	ws     *websocket.Conn
	outbox *hub.Outbox
	subs   map[int64]struct{}
	all    *allClient // watching every product (watchall.go); owned by the reader
	limit  *rate.Limiter

	reason   atomic.Pointer[closeReason] // why the gateway closed it; the first reason wins
	finished chan struct{}

	w connWriter // the writer goroutine's side (ws_writer.go)
}

// closeReason is why the gateway ended a connection: its close code, text
// and the metric label.
type closeReason struct {
	code   websocket.StatusCode
	text   string
	metric string
}

func (r *closeReason) Error() string { return r.text }

func (c *wsConn) done() <-chan struct{} { return c.finished }

// stop closes the connection with code and text: a close frame is sent and
// the reader ends when the client answers it (or after coder/websocket's
// handshake timeout). Only the first call counts.
func (c *wsConn) stop(code websocket.StatusCode, text, metric string) {
	if c.reason.CompareAndSwap(nil, &closeReason{code: code, text: text, metric: metric}) {
		go func() { _ = c.ws.Close(code, text) }() // blocks for the handshake
	}
}

// run reads commands until the socket ends, while the writer writes what
// the outbox holds; then it gives the subscriptions back. Cancelling
// base (the server going away without a drain) drops the socket at once.
func (c *wsConn) run(base context.Context) {
	defer close(c.finished)
	stopWriter := c.startWriter()

	readErr := c.read(base)
	if r, ok := readErr.(*closeReason); ok {
		c.reason.CompareAndSwap(nil, r)
		if r.code != websocket.StatusMessageTooBig { // coder/websocket sent that one itself
			_ = c.ws.Close(r.code, r.text)
		}
	}
	stopWriter()

	ids := make([]int64, 0, len(c.subs))
	for id := range c.subs {
		ids = append(ids, id)
	}
	c.srv.hub.Unsubscribe(c.outbox, ids)
	c.stopWatchingAll()
	c.srv.metrics.subscriptions.Sub(float64(len(ids)))
	if r := c.reason.Load(); r != nil {
		c.srv.metrics.dropped.WithLabelValues(r.metric).Inc()
		c.srv.logger.Info("websocket closed by the gateway", "conn_id", c.id, "reason", r.text, "code", int(r.code))
	}
}

// read handles commands until the socket or ctx ends.
func (c *wsConn) read(ctx context.Context) error {
	violations := 0
	for {
		typ, data, err := c.ws.Read(ctx)
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) || websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				return &closeReason{code: websocket.StatusMessageTooBig, text: "frame larger than " + strconv.FormatInt(c.srv.cfg.readLimit, 10) + " bytes", metric: "read_limit"}
			}
			return err
		}
		if typ != websocket.MessageText {
			c.answerError(nil, protocol.CodeBinaryFrame, "binary frames are not part of the protocol: send JSON text", nil)
			continue
		}
		if !c.limit.Allow() {
			violations++
			if violations > 3*c.srv.cfg.commandBurst {
				return &closeReason{code: closeRateLimited, text: "too many commands: over the rate limit for too long", metric: "rate_limit"}
			}
			c.answerError(nil, protocol.CodeRateLimited, "too many commands: slow down", nil)
			continue
		}
		violations = 0
		c.srv.metrics.commands.Inc()
		cmd, err := protocol.Decode(data, c.srv.cfg.maxIDsPerCommand)
		var perr *protocol.Error
		if errors.As(err, &perr) {
			c.answerError(perr.ID, perr.Code, perr.Message, nil)
			continue
		}
		switch {
		case cmd.All:
			c.watchAll(ctx, cmd)
		case cmd.Name == protocol.Subscribe:
			c.subscribe(ctx, cmd)
		case cmd.Name == protocol.Unsubscribe:
			c.unsubscribe(cmd)
		}
	}
}

// subscribe adds this connection's interest in cmd's products, then sends
// what the client asked to catch up on (snapshot, or what moved on since its
// versions): interest first, state second, so no change falls between.
func (c *wsConn) subscribe(ctx context.Context, cmd protocol.Command) {
	var added []int64
	for _, id := range cmd.ProductIDs {
		if _, ok := c.subs[id]; !ok {
			added = append(added, id)
		}
	}
	if len(c.subs)+len(added) > c.srv.cfg.maxSubscriptions {
		c.answerError(cmd.ID, protocol.CodeTooManySubscriptions,
			"a connection watches at most "+strconv.Itoa(c.srv.cfg.maxSubscriptions)+" products; unsubscribe some first", nil)
		return
	}
	// The ack goes out before any event of these products can be queued.
	c.answer(protocol.AppendAck(nil, cmd.ID, cmd.Name, cmd.ProductIDs))
	if err := c.srv.hub.Subscribe(c.outbox, added); err != nil {
		c.srv.hub.Unsubscribe(c.outbox, added)
		c.srv.logger.Warn("subscribe failed", "conn_id", c.id, "err", err)
		c.answerError(cmd.ID, protocol.CodeUnavailable, "the gateway could not subscribe after all; subscribe again", cmd.ProductIDs)
		return
	}
	for _, id := range added {
		c.subs[id] = struct{}{}
	}
	c.srv.metrics.subscriptions.Add(float64(len(added)))
	if !cmd.Snapshot && len(cmd.Versions) == 0 {
		return
	}
	res, err := c.srv.catchUp.load(ctx, cmd.ProductIDs, cmd.Versions, cmd.Snapshot)
	if err != nil {
		c.srv.logger.Warn("catch-up failed", "conn_id", c.id, "err", err)
		c.answerError(cmd.ID, protocol.CodeUnavailable, "could not read the current state; resubscribe to retry", cmd.ProductIDs)
		return
	}
	for _, m := range res.messages {
		c.outbox.Deliver(m.productID, m.version, m.data)
	}
	if len(res.notFound) > 0 {
		c.answerError(cmd.ID, protocol.CodeNotFound, "no such products", res.notFound)
	}
	if len(res.resync) > 0 {
		c.answerError(cmd.ID, protocol.CodeResync, "these products changed beyond the kept history: reload them", res.resync)
	}
}

// unsubscribe removes this connection's interest only.
func (c *wsConn) unsubscribe(cmd protocol.Command) {
	var removed []int64
	for _, id := range cmd.ProductIDs {
		if _, ok := c.subs[id]; ok {
			delete(c.subs, id)
			removed = append(removed, id)
		}
	}
	c.srv.hub.Unsubscribe(c.outbox, removed)
	c.outbox.Forget(removed)
	c.srv.metrics.subscriptions.Sub(float64(len(removed)))
	c.answer(protocol.AppendAck(nil, cmd.ID, cmd.Name, cmd.ProductIDs))
}

func (c *wsConn) answerError(id []byte, code, message string, ids []int64) {
	c.srv.metrics.commandErrors.WithLabelValues(code).Inc()
	c.answer(protocol.AppendError(nil, id, code, message, ids))
}

// answer queues an answer; a client that leaves too many unread is dropped.
func (c *wsConn) answer(msg []byte) {
	if err := c.outbox.Control(msg); err != nil {
		c.stop(websocket.StatusPolicyViolation, "too many unread answers: read what you are sent", "unread_answers")
	}
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
