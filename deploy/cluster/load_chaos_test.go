//go:build chaos

package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// wsClient is one browser-like client: a WebSocket over WSS through
// haproxy that subscribes to its products, keeps the highest version it has
// of each, and when its connection ends reconnects (backoff with full
// jitter) and subscribes again with those versions, as the JS client does.
type wsClient struct {
	id       int
	url      string
	products []int64
	tls      *tls.Config

	mu          sync.Mutex
	versions    map[int64]int64 // highest version seen per product
	first       map[int64]int64 // the first version seen per product (its first snapshot)
	received    int             // change events and snapshots
	stale       int             // a version lower than one already seen
	duplicates  int             // the same version again
	errors      []string        // error messages from the gateway
	connected   bool            // subscribed (ack received) on a live socket
	lostAt      time.Time       // when the last connection ended (zero while connected)
	maxOffline  time.Duration   // longest time from losing a connection to the ack on the next
	reconnects  int             // connections after the first
	gateways    map[string]int  // connections per gateway (haproxy's X-Productwatch-Gateway)
	lastGateway string
	closeCodes  map[websocket.StatusCode]int
}

func newClient(id int, url string, tlsCfg *tls.Config, products []int64) *wsClient {
	return &wsClient{id: id, url: url, tls: tlsCfg, products: products, versions: map[int64]int64{}, first: map[int64]int64{},
		gateways: map[string]int{}, closeCodes: map[websocket.StatusCode]int{}}
}

// event is what the client reads of each server message.
type event struct {
	Type      string `json:"type"`
	Action    string `json:"action"`
	ProductID int64  `json:"productId"`
	Version   int64  `json:"version"`
	Code      string `json:"code"`
	Message   string `json:"message"`
}

// clientAddrs is how many loopback source addresses the clients spread
// over (127.0.0.2 and up), as many browsers come from many addresses: the
// gateways limit sockets per client address (WS_MAX_CONNECTIONS_PER_ADDR,
// 100), and haproxy passes each client's address on in X-Forwarded-For.
const clientAddrs = 20

// run keeps the client connected until ctx ends.
func (c *wsClient) run(ctx context.Context) {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+c.id%clientAddrs))}}
	httpClient := &http.Client{Transport: &http.Transport{TLSClientConfig: c.tls, DialContext: dialer.DialContext}}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.session(ctx, httpClient)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if c.connected || c.lostAt.IsZero() {
			c.lostAt = time.Now()
		}
		wasConnected := c.connected
		c.connected = false
		if code := websocket.CloseStatus(err); code != -1 {
			c.closeCodes[code]++
		}
		c.mu.Unlock()
		if wasConnected {
			backoff = 100 * time.Millisecond
		}
		// Full jitter: a crowd of clients dropped at once does not come back at once.
		wait := time.Duration(rand.Int64N(int64(backoff)))
		backoff = min(2*backoff, 2*time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// session is one connection: dial, subscribe with the versions held, read
// until the connection ends.
func (c *wsClient) session(ctx context.Context, httpClient *http.Client) error {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, resp, err := websocket.Dial(dialCtx, c.url, &websocket.DialOptions{HTTPClient: httpClient})
	cancel()
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	gateway := resp.Header.Get("X-Productwatch-Gateway")

	c.mu.Lock()
	versions := map[string]int64{}
	for _, p := range c.products {
		if v, ok := c.versions[p]; ok {
			versions[strconv.FormatInt(p, 10)] = v
		}
	}
	c.mu.Unlock()
	cmd := map[string]any{"command": "subscribe", "productIDs": c.products, "snapshot": true, "id": c.id}
	if len(versions) > 0 {
		cmd["versions"] = versions
	}
	data, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if err := conn.Write(ctx, websocket.MessageText, data); err != nil {
		return err
	}
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		var ev event
		if err := json.Unmarshal(msg, &ev); err != nil {
			return fmt.Errorf("client %d: undecodable message %q: %w", c.id, msg, err)
		}
		c.mu.Lock()
		switch {
		case ev.Type == "ack":
			if !c.connected {
				if !c.lostAt.IsZero() {
					c.maxOffline = max(c.maxOffline, time.Since(c.lostAt))
					c.reconnects++
				}
				c.lostAt = time.Time{}
				c.connected = true
				c.gateways[gateway]++
				c.lastGateway = gateway
			}
		case ev.Type == "error":
			c.errors = append(c.errors, ev.Code+": "+ev.Message)
		case ev.Action != "":
			c.received++
			have, ok := c.versions[ev.ProductID]
			switch {
			case ok && ev.Version < have:
				c.stale++
			case ok && ev.Version == have:
				c.duplicates++
			default:
				c.versions[ev.ProductID] = ev.Version
				if !ok {
					c.first[ev.ProductID] = ev.Version
				}
			}
		}
		c.mu.Unlock()
	}
}

func (c *wsClient) isConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// fleet is every client of a test.
type fleet struct {
	clients []*wsClient
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startFleet connects n clients through the load balancer, each watching
// perClient of the products, and waits until all are subscribed.
func startFleet(t *testing.T, env *chaosEnv, n, perClient int, products []int64) *fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{cancel: cancel}
	for i := range n {
		watch := make([]int64, 0, perClient)
		for k := range perClient {
			watch = append(watch, products[(i*7+k*13)%len(products)])
		}
		sort.Slice(watch, func(a, b int) bool { return watch[a] < watch[b] })
		watch = compactIDs(watch)
		c := newClient(i+1, env.wsURL, env.tls, watch)
		f.clients = append(f.clients, c)
		f.wg.Go(func() { c.run(ctx) })
		if i%25 == 24 {
			time.Sleep(20 * time.Millisecond) // pace the TLS handshakes a little; not a synchronisation
		}
	}
	t.Cleanup(f.stop)
	start := time.Now()
	testenv.WaitUntil(t, 60*time.Second, "every client to be subscribed", func() bool { return f.connectedCount() == n })
	t.Logf("%d clients subscribed through haproxy in %v; per gateway: %v", n, time.Since(start).Round(time.Millisecond), f.byGateway())
	return f
}

func compactIDs(ids []int64) []int64 {
	out := ids[:0]
	for i, id := range ids {
		if i == 0 || id != ids[i-1] {
			out = append(out, id)
		}
	}
	return out
}

func (f *fleet) stop() {
	f.cancel()
	f.wg.Wait()
}

func (f *fleet) connectedCount() int {
	n := 0
	for _, c := range f.clients {
		if c.isConnected() {
			n++
		}
	}
	return n
}

// byGateway counts the clients by the gateway of their current connection.
func (f *fleet) byGateway() map[string]int {
	out := map[string]int{}
	for _, c := range f.clients {
		c.mu.Lock()
		if c.connected {
			out[c.lastGateway]++
		}
		c.mu.Unlock()
	}
	return out
}

// clientsOn returns the clients whose current connection is to gateway.
func (f *fleet) clientsOn(gateway string) []*wsClient {
	var out []*wsClient
	for _, c := range f.clients {
		c.mu.Lock()
		if c.connected && c.lastGateway == gateway {
			out = append(out, c)
		}
		c.mu.Unlock()
	}
	return out
}

// writer changes products at a bounded rate for a bounded time, through
// PostgreSQL directly or through the REST API behind haproxy.
type writer struct {
	products []int64
	rest     *restWriter // nil: SQL
	db       *sql.DB
	ok, fail atomic.Int64

	mu       sync.Mutex
	failures []string // the first few errors, for the report
}

// run makes changes with `workers` goroutines, each at most perWorker per
// second, until d has passed or ctx ends. A change already sent is waited
// for (up to 10 s), never cut off, so that when run returns every change it
// made has committed or failed.
func (w *writer) run(ctx context.Context, workers int, perWorker float64, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() {
			interval := time.Duration(float64(time.Second) / perWorker)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			r := rand.New(rand.NewPCG(uint64(k), 42))
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				id := w.products[r.IntN(len(w.products))]
				reqCtx, cancelReq := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				var err error
				if w.rest != nil {
					err = w.rest.update(reqCtx, id)
				} else {
					_, err = w.db.ExecContext(reqCtx, `UPDATE products SET units_available = units_available + 1 WHERE product_id = $1`, id)
				}
				cancelReq()
				if err != nil {
					w.fail.Add(1)
					w.mu.Lock()
					if len(w.failures) < 5 {
						w.failures = append(w.failures, err.Error())
					}
					w.mu.Unlock()
					continue
				}
				w.ok.Add(1)
			}
		})
	}
	wg.Wait()
}

// createProducts inserts n products directly in PostgreSQL.
func createProducts(t *testing.T, db *sql.DB, n int) []int64 {
	t.Helper()
	rows, err := db.Query(`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'chaos', 'product ' || g, 1.00, 'EUR', 0 FROM generate_series(1, $1) g RETURNING product_id`, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
	return ids
}

// report is what every chaos test prints.
type report struct {
	name                  string
	finalOK, finalPairs   int // client×product pairs at the final version / all
	delivered, committed  int // events received / versions committed for watched products, summed over clients
	stale, duplicates     int // at the clients
	streamHave, streamLog int // changes in the stream with a log seq / changes in the log
	streamMissing         int
	streamDuplicates      int
	streamExtra           int
	recovery              map[string]time.Duration
	maxOffline            time.Duration
	clientErrors          int
	conflated, dropped    float64 // the running gateways' productwatch_ws_conflated_total and clients_dropped_total
	writes, writeFailures int64
	writeErrors           []string
	elapsed               time.Duration
}

func (r report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "CHAOS %s (%v)\n", r.name, r.elapsed.Round(time.Millisecond))
	if r.finalPairs > 0 {
		fmt.Fprintf(&b, "  clients: final version reached %d/%d (client×product), missing %d, stale %d, duplicates %d, error messages %d\n",
			r.finalOK, r.finalPairs, r.finalPairs-r.finalOK, r.stale, r.duplicates, r.clientErrors)
		fmt.Fprintf(&b, "  clients: versions delivered/expected %d/%d (a resumed client gets the latest state, not each version it missed)\n",
			r.delivered, r.committed)
		fmt.Fprintf(&b, "  clients: longest time without a connection %v; the running gateways conflated %.0f events for clients behind, dropped %.0f clients\n",
			r.maxOffline.Round(time.Millisecond), r.conflated, r.dropped)
	}
	fmt.Fprintf(&b, "  stream: delivered/expected %d/%d changes, missing %d, duplicates %d, not in the log %d\n",
		r.streamHave, r.streamLog, r.streamMissing, r.streamDuplicates, r.streamExtra)
	fmt.Fprintf(&b, "  writes: %d committed, %d failed (refused or cut by the fault: not committed, or committed and in the log)\n", r.writes, r.writeFailures)
	for _, e := range r.writeErrors {
		fmt.Fprintf(&b, "  write error: %s\n", e)
	}
	keys := make([]string, 0, len(r.recovery))
	for k := range r.recovery {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  recovery: %s %v\n", k, r.recovery[k].Round(time.Millisecond))
	}
	return b.String()
}

// verifyClients waits until every client holds the final version of every
// product it watches (or the deadline passes) and fills in the client half
// of the report. A client is expected to see every version of a product
// from the first it got (its snapshot) to the final one.
func verifyClients(t *testing.T, db *sql.DB, f *fleet, r *report) {
	t.Helper()
	var final map[int64]int64
	atFinal := func() (ok, pairs int) {
		// Read again each time: a change whose client gave up waiting may
		// still commit.
		final = productVersions(t, db)
		for _, c := range f.clients {
			c.mu.Lock()
			for _, p := range c.products {
				pairs++
				if c.versions[p] == final[p] {
					ok++
				}
			}
			c.mu.Unlock()
		}
		return ok, pairs
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, pairs := atFinal()
		r.finalOK, r.finalPairs = ok, pairs
		if ok == pairs || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the clients' state until a deadline
	}
	shown := 0
	for _, c := range f.clients {
		c.mu.Lock()
		for _, p := range c.products {
			if c.versions[p] != final[p] && shown < 15 {
				shown++
				t.Logf("client %d product %d: has version %d (first %d), final %d; connections per gateway %v, now on %s (connected %v), close codes %v",
					c.id, p, c.versions[p], c.first[p], final[p], c.gateways, c.lastGateway, c.connected, c.closeCodes)
			}
		}
		c.mu.Unlock()
	}
	for _, c := range f.clients {
		c.mu.Lock()
		r.delivered += c.received
		r.stale += c.stale
		r.duplicates += c.duplicates
		r.clientErrors += len(c.errors)
		r.maxOffline = max(r.maxOffline, c.maxOffline)
		for _, p := range c.products {
			if first, ok := c.first[p]; ok {
				r.committed += int(final[p] - first + 1)
			}
		}
		if len(c.errors) > 0 {
			t.Errorf("client %d got error messages: %v", c.id, c.errors)
		}
		c.mu.Unlock()
	}
}

func productVersions(t *testing.T, db *sql.DB) map[int64]int64 {
	t.Helper()
	rows, err := db.Query(`SELECT product_id, version FROM products`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// verifyStream reads the whole PRODUCTS stream as the debug user (an
// ordered consumer) once the bridge has caught up, and compares it with the
// change log: every seq once, nothing else.
func verifyStream(t *testing.T, env *chaosEnv, r *report) {
	t.Helper()
	js := debugStream(t, env, "chaos-verify",
		// The ordered consumer deletes its consumer when it is done; the
		// debug user may not delete (the server removes it when idle).
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, "PRODUCTS")
	if err != nil {
		t.Fatalf("stream PRODUCTS: %v", err)
	}
	// Wait until the stream holds as many messages as the log has changes
	// (the bridge may still be catching up), within the deadline.
	var msgs uint64
	var logSeqs []int64
	for {
		logSeqs = changeLogSeqs(t, env.db)
		info, err := stream.Info(ctx)
		if err == nil {
			msgs = info.State.Msgs
			if msgs >= uint64(len(logSeqs)) {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond) // polling the stream until a deadline
	}
	// Read every message by its stream sequence (direct get, which the
	// debug user may do), 8 requests at a time.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	seen := map[int64]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan uint64)
	for range 8 {
		wg.Go(func() {
			for seq := range next {
				m, err := stream.GetMsg(ctx, seq)
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					continue
				}
				if err != nil {
					t.Errorf("stream message %d: %v", seq, err)
					continue
				}
				id, err := strconv.ParseInt(m.Header.Get(jetstream.MsgIDHeader), 10, 64)
				mu.Lock()
				if err != nil {
					t.Errorf("stream message %d on %s without a seq: %v", seq, m.Subject, err)
				} else {
					seen[id]++
				}
				mu.Unlock()
			}
		})
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		next <- seq
	}
	close(next)
	wg.Wait()
	_ = msgs
	inLog := map[int64]bool{}
	for _, s := range logSeqs {
		inLog[s] = true
		if seen[s] == 0 {
			r.streamMissing++
		} else {
			r.streamHave++
		}
		if seen[s] > 1 {
			r.streamDuplicates += seen[s] - 1
		}
	}
	for s := range seen {
		if !inLog[s] {
			r.streamExtra++
		}
	}
	r.streamLog = len(logSeqs)
}

func changeLogSeqs(t *testing.T, db *sql.DB) []int64 {
	t.Helper()
	var seqs []int64
	rows, err := db.Query(`SELECT seq FROM product_changes ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return seqs
}

// gatewayCounters sums two counters over the running gateways' metrics
// (METRICS_ADDR, else the public port of a gateway that still serves them
// there).
func gatewayCounters(ctx context.Context, c *cluster) (conflated, dropped float64) {
	for _, g := range c.st.Gateways {
		if !g.Alive() {
			continue
		}
		body, err := httpGet(ctx, "http://"+loopback(c.st.Spec.Ports.GatewayMetrics+g.Index-1)+"/metrics", nil)
		if err != nil {
			if body, err = httpGet(ctx, c.gatewayURL(g.Index)+"/metrics", nil); err != nil {
				continue
			}
		}
		for line := range strings.SplitSeq(body, "\n") {
			name, value, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				continue
			}
			switch {
			case name == "productwatch_ws_conflated_total":
				conflated += v
			case strings.HasPrefix(name, "productwatch_ws_clients_dropped_total"):
				dropped += v
			}
		}
	}
	return conflated, dropped
}
