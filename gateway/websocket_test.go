package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/api/apitest"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// wsGateway is a gateway with NATS behind a real HTTP server.
type wsGateway struct {
	*testGateway
	g    *Gateway
	nats *testenv.NATSServer
	nc   *nats.Conn // a separate connection, publishing as the bridge would
}

// newWSGateway starts a gateway on pg (a fresh database when nil) and n (a
// fresh NATS when nil), with its hub and re-syncer running.
func newWSGateway(t testing.TB, pg *testenv.PG, n *testenv.NATSServer, change func(*Config)) *wsGateway {
	t.Helper()
	if pg == nil {
		pg = testenv.Postgres(t)
	}
	if n == nil {
		n = testenv.NATS(t)
	}
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL, cfg.APIToken = pg.DSN, n.URL, testToken
	cfg.NATSAuth = n.Gateway // the gateway's production NATS permissions
	if change != nil {
		change(&cfg)
	}
	queue := newResyncQueue()
	// The gateway reconnects more slowly than the bridge (250 ms), so that
	// after a NATS restart the bridge publishes before the gateway's
	// subscriptions are back: those changes only reach clients through the
	// re-sync (TestNATSRestartUnderLoad depends on it).
	gnc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(time.Second),
		nats.ReconnectHandler(func(*nats.Conn) { queue.requestAll() }))
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGateway(cfg, pg.DB, gnc, queue, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	wsCtx, stopWS := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.hub.Run(wsCtx) })
	wg.Go(func() { g.resyncer.run(wsCtx) })
	wg.Go(func() { g.ws.Serve(wsCtx) })
	tg := newTestServers(t, pg, g)
	t.Cleanup(func() { // before the servers close (cleanups run last first)
		g.ws.Drain(context.Background(), 0)
		stopWS()
		wg.Wait()
		gnc.Close()
	})
	pub, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	return &wsGateway{testGateway: tg, g: g, nats: n, nc: pub}
}

// wsClient is a test's WebSocket client. Every message it reads is checked
// against api/asyncapi.yaml.
type wsClient struct {
	t         testing.TB
	ws        *websocket.Conn
	validator *apitest.MessageValidator // nil: not checked (throughput tests)
}

func (g *wsGateway) dial(t testing.TB, header http.Header) *wsClient {
	t.Helper()
	return g.dialWith(t, &websocket.DialOptions{HTTPHeader: header})
}

func (g *wsGateway) dialWith(t testing.TB, opts *websocket.DialOptions) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket", opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &wsClient{t: t, ws: ws, validator: apitest.NewMessageValidator(t)}
}

func (c *wsClient) send(frame string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatalf("send %s: %v", frame, err)
	}
}

// message is any server message, decoded loosely.
type message struct {
	Type       string          `json:"type"`
	ID         json.RawMessage `json:"id"`
	Code       string          `json:"code"`
	Message    string          `json:"message"`
	Command    string          `json:"command"`
	ProductIDs []int64         `json:"productIDs"`
	Action     string          `json:"action"`
	ProductID  int64           `json:"productId"`
	Version    int64           `json:"version"`
	Product    json.RawMessage `json:"product"`
	raw        string
}

// next reads the next message (10 s at most).
func (c *wsClient) next() message {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatal(err)
	}
	return m
}

// read reads the next message; it is safe to call from any goroutine.
func (c *wsClient) read() (message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, data, err := c.ws.Read(ctx)
	if err != nil {
		return message{}, fmt.Errorf("read: %w", err)
	}
	if typ != websocket.MessageText {
		return message{}, fmt.Errorf("got a %v frame", typ)
	}
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		return message{}, fmt.Errorf("server sent invalid JSON %q: %w", data, err)
	}
	if c.validator != nil {
		c.validator.CheckServerMessage(c.t, data)
	}
	m.raw = string(data)
	return m, nil
}

// expect reads the next message and checks its type (or action for events).
func (c *wsClient) expect(kind string) message {
	c.t.Helper()
	m := c.next()
	if m.Type != kind && m.Action != kind {
		c.t.Fatalf("got %s, want a %s", m.raw, kind)
	}
	return m
}

// closed waits for the server to close the socket and returns the code.
func (c *wsClient) closed() websocket.StatusCode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		_, _, err := c.ws.Read(ctx)
		if err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// write changes a product through the REST API and returns its version.
func (g *wsGateway) write(t *testing.T, method, path, body string) productJSON {
	t.Helper()
	r := g.do(t, request{Method: method, Path: path, Body: body})
	if r.Status >= 300 {
		t.Fatalf("%s %s = %d %s", method, path, r.Status, r.Body)
	}
	if r.Status == http.StatusNoContent {
		return productJSON{}
	}
	return decodeProduct(t, r)
}

// relay publishes the change log's events after seq to NATS, as the bridge
// does (same subjects, same bytes), and returns the last seq published.
func (g *wsGateway) relay(t *testing.T, after int64) int64 {
	t.Helper()
	rows, err := g.DB.Query(`SELECT seq, product_id, event::text FROM product_changes WHERE seq > $1 ORDER BY seq`, after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var event string
		if err := rows.Scan(&after, &id, &event); err != nil {
			t.Fatal(err)
		}
		if err := g.nc.Publish(change.Subject(id), []byte(event)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return after
}

func TestWebSocketSubscribeReceiveUnsubscribe(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	p := g.create(t, macbook)
	seq := g.relay(t, 0) // the INSERT, before anyone subscribed: not delivered
	path := "/products/" + strconv.FormatInt(p.ProductID, 10)

	mine, other := g.dial(t, nil), g.dial(t, nil)
	for _, c := range []*wsClient{mine, other} {
		c.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d],"id":"s1"}`, p.ProductID))
		if ack := c.expect("ack"); string(ack.ID) != `"s1"` || fmt.Sprint(ack.ProductIDs) != fmt.Sprintf("[%d]", p.ProductID) {
			t.Fatalf("ack %s", ack.raw)
		}
	}
	g.write(t, http.MethodPatch, path, `{"unitsAvailable":5}`)
	seq = g.relay(t, seq)
	for _, c := range []*wsClient{mine, other} {
		ev := c.expect("UPDATE")
		if ev.ProductID != p.ProductID || ev.Version != 2 || !strings.Contains(string(ev.Product), `"unitsAvailable":5`) {
			t.Fatalf("event %s", ev.raw)
		}
	}

	// Unsubscribing removes only my interest (the seed removed everyone's).
	mine.send(fmt.Sprintf(`{"command":"unsubscribe","productIDs":[%d]}`, p.ProductID))
	mine.expect("ack")
	g.write(t, http.MethodPatch, path, `{"unitsAvailable":4}`)
	seq = g.relay(t, seq)
	if ev := other.expect("UPDATE"); ev.Version != 3 {
		t.Fatalf("other got %s", ev.raw)
	}
	// mine gets nothing more: a subscribe to another product is answered
	// next, with no event of the first product before it.
	mine.send(`{"command":"subscribe","productIDs":[999]}`)
	if m := mine.next(); m.Type != "ack" {
		t.Fatalf("after unsubscribing, got %s", m.raw)
	}
	g.write(t, http.MethodDelete, path, "")
	g.relay(t, seq)
	if ev := other.expect("DELETE"); ev.Version != 4 {
		t.Fatalf("delete event %s", ev.raw)
	}
	if err := other.ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 10*time.Second, "the closed socket's subscriptions to go", func() bool { return g.g.hub.Products() == 1 }) // mine still watches 999
}

func TestWebSocketSnapshotAndResume(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	a := g.create(t, macbook)
	b := g.create(t, macbook)
	c := g.create(t, macbook)
	g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", a.ProductID), `{"unitsAvailable":1}`) // a at v2
	g.write(t, http.MethodDelete, fmt.Sprintf("/products/%d", c.ProductID), "")                    // c deleted at v2

	client := g.dial(t, nil)
	// Resume: I have a at v1, b at v1 (current), c at v1 (now deleted), and
	// a snapshot of 424242 which never existed.
	client.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d,%d,%d],"versions":{"%d":1,"%d":1,"%d":1},"id":7}`,
		a.ProductID, b.ProductID, c.ProductID, a.ProductID, b.ProductID, c.ProductID))
	client.expect("ack")
	got := map[int64]message{}
	for range 2 {
		m := client.next()
		got[m.ProductID] = m
	}
	if m := got[a.ProductID]; m.Action != "SNAPSHOT" || m.Version != 2 {
		t.Errorf("a: %s", m.raw)
	}
	if m := got[c.ProductID]; m.Action != "DELETE" || m.Version != 2 {
		t.Errorf("c: %s", m.raw)
	}
	if _, ok := got[b.ProductID]; ok {
		t.Errorf("b was current, yet sent: %s", got[b.ProductID].raw)
	}
	client.send(`{"command":"subscribe","productIDs":[424242],"snapshot":true}`)
	client.expect("ack")
	if m := client.expect("error"); m.Code != "not_found" || fmt.Sprint(m.ProductIDs) != "[424242]" {
		t.Errorf("snapshot of a missing product: %s", m.raw)
	}
	// A product whose delete was pruned from the log: reload it.
	if _, err := g.DB.Exec(`DELETE FROM product_changes WHERE product_id = $1`, c.ProductID); err != nil {
		t.Fatal(err)
	}
	client.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d],"versions":{"%d":1}}`, c.ProductID, c.ProductID))
	client.expect("ack")
	if m := client.expect("error"); m.Code != "resync" {
		t.Errorf("pruned delete: %s", m.raw)
	}
}

func TestWebSocketBadInput(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) {
		c.WSMaxIDsPerCommand, c.WSMaxSubscriptions, c.WSReadLimit = 3, 4, 1024
		c.WSCommandRate, c.WSCommandBurst = 1, 2
	})
	tests := []struct {
		name  string
		frame string
		code  string
	}{
		{"malformed JSON", `{"command":`, "invalid_json"},
		{"unknown command", `{"command":"subscribeAll","productIDs":[1]}`, "unknown_command"},
		{"id zero", `{"command":"subscribe","productIDs":[0]}`, "invalid_product_id"},
		{"id too big", `{"command":"subscribe","productIDs":[9223372036854775808]}`, "invalid_product_id"},
		{"too many ids", `{"command":"subscribe","productIDs":[1,2,3,4]}`, "too_many_ids"},
		{"unknown field", `{"command":"subscribe","productIDs":[1],"all":true}`, "invalid_command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := g.dial(t, nil)
			c.send(tc.frame)
			if m := c.expect("error"); m.Code != tc.code || m.Message == "" {
				t.Errorf("answer %s, want code %s", m.raw, tc.code)
			}
		})
	}
	t.Run("binary frame", func(t *testing.T) {
		c := g.dial(t, nil)
		if err := c.ws.Write(context.Background(), websocket.MessageBinary, []byte(`{"command":"subscribe","productIDs":[1]}`)); err != nil {
			t.Fatal(err)
		}
		if m := c.expect("error"); m.Code != "binary_frame" {
			t.Errorf("answer %s", m.raw)
		}
	})
	t.Run("too many subscriptions", func(t *testing.T) {
		c := g.dial(t, nil)
		c.send(`{"command":"subscribe","productIDs":[1,2,3]}`)
		c.expect("ack")
		c.send(`{"command":"subscribe","productIDs":[4,5]}`)
		if m := c.expect("error"); m.Code != "too_many_subscriptions" {
			t.Errorf("answer %s", m.raw)
		}
	})
	t.Run("rate limit", func(t *testing.T) {
		c := g.dial(t, nil)
		for range 3 {
			c.send(`{"command":"unsubscribe","productIDs":[1]}`)
		}
		c.expect("ack")
		c.expect("ack")
		if m := c.expect("error"); m.Code != "rate_limited" {
			t.Errorf("third command in a burst of 2: %s", m.raw)
		}
	})
	t.Run("oversize frame closes 1009", func(t *testing.T) {
		c := g.dial(t, nil)
		c.send(`{"command":"subscribe","productIDs":[1],"id":"` + strings.Repeat("x", 2000) + `"}`)
		if code := c.closed(); code != websocket.StatusMessageTooBig {
			t.Errorf("close code %v, want 1009", code)
		}
	})
	t.Run("foreign origin refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket",
			&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("dial from a foreign origin: %v %v", err, resp)
		}
	})
	// Nothing above hurt the gateway: a well-behaved client still works.
	c := g.dial(t, http.Header{"Origin": {g.srv.URL}})
	c.send(`{"command":"subscribe","productIDs":[1]}`)
	c.expect("ack")
}

func TestWebSocketConnectionLimit(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, func(c *Config) { c.WSMaxConnections = 2 })
	g.dial(t, nil)
	g.dial(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("third connection: %v %v", err, resp)
	}
}

func TestWebSocketDrain(t *testing.T) {
	t.Parallel()
	g := newWSGateway(t, nil, nil, nil)
	clients := []*wsClient{g.dial(t, nil), g.dial(t, nil), g.dial(t, nil)}
	codes := make(chan websocket.StatusCode, len(clients))
	for _, c := range clients {
		go func() { codes <- c.closed() }()
	}
	start := time.Now()
	g.g.ws.Drain(context.Background(), 300*time.Millisecond)
	for range clients {
		if code := <-codes; code != websocket.StatusGoingAway {
			t.Errorf("close code %v, want 1001", code)
		}
	}
	if elapsed := time.Since(start); elapsed < 150*time.Millisecond {
		t.Errorf("three closes spread over a 300ms window took only %v", elapsed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/websocket", nil); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial while draining: %v", err)
	}
}
