package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/protocol"
	"github.com/productwatch/productwatch/pkg/sleep"
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
	writeCoalesce    time.Duration // WS_WRITE_COALESCE
	coalesceAbove    float64       // WS_WRITE_COALESCE_ABOVE
	maxUnreadAnswers int
	conflation       hub.Conflation // when a client's queue conflates (ws_writer.go)
	catchUpTimeout   time.Duration  // deadline of a snapshot/resume read
	maxConnsPerAddr  int            // sockets per client address
	maxSubsPerAddr   int            // subscriptions of all sockets of one client address
	maxSubsTotal     int            // subscriptions of all sockets
	trustedProxies   trustedProxies // whose X-Forwarded-For names the client
	// onCommand, when set, sees every decoded command on the reader (tests
	// use it to make a reader panic).
	onCommand func(protocol.Command)
	// onWrite, when set, sees every queued message the writer is about to
	// write (tests use it to make a writer panic).
	onWrite func(msg []byte)
}

// maxPendingCatchUps is how many snapshot/resume reads a connection may
// have waiting: more answer rate_limited (the subscription itself holds).
const maxPendingCatchUps = 4

// addrUsage is what one client address holds (guarded by wsServer.mu).
type addrUsage struct {
	conns, subs int
}

// wsServer serves /websocket: ServeHTTP upgrades and hands the socket to
// Serve, which runs one wsConn per socket until it ends; Drain closes them
// all.
type wsServer struct {
	cfg     wsConfig
	hub     *hub.Hub
	catchUp *catchUp
	logger  *slog.Logger
	metrics *wsMetrics
	panics  *panics

	// accepted carries upgraded sockets from ServeHTTP to Serve, which
	// owns their goroutines; stopped is closed when Serve no longer takes
	// any (ServeHTTP then closes the socket itself).
	accepted chan *wsConn
	stopped  chan struct{}

	// sentMessages counts the messages the writers sent (added per batch);
	// Serve samples it to turn write coalescing on and off (coalescing).
	sentMessages atomic.Int64
	coalescing   atomic.Bool

	mu        sync.Mutex // guards conns, slots, draining, addrs and totalSubs
	conns     map[*wsConn]struct{}
	slots     int // sockets open or being upgraded: at most cfg.maxConnections
	draining  bool
	addrs     map[string]*addrUsage // by addrKey; an entry goes when its last socket does
	totalSubs int                   // subscriptions of all sockets
	nextID    atomic.Uint64

	batchBuffers *sync.Pool // the writers' batch buffers (ws_writer.go)
}

func newWSServer(cfg wsConfig, h *hub.Hub, cu *catchUp, logger *slog.Logger, m *wsMetrics, p *panics) *wsServer {
	s := &wsServer{cfg: cfg, hub: h, catchUp: cu, logger: logger, metrics: m, panics: p,
		accepted: make(chan *wsConn), stopped: make(chan struct{}),
		conns: make(map[*wsConn]struct{}), addrs: make(map[string]*addrUsage), batchBuffers: newBatchPool()}
	s.coalescing.Store(cfg.writeCoalesce > 0 && cfg.coalesceAbove == 0)
	return s
}

// addresses returns how many client addresses hold sockets (for a gauge).
func (s *wsServer) addresses() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(len(s.addrs))
}

// reserveSubs takes n subscriptions for addr from the per-address and
// per-gateway budgets. It returns the limit that refuses, "" when reserved.
// (The NATS interests, products with a NATS subscription, are the hub's to
// count: hub.Options.MaxProducts.)
func (s *wsServer) reserveSubs(addr string, n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.addrs[addr]
	switch {
	case u.subs+n > s.cfg.maxSubsPerAddr:
		return "subscriptions_per_addr"
	case s.totalSubs+n > s.cfg.maxSubsTotal:
		return "subscriptions_total"
	}
	u.subs += n
	s.totalSubs += n
	return ""
}

// releaseSubs gives n subscriptions of addr back.
func (s *wsServer) releaseSubs(addr string, n int) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.addrs[addr].subs -= n
	s.totalSubs -= n
	s.mu.Unlock()
}

// queued returns how many messages wait in all connections' queues (for the
// queue depth metric; it visits every connection, so only scrapes call it).
func (s *wsServer) queued() float64 {
	// The connections are listed under the server's lock and counted after
	// it: connects and subscribes need that lock, and a scrape of 20,000
	// outboxes should not hold them up.
	s.mu.Lock()
	conns := make([]*wsConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	n := 0
	for _, c := range conns {
		n += c.outbox.Len()
	}
	return float64(n)
}

func (s *wsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if refusal := notAnUpgrade(r); refusal != nil {
		s.metrics.refused.Inc()
		if refusal.Status == http.StatusUpgradeRequired {
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "websocket")
		}
		writeAPIError(w, refusal)
		return
	}
	batch, refusal := batchParam(r.URL.Query())
	if refusal != nil {
		s.metrics.refused.Inc()
		writeAPIError(w, refusal)
		return
	}
	addr := addrKey(s.cfg.trustedProxies.clientAddr(r))
	// A slot is reserved before the upgrade, so that sockets being upgraded
	// count against the limits too.
	s.mu.Lock()
	u := s.addrs[addr]
	switch {
	case s.draining:
		refusal = &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "the gateway is shutting down; reconnect to another"}
	case s.slots >= s.cfg.maxConnections:
		s.metrics.limitRefusals.WithLabelValues("connections_total").Inc()
		refusal = &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "the gateway has reached its connection limit; retry later or elsewhere"}
	case u != nil && u.conns >= s.cfg.maxConnsPerAddr:
		s.metrics.limitRefusals.WithLabelValues("connections_per_addr").Inc()
		refusal = &apiError{Status: http.StatusTooManyRequests, Code: codeTooManyConnections,
			Message: "too many WebSocket connections from your address (at most " + strconv.Itoa(s.cfg.maxConnsPerAddr) + "); close some first"}
	default:
		s.slots++
		if u == nil {
			u = &addrUsage{}
			s.addrs[addr] = u
		}
		u.conns++
	}
	s.mu.Unlock()
	if refusal != nil {
		s.metrics.refused.Inc()
		w.Header().Set("Retry-After", "1")
		writeAPIError(w, refusal)
		return
	}
	sb := &smallBuffers{ResponseWriter: w, writeTimeout: s.cfg.writeTimeout, pool: s.batchBuffers}
	ws, err := websocket.Accept(sb, r, &websocket.AcceptOptions{
		OriginPatterns:  s.cfg.originPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.release(addr)
		s.metrics.refused.Inc()
		s.logger.Info("websocket upgrade refused", "err", err, "origin", r.Header.Get("Origin"))
		return // Accept has answered (403 for a foreign origin, 400/426 for a bad upgrade)
	}
	ws.SetReadLimit(s.cfg.readLimit)
	c := &wsConn{
		finished: make(chan struct{}),
		id:       s.nextID.Add(1),
		addr:     addr,
		srv:      s,
		ws:       ws,
		outbox:   hub.NewOutbox(s.cfg.maxUnreadAnswers),
		subs:     make(map[int64]struct{}),
		limit:    rate.NewLimiter(s.cfg.commandRate, s.cfg.commandBurst),
		strikes:  rate.NewLimiter(s.cfg.commandRate/10, 3*s.cfg.commandBurst),
	}
	s.setUpWriter(c, sb)
	c.w.batch = batch
	if !s.add(c) {
		s.release(addr)
		_ = ws.Close(websocket.StatusGoingAway, "the gateway is shutting down")
		return
	}
	// The socket gets a goroutine of its own, started by Serve, and this
	// handler returns: the HTTP goroutine's stack has grown through routing
	// and middleware, and an idle socket should not keep it
	// (BenchmarkIdleConnectionMemory).
	select {
	case s.accepted <- c:
	case <-s.stopped:
		s.remove(c)
		_ = ws.Close(websocket.StatusGoingAway, "the gateway is shutting down")
	}
}

// Serve runs the sockets ServeHTTP accepts, each on a goroutine of its own
// with a context made here from ctx, until ctx ends (after Drain: ending it
// drops the sockets left at once). It returns when every socket's goroutine
// has ended. Call it once.
func (s *wsServer) Serve(ctx context.Context) {
	var sockets sync.WaitGroup
	defer sockets.Wait()
	defer close(s.stopped)
	var sample <-chan time.Time // nil: coalescing is always on or always off
	sw := coalesceSwitch{above: s.cfg.coalesceAbove}
	if s.cfg.writeCoalesce > 0 && s.cfg.coalesceAbove > 0 {
		t := time.NewTicker(coalesceSample)
		defer t.Stop()
		sample = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-sample:
			s.coalescing.Store(sw.update(now, s.sentMessages.Load()))
		case c := <-s.accepted:
			sockets.Go(func() {
				defer s.remove(c)
				c.run(ctx)
			})
		}
	}
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
	s.release(c.addr)
	s.metrics.connections.Dec()
}

// release frees a connection slot of addr.
func (s *wsServer) release(addr string) {
	s.mu.Lock()
	s.slots--
	if u := s.addrs[addr]; u != nil {
		if u.conns--; u.conns <= 0 {
			delete(s.addrs, addr)
		}
	}
	s.mu.Unlock()
}

// notAnUpgrade answers a request to /websocket that is no WebSocket
// handshake: 426 with a JSON body over HTTP/1.x, 400 over HTTP/2 (where a
// WebSocket needs extended CONNECT, RFC 8441, and browsers open one over
// HTTP/1.1 instead). Nil for a handshake.
func notAnUpgrade(r *http.Request) *apiError {
	if r.ProtoMajor >= 2 {
		if r.Method == http.MethodConnect {
			return nil // RFC 8441: coder/websocket decides
		}
		return &apiError{Status: http.StatusBadRequest, Code: codeUpgradeRequired,
			Message: "/websocket is a WebSocket endpoint: open it with a WebSocket client (over HTTP/1.1 here)"}
	}
	if headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket") {
		return nil
	}
	return &apiError{Status: http.StatusUpgradeRequired, Code: codeUpgradeRequired,
		Message: "/websocket is a WebSocket endpoint: send a WebSocket handshake (Connection: Upgrade, Upgrade: websocket)"}
}

// headerHasToken reports whether a comma-separated header holds token
// (case-insensitive).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
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
		if i > 0 && step > 0 && !sleep.For(ctx, step) {
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
	id      uint64
	addr    string // addrKey of the client
	srv     *wsServer
	ws      *websocket.Conn
	outbox  *hub.Outbox
	subsMu  sync.Mutex         // the reader changes subs under it; the catch-up worker reads under it
	subs    map[int64]struct{} // changed by the reader only
	all     *allClient         // watching every product (watchall.go); changed by the reader only, under subsMu
	limit   *rate.Limiter      // frames per second
	strikes *rate.Limiter      // frames over the limit: empty means the client keeps pushing, close 4029

	// Catch-up reads (snapshot, resume) run on a worker goroutine, one at
	// a time per connection, started when there is one to run: the reader
	// goes on reading pongs and commands meanwhile.
	catchMu      sync.Mutex // guards catchJobs and catchRunning
	catchJobs    []protocol.Command
	catchRunning bool
	catchers     sync.WaitGroup

	reason   atomic.Pointer[closeReason] // why the gateway closed it; the first reason wins
	finished chan struct{}

	// stop's closing handshakes run on goroutines that run waits for; once
	// run has ended (ended) the socket is closed and stop starts none.
	closeMu sync.Mutex
	ended   bool
	closing sync.WaitGroup

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
	if !c.reason.CompareAndSwap(nil, &closeReason{code: code, text: text, metric: metric}) {
		return
	}
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.ended {
		c.closing.Go(func() { _ = c.ws.Close(code, text) }) // blocks for the handshake
	}
}

// waitClosing waits for stop's closing handshakes; stop starts no more.
func (c *wsConn) waitClosing() {
	c.closeMu.Lock()
	c.ended = true
	c.closeMu.Unlock()
	c.closing.Wait()
}

// run reads commands until the socket ends, while the writer writes what
// the outbox holds; then it gives the subscriptions back. Cancelling
// base (the server going away without a drain) drops the socket at once.
func (c *wsConn) run(base context.Context) {
	defer close(c.finished)
	defer c.waitClosing()
	stopWriter := c.startWriter()

	// The reader's context is the catch-up workers' too: they end with the
	// connection.
	connCtx, stopCatchUps := context.WithCancel(base)
	readErr := c.readRecovering(connCtx)
	stopCatchUps()
	if r, ok := readErr.(*closeReason); ok {
		c.reason.CompareAndSwap(nil, r)
		if r.code != websocket.StatusMessageTooBig { // coder/websocket sent that one itself
			_ = c.ws.Close(r.code, r.text)
		}
	}
	stopWriter()
	c.catchers.Wait()

	ids := make([]int64, 0, len(c.subs))
	for id := range c.subs {
		ids = append(ids, id)
	}
	c.srv.hub.Unsubscribe(c.outbox, ids)
	c.srv.releaseSubs(c.addr, len(ids))
	c.stopWatchingAll()
	c.srv.metrics.subscriptions.Sub(float64(len(ids)))
	if r := c.reason.Load(); r != nil {
		c.srv.metrics.dropped.WithLabelValues(r.metric).Inc()
		c.srv.logger.Info("websocket closed by the gateway", "conn_id", c.id, "reason", r.text, "code", int(r.code))
	}
}

// readRecovering is read with a panic recovered: it ends this connection
// only, with 1011 (internal error).
func (c *wsConn) readRecovering(ctx context.Context) (err error) {
	defer c.srv.panics.recovered("websocket_reader", func() {
		err = &closeReason{code: websocket.StatusInternalError, text: "internal error", metric: "panic"}
	})
	return c.read(ctx)
}

// read handles commands until the socket or ctx ends. Every data frame,
// binary ones included, passes the rate limiter first. A frame over the
// limit is answered rate_limited and costs a strike; strikes come back at a
// tenth of the command rate, so a client that keeps sending faster than the
// limit (sustained, not one burst) runs out and is closed with 4029, even
// though some of its frames are allowed meanwhile.
func (c *wsConn) read(ctx context.Context) error {
	for {
		typ, data, err := c.ws.Read(ctx)
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) || websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				return &closeReason{code: websocket.StatusMessageTooBig, text: "frame larger than " + strconv.FormatInt(c.srv.cfg.readLimit, 10) + " bytes", metric: "read_limit"}
			}
			return err
		}
		if !c.limit.Allow() {
			if !c.strikes.Allow() {
				return &closeReason{code: closeRateLimited, text: "too many commands: over the rate limit for too long", metric: "rate_limit"}
			}
			c.answerError(nil, protocol.CodeRateLimited, "too many commands: slow down", nil)
			continue
		}
		if typ != websocket.MessageText {
			c.answerError(nil, protocol.CodeBinaryFrame, "binary frames are not part of the protocol: send JSON text", nil)
			continue
		}
		c.srv.metrics.commands.Inc()
		cmd, err := protocol.Decode(data, c.srv.cfg.maxIDsPerCommand)
		var perr *protocol.Error
		if errors.As(err, &perr) {
			c.answerError(perr.ID, perr.Code, perr.Message, nil)
			continue
		}
		if c.srv.cfg.onCommand != nil {
			c.srv.cfg.onCommand(cmd)
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

// gatewayFull answers a subscribe past a per-gateway limit.
const gatewayFull = "this gateway watches as many products as it may; retry later or on another gateway"

// subscribe adds this connection's interest in cmd's products, then queues
// what the client asked to catch up on (snapshot, or what moved on since its
// versions) for the catch-up worker: interest first, state second, so no
// change falls between. Products that do not exist (yet) may be watched;
// they count against the limits like any other.
func (c *wsConn) subscribe(ctx context.Context, cmd protocol.Command) {
	var added []int64
	for _, id := range cmd.ProductIDs {
		if _, ok := c.subs[id]; !ok {
			added = append(added, id)
		}
	}
	if len(c.subs)+len(added) > c.srv.cfg.maxSubscriptions {
		c.srv.metrics.limitRefusals.WithLabelValues("subscriptions_per_conn").Inc()
		c.answerError(cmd.ID, protocol.CodeTooManySubscriptions,
			"a connection watches at most "+strconv.Itoa(c.srv.cfg.maxSubscriptions)+" products; unsubscribe some first", nil)
		return
	}
	if limit := c.srv.reserveSubs(c.addr, len(added)); limit != "" {
		c.srv.metrics.limitRefusals.WithLabelValues(limit).Inc()
		switch limit {
		case "subscriptions_per_addr":
			c.answerError(cmd.ID, protocol.CodeTooManySubscriptions,
				"the connections from your address watch at most "+strconv.Itoa(c.srv.cfg.maxSubsPerAddr)+" products together; unsubscribe some first", nil)
		default:
			c.answerError(cmd.ID, protocol.CodeUnavailable, gatewayFull, cmd.ProductIDs)
		}
		return
	}
	// The ack goes out before any event of these products, and only once
	// the hub (and NATS) have the subscription: a client that reads the
	// state after the ack misses no change made after that read. The
	// outbox is held meanwhile, so events of these products that arrive
	// wait behind the answer, which goes first (answers pop before events).
	c.outbox.Hold()
	if err := c.srv.hub.Subscribe(ctx, c.outbox, added); err != nil {
		c.srv.hub.Unsubscribe(c.outbox, added)
		if c.all == nil { // watching all, the outbox still guards these products' versions
			c.outbox.Forget(added)
		}
		c.srv.releaseSubs(c.addr, len(added))
		if errors.Is(err, hub.ErrTooManyProducts) {
			c.srv.metrics.limitRefusals.WithLabelValues("nats_interests").Inc()
			c.answerError(cmd.ID, protocol.CodeUnavailable, gatewayFull, cmd.ProductIDs)
		} else {
			c.srv.logger.Warn("subscribe failed", "conn_id", c.id, "err", err)
			c.answerError(cmd.ID, protocol.CodeUnavailable, "the gateway could not subscribe; subscribe again", cmd.ProductIDs)
		}
		c.outbox.Release()
		return
	}
	c.answer(protocol.AppendAck(nil, cmd.ID, cmd.Name, cmd.ProductIDs))
	c.outbox.Release()
	c.subsMu.Lock()
	for _, id := range added {
		c.subs[id] = struct{}{}
	}
	c.subsMu.Unlock()
	c.srv.metrics.subscriptions.Add(float64(len(added)))
	if !cmd.Snapshot && len(cmd.Versions) == 0 {
		return
	}
	c.queueCatchUp(ctx, cmd)
}

// queueCatchUp hands cmd's snapshot/resume read to the connection's
// catch-up worker, starting it when none runs; the worker ends with
// connCtx (the connection).
func (c *wsConn) queueCatchUp(connCtx context.Context, cmd protocol.Command) {
	c.catchMu.Lock()
	if len(c.catchJobs) >= maxPendingCatchUps {
		c.catchMu.Unlock()
		c.srv.metrics.limitRefusals.WithLabelValues("catchups_pending").Inc()
		if cmd.All {
			c.answerAllError(cmd.ID, protocol.CodeRateLimited,
				"subscribed, but "+strconv.Itoa(maxPendingCatchUps)+" snapshot or resume reads wait already: wait for their answers, then subscribe again")
			return
		}
		c.answerError(cmd.ID, protocol.CodeRateLimited,
			"subscribed, but "+strconv.Itoa(maxPendingCatchUps)+" snapshot or resume reads wait already: wait for their answers, then resubscribe with snapshot to catch up", cmd.ProductIDs)
		return
	}
	c.catchJobs = append(c.catchJobs, cmd)
	start := !c.catchRunning
	c.catchRunning = true
	if start {
		c.catchers.Add(1)
	}
	c.catchMu.Unlock()
	if start {
		go c.catchUpWorker(connCtx)
	}
}

// catchUpWorker runs the queued catch-up reads, in order, and ends when
// none is left or the connection ends.
func (c *wsConn) catchUpWorker(connCtx context.Context) {
	defer c.catchers.Done()
	for {
		c.catchMu.Lock()
		if len(c.catchJobs) == 0 || connCtx.Err() != nil {
			c.catchJobs = nil
			c.catchRunning = false
			c.catchMu.Unlock()
			return
		}
		cmd := c.catchJobs[0]
		c.catchJobs = c.catchJobs[1:]
		c.catchMu.Unlock()
		c.runCatchUp(connCtx, cmd)
	}
}

// runCatchUp reads and queues what one subscribe asked to catch up on,
// within the catch-up deadline; a read that fails or times out answers
// unavailable and leaves the subscription as it is.
func (c *wsConn) runCatchUp(connCtx context.Context, cmd protocol.Command) {
	defer c.srv.panics.recovered("catchup", func() {
		c.answerError(cmd.ID, protocol.CodeUnavailable, "could not read the current state; resubscribe with snapshot to retry", cmd.ProductIDs)
	})
	ctx, cancel := context.WithTimeout(connCtx, c.srv.cfg.catchUpTimeout)
	defer cancel()
	if cmd.All {
		c.resumeAll(ctx, cmd)
		return
	}
	res, err := c.srv.catchUp.load(ctx, cmd.ProductIDs, cmd.Versions, cmd.Snapshot)
	if err != nil {
		if connCtx.Err() != nil {
			return // the connection is ending
		}
		outcome, msg := "error", "could not read the current state; you are subscribed: resubscribe with snapshot to retry"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			outcome = "timeout"
			msg = "the database did not answer within " + c.srv.cfg.catchUpTimeout.String() + "; you are subscribed: resubscribe with snapshot to retry"
		}
		c.srv.metrics.catchUps.WithLabelValues(outcome).Inc()
		c.srv.logger.Warn("catch-up failed", "conn_id", c.id, "err", err)
		c.answerError(cmd.ID, protocol.CodeUnavailable, msg, cmd.ProductIDs)
		return
	}
	c.srv.metrics.catchUps.WithLabelValues("ok").Inc()
	// Only products still watched: the client may have unsubscribed while
	// the read ran (unsubscribe forgets under the same lock).
	c.subsMu.Lock()
	for _, m := range res.messages {
		if _, ok := c.subs[m.productID]; ok {
			c.outbox.Deliver(m.productID, m.version, m.data)
		}
	}
	c.subsMu.Unlock()
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
	c.subsMu.Lock()
	for _, id := range cmd.ProductIDs {
		if _, ok := c.subs[id]; ok {
			delete(c.subs, id)
			removed = append(removed, id)
		}
	}
	c.srv.hub.Unsubscribe(c.outbox, removed)
	c.outbox.Forget(removed)
	c.subsMu.Unlock()
	c.srv.releaseSubs(c.addr, len(removed))
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
