package main

// The hostile-client suite (README, "Security"): real gateway and bridge
// binaries, attacked the way issue 11 did, each case asserting the answer or
// close code and that nothing was written or lost.
//
// These tests do not run in parallel: they run first, one at a time, while
// nothing else runs, so that their floods, processes and the gateway build
// do not starve the package's timing-sensitive parallel tests (a reader
// that must keep up within a 2 s write timeout, say).

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/productwatch/productwatch/api/apitest"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// countProducts returns how many products the database holds.
func countProducts(t *testing.T, pg *testenv.PG) int {
	t.Helper()
	var n int
	if err := pg.DB.QueryRow(`SELECT count(*) FROM products`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// noServerErrors fails the test when the gateway answered any 5xx but the
// allowed ones, or logged at ERROR.
func noServerErrors(t *testing.T, g *liveProcess, allowed ...string) {
	t.Helper()
	for _, line := range strings.Split(g.metricsText(t), "\n") {
		if !strings.HasPrefix(line, "productwatch_http_requests_total{") || !strings.Contains(line, `status="5`) {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || strings.Contains(line, a)
		}
		if !ok {
			t.Errorf("server error answered: %s", line)
		}
	}
	for _, line := range strings.Split(g.proc.Output(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("logged at ERROR: %s", line)
		}
	}
}

// TestHostileREST: bad bodies, ids and headers get clear 4xx answers and
// write nothing; client mistakes are never server errors; the smaller
// findings of issue 11 (TLS suites, HSTS, bearer scheme, escaped "<",
// terse readiness, /websocket without an upgrade) are fixed.
func TestHostileREST(t *testing.T) {
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	g := startLiveGateway(t, pg, n, "BODY_READ_TIMEOUT=1s", "HEADER_READ_TIMEOUT=1s")
	v := apitest.NewValidator(t)
	h1, h2 := h1Client(), h2Client()
	auth := map[string]string{"Authorization": "Bearer " + hostileToken}
	sqlName := `Robert'); DROP TABLE products; --`
	unicodeName := "Ünïcødé ✓ 製品 🚀 \u202e"
	cases := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		code                     string
	}{
		{"malformed JSON", "POST", "/products", `{"manufacturer":`, auth, 400, "invalid_json"},
		{"not an object", "POST", "/products", `[1,2]`, auth, 400, "invalid_body"},
		{"oversize body", "POST", "/products", `{"manufacturer":"` + strings.Repeat("a", 70<<10) + `"}`, auth, 413, "body_too_large"},
		{"invalid UTF-8", "POST", "/products", "{\"manufacturer\":\"\xff\xfe\"}", auth, 400, "invalid_json"},
		{"SQL in an id", "GET", "/products/1%20OR%201=1", "", nil, 400, "invalid_parameter"},
		{"id past int64", "GET", "/products/9223372036854775808", "", nil, 400, "invalid_parameter"},
		{"negative id", "GET", "/products/-1", "", nil, 400, "invalid_parameter"},
		{"Arabic-Indic digit id", "GET", "/products/%D9%A3", "", nil, 400, "invalid_parameter"},
		{"SQL in a query parameter", "GET", "/products?after=0%3BDROP%20TABLE%20products", "", nil, 400, "invalid_parameter"},
		{"no token", "POST", "/products", macbook, nil, 401, "unauthorized"},
		{"wrong scheme", "POST", "/products", macbook, map[string]string{"Authorization": "Basic " + hostileToken}, 401, "unauthorized"},
		{"bearer in lower case", "POST", "/products", macbook, map[string]string{"Authorization": "bearer " + hostileToken}, 201, ""},
		{"BEARER in upper case", "POST", "/products", macbook, map[string]string{"Authorization": "BEARER " + hostileToken}, 201, ""},
		{"SQL-looking text", "POST", "/products", `{"manufacturer":` + jsonString(sqlName) + `,"productName":"x","pricePerUnit":"1EUR","unitsAvailable":1}`, auth, 201, ""},
		{"unicode text", "POST", "/products", `{"manufacturer":` + jsonString(unicodeName) + `,"productName":"x","pricePerUnit":"1EUR","unitsAvailable":1}`, auth, 201, ""},
	}
	created := 0
	for _, tc := range cases {
		for proto, client := range map[string]*http.Client{"HTTP/1.1": h1, "HTTP/2": h2} {
			t.Run(tc.name+" over "+proto, func(t *testing.T) {
				r := g.call(t, client, v, tc.method, tc.path, tc.body, tc.header)
				if r.Status != tc.status || r.errorCode() != tc.code {
					t.Fatalf("= %d %s, want %d %s", r.Status, r.Body, tc.status, tc.code)
				}
				if r.Status == 201 {
					created++
					p := decodeProduct(t, r)
					if want := gjsonField(t, tc.body, "manufacturer"); p.Manufacturer != want {
						t.Errorf("stored %q, sent %q", p.Manufacturer, want)
					}
				}
				if hsts := r.Header.Get("Strict-Transport-Security"); hsts != "max-age=600" {
					t.Errorf("Strict-Transport-Security %q on a %d", hsts, r.Status)
				}
				if r.Status == 401 && (!bytes.Contains(r.Body, []byte("<API_TOKEN>")) || bytes.Contains(r.Body, []byte(`\u003c`))) {
					t.Errorf("401 message: %s", r.Body)
				}
			})
		}
	}
	if got := countProducts(t, pg); got != created {
		t.Errorf("%d products in the database, %d created: a refused request wrote", got, created)
	}

	t.Run("Content-Length larger than the body over HTTP/1.1", func(t *testing.T) {
		c := g.rawDial(t)
		start := time.Now()
		c.write("POST /products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + hostileToken +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"manufacturer\":\"x\"")
		resp, body, err := c.response(10 * time.Second)
		if err != nil {
			t.Fatalf("no answer after %v: %v", time.Since(start), err)
		}
		if resp.StatusCode != 400 || !bytes.Contains(body, []byte(`"invalid_body"`)) {
			t.Errorf("= %d %s", resp.StatusCode, body)
		}
		if waited := time.Since(start); waited > 5*time.Second {
			t.Errorf("answered after %v; BODY_READ_TIMEOUT is 1s", waited)
		}
	})
	t.Run("truncated body, then the client closes over HTTP/1.1", func(t *testing.T) {
		c := g.rawDial(t)
		c.write("POST /products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + hostileToken +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"manufacturer\":\"x\"")
		if err := c.conn.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		resp, body, err := c.response(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 400 || !bytes.Contains(body, []byte(`"invalid_body"`)) {
			t.Errorf("= %d %s", resp.StatusCode, body)
		}
	})
	t.Run("Content-Length larger than the body over HTTP/2", func(t *testing.T) {
		status, body := h2ShortBody(t, g)
		if status != "400" || !strings.Contains(body, `"invalid_body"`) {
			t.Errorf("= %s %s", status, body)
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		c := g.rawDial(t)
		c.write("GET /products HTTP/1.1\r\n")
		start := time.Now()
		cut := make(chan error, 1)
		go func() {
			_ = c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, err := io.ReadAll(c.br) // until the server closes
			cut <- err
		}()
		// One header byte every 100 ms, never finishing: the server must
		// close after HEADER_READ_TIMEOUT (1s here).
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case err := <-cut:
				if err != nil || time.Since(start) > 8*time.Second {
					t.Errorf("connection ended after %v: %v", time.Since(start), err)
				}
				return
			case <-tick.C:
				_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.conn.Write([]byte("X"))
			}
		}
	})
	t.Run("TLS 1.2 offers AEAD suites only", func(t *testing.T) {
		cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
		if conn, err := tls.Dial("tcp", g.addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: cbc}); err == nil {
			conn.Close()
			t.Errorf("handshake with CBC or RSA key exchange suites succeeded (%s)", tls.CipherSuiteName(conn.ConnectionState().CipherSuite))
		}
		conn, err := tls.Dial("tcp", g.addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
		if err != nil {
			t.Fatalf("TLS 1.2 with AES-GCM: %v", err)
		}
		conn.Close()
	})
	t.Run("probes and metrics", func(t *testing.T) {
		if r := g.call(t, h2, v, "GET", "/readyz", "", nil); r.Status != 200 || strings.TrimSpace(string(r.Body)) != `{"status":"ready"}` {
			t.Errorf("public /readyz = %d %s", r.Status, r.Body)
		}
		if r := g.call(t, h2, nil, "GET", "/metrics", "", nil); r.Status != 404 {
			t.Errorf("public /metrics = %d", r.Status)
		}
		if g.metric(t, "productwatch_gateway_panics_total") != 0 || !strings.Contains(g.metricsText(t), "productwatch_http_requests_total") {
			t.Error("METRICS_ADDR does not serve the gateway's metrics")
		}
	})
	t.Run("/websocket without an upgrade", func(t *testing.T) {
		r := g.call(t, h1, nil, "GET", "/websocket", "", nil)
		if r.Status != http.StatusUpgradeRequired || r.errorCode() != "upgrade_required" || r.Header.Get("Upgrade") != "websocket" {
			t.Errorf("HTTP/1.1: %d %v %s", r.Status, r.Header, r.Body)
		}
		r = g.call(t, h2, nil, "GET", "/websocket", "", nil)
		if r.Status != http.StatusBadRequest || r.errorCode() != "upgrade_required" {
			t.Errorf("HTTP/2: %d %s", r.Status, r.Body)
		}
	})
	noServerErrors(t, g)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func gjsonField(t *testing.T, body, field string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m[field].(string)
	return s
}

// h2ShortBody sends, over raw HTTP/2 frames, a POST that declares a
// Content-Length of 100 and ends its stream after 20 bytes, and returns the
// answer's status and body. A reset stream fails the test.
func h2ShortBody(t *testing.T, g *liveProcess) (status, body string) {
	t.Helper()
	conn, err := tls.Dial("tcp", g.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", g.addr}, {":path", "/products"},
		{"content-type", "application/json"}, {"content-length", "100"}, {"authorization", "Bearer " + hostileToken}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, true, []byte(`{"manufacturer":"x"`)); err != nil {
		t.Fatal(err)
	}
	dec := hpack.NewDecoder(4096, nil)
	var out strings.Builder
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (so far: %s %s)", err, status, out.String())
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			for _, hf := range fields {
				if hf.Name == ":status" {
					status = hf.Value
				}
			}
			if f.StreamEnded() {
				return status, out.String()
			}
		case *http2.DataFrame:
			if f.StreamID == 1 {
				out.Write(f.Data())
				if f.StreamEnded() {
					return status, out.String()
				}
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset (%v) instead of an answer", f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY (%v) instead of an answer", f.ErrCode)
		}
	}
}

// TestHostileWebSocket: bad frames and commands are answered or closed
// with the right code, floods are cut, dead clients dropped, and a
// well-behaved client next to them loses nothing.
func TestHostileWebSocket(t *testing.T) {
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	startBridge(t, pg, n)
	g := startLiveGateway(t, pg, n, "WS_PING_INTERVAL=1s", "WS_WRITE_TIMEOUT=3s", "WS_COMMAND_RATE=20", "WS_COMMAND_BURST=40")
	h2 := h2Client()
	created := g.call(t, h2, nil, "POST", "/products", macbook, map[string]string{"Authorization": "Bearer " + hostileToken})
	p := decodeProduct(t, created)

	// The bystander watches p the whole time and must see every version.
	bystander := g.mustDialWS(t, nil)
	bystander.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, p.ProductID))
	bystander.expect("ack")
	var seen []int64
	var seenMu sync.Mutex
	var bystanderErr atomic.Value
	bystanderDone := make(chan struct{})
	go func() {
		defer close(bystanderDone)
		for {
			m, err := bystander.read()
			if err != nil {
				bystanderErr.Store(err)
				return
			}
			seenMu.Lock()
			seen = append(seen, m.Version)
			seenMu.Unlock()
		}
	}()
	// The bystander's read times out after 10 s of silence; keep it busy.
	version := p.Version
	bump := func() {
		t.Helper()
		r := g.call(t, h2, nil, "PATCH", fmt.Sprintf("/products/%d", p.ProductID), `{"unitsAvailable":1}`,
			map[string]string{"Authorization": "Bearer " + hostileToken})
		if r.Status != 200 {
			t.Fatalf("PATCH = %d %s", r.Status, r.Body)
		}
		version = decodeProduct(t, r).Version
	}

	answers := []struct{ name, frame, code string }{
		{"malformed JSON", `{"command":`, "invalid_json"},
		{"not JSON", "\x00\x01 hello", "invalid_json"},
		{"unknown command", `{"command":"subscribé","productIDs":[1]}`, "unknown_command"},
		{"id zero", `{"command":"subscribe","productIDs":[0]}`, "invalid_product_id"},
		{"id past int64", `{"command":"subscribe","productIDs":[9223372036854775808]}`, "invalid_product_id"},
		{"id as SQL", `{"command":"subscribe","productIDs":["1 OR 1=1"]}`, "invalid_product_id"},
		{"too many ids", `{"command":"subscribe","productIDs":[` + strings.TrimSuffix(strings.Repeat("1,", 501), ",") + `]}`, "too_many_ids"},
	}
	for _, tc := range answers {
		t.Run(tc.name, func(t *testing.T) {
			c := g.mustDialWS(t, nil)
			c.send(tc.frame)
			if m := c.expect("error"); m.Code != tc.code {
				t.Errorf("answer %s, want %s", m.raw, tc.code)
			}
			c.send(`{"command":"unsubscribe","productIDs":[1]}`) // still open
			c.expect("ack")
		})
	}
	t.Run("binary frame", func(t *testing.T) {
		c := g.mustDialWS(t, nil)
		if err := c.ws.Write(context.Background(), websocket.MessageBinary, []byte(`{"command":"unsubscribe","productIDs":[1]}`)); err != nil {
			t.Fatal(err)
		}
		if m := c.expect("error"); m.Code != "binary_frame" {
			t.Errorf("answer %s", m.raw)
		}
	})
	t.Run("oversize frame closes 1009", func(t *testing.T) {
		c := g.rawWebSocket(t)
		c.frame(true, 1, []byte(`{"command":"unsubscribe","productIDs":[1],"id":"`+strings.Repeat("x", 40<<10)+`"}`), true)
		if code := c.closeCode(10 * time.Second); code != 1009 {
			t.Errorf("close code %d, want 1009", code)
		}
	})
	t.Run("fragmented command is assembled", func(t *testing.T) {
		c := g.rawWebSocket(t)
		c.frame(false, 1, []byte(`{"command":"unsub`), true)
		c.frame(false, 0, []byte(`scribe","productIDs"`), true)
		c.frame(true, 0, []byte(`:[1]}`), true)
		m, err := c.nextText(10 * time.Second)
		if err != nil || m.Type != "ack" {
			t.Errorf("answer %s %v", m.raw, err)
		}
	})
	t.Run("unmasked frame ends the connection", func(t *testing.T) {
		// RFC 6455 section 5.1: the server must close; coder/websocket
		// drops the connection without a close frame.
		c := g.rawWebSocket(t)
		c.frame(true, 1, []byte(`{"command":"unsubscribe","productIDs":[1]}`), false)
		if code := c.closeCode(10 * time.Second); code != 0 && code != 1002 {
			t.Errorf("close code %d, want the connection closed (1002 or no close frame)", code)
		}
	})
	t.Run("reserved opcode 3 closes 1002", func(t *testing.T) {
		c := g.rawWebSocket(t)
		c.frame(true, 3, []byte("x"), true)
		if code := c.closeCode(10 * time.Second); code != 1002 {
			t.Errorf("close code %d, want 1002", code)
		}
	})
	t.Run("ping flood", func(t *testing.T) {
		c := g.rawWebSocket(t)
		const pings = 2000
		pongs := make(chan int, 1)
		go func() {
			n := 0
			for n < pings {
				op, _, err := c.readFrame(20 * time.Second)
				if err != nil {
					break
				}
				if op == 10 {
					n++
				}
			}
			pongs <- n
		}()
		for range pings {
			c.frame(true, 9, []byte("flood"), true)
		}
		if got := <-pongs; got != pings {
			t.Errorf("%d pongs for %d pings", got, pings)
		}
	})
	t.Run("sustained command flood closes 4029", func(t *testing.T) {
		assertFloodClosed(t, g, websocket.MessageText)
	})
	t.Run("binary frame flood closes 4029", func(t *testing.T) {
		assertFloodClosed(t, g, websocket.MessageBinary)
	})
	t.Run("stalled reader is dropped", func(t *testing.T) {
		before := g.metric(t, `productwatch_ws_clients_dropped_total{reason="ping_timeout"}`)
		c := g.rawWebSocket(t)
		c.frame(true, 1, []byte(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d]}`, p.ProductID)), true)
		bump() // an event queued for it, never read
		// It never reads, so never answers a ping: dropped after the ping
		// interval plus the write timeout.
		testenv.WaitUntil(t, 10*time.Second, "the stalled client to be dropped", func() bool {
			return g.metric(t, `productwatch_ws_clients_dropped_total{reason="ping_timeout"}`) > before
		})
	})
	bump()
	want := version
	testenv.WaitUntil(t, 10*time.Second, "the bystander to see the last version", func() bool {
		seenMu.Lock()
		defer seenMu.Unlock()
		return len(seen) > 0 && seen[len(seen)-1] == want
	})
	seenMu.Lock()
	for i := 1; i < len(seen); i++ {
		if seen[i] != seen[i-1]+1 {
			t.Errorf("bystander saw versions %v: one lost or out of order", seen)
			break
		}
	}
	seenMu.Unlock()
	if err := bystanderErr.Load(); err != nil {
		t.Errorf("bystander's socket failed: %v", err)
	}
	bystander.ws.CloseNow()
	<-bystanderDone
	noServerErrors(t, g)
}

// assertFloodClosed sends 1,000 frames a second for up to 3 s (the limit
// is 20 a second, burst 40) while reading the answers, and expects a close
// with 4029, with no more commands allowed than the limit.
func assertFloodClosed(t *testing.T, g *liveProcess, typ websocket.MessageType) {
	t.Helper()
	c := g.mustDialWS(t, nil)
	c.validator = nil
	var acks, limited atomic.Int64
	closed := make(chan websocket.StatusCode, 1)
	go func() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, data, err := c.ws.Read(ctx)
			cancel()
			if err != nil {
				closed <- websocket.CloseStatus(err)
				return
			}
			switch {
			case bytes.Contains(data, []byte(`"rate_limited"`)):
				limited.Add(1)
			case bytes.Contains(data, []byte(`"ack"`)), bytes.Contains(data, []byte(`"binary_frame"`)):
				acks.Add(1)
			}
		}
	}()
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
loop:
	for time.Since(start) < 3*time.Second {
		select {
		case code := <-closed:
			closed <- code
			break loop
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.ws.Write(ctx, typ, []byte(`{"command":"unsubscribe","productIDs":[1]}`))
			cancel()
			if err != nil {
				break loop
			}
			sent++
		}
	}
	elapsed := time.Since(start)
	var code websocket.StatusCode
	select {
	case code = <-closed:
	case <-time.After(10 * time.Second):
	}
	if code != 4029 {
		t.Errorf("after %d frames in %v: close code %v, want 4029 (%d answered, %d rate_limited)", sent, elapsed, code, acks.Load(), limited.Load())
	}
	if max := int64(40 + 20*elapsed.Seconds() + 1); acks.Load() > max {
		t.Errorf("%d frames let through in %v, the limit allows %d", acks.Load(), elapsed, max)
	}
}

// TestHostileDatabaseStall is issue 11's first finding: with the products
// table locked, snapshots wait off the socket's reader, so pings and other
// commands keep flowing; they answer unavailable at their deadline; REST
// answers 503 with a JSON body; /readyz turns unready; a client that gives
// up is logged at debug, counted as 499. When the lock goes, all recovers.
func TestHostileDatabaseStall(t *testing.T) {
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	g := startLiveGateway(t, pg, n, "WS_CATCHUP_TIMEOUT=1500ms", "REQUEST_TIMEOUT=1500ms", "READY_TIMEOUT=500ms",
		"DB_LOCK_TIMEOUT=30s", "DB_STATEMENT_TIMEOUT=30s", "WS_PING_INTERVAL=300ms", "WS_WRITE_TIMEOUT=2s", "WS_MAX_CONNECTIONS=25")
	h2 := h2Client()
	auth := map[string]string{"Authorization": "Bearer " + hostileToken}
	p := decodeProduct(t, g.call(t, h2, nil, "POST", "/products", macbook, auth))

	tx, err := pg.DB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`LOCK TABLE products, product_changes IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	const clients = 20
	var wg sync.WaitGroup
	for i := range clients {
		c := g.mustDialWS(t, nil)
		wg.Go(func() {
			c.send(fmt.Sprintf(`{"command":"subscribe","id":%d,"productIDs":[%d],"snapshot":true}`, i, p.ProductID))
			if m, err := c.read(); err != nil || m.Type != "ack" {
				t.Errorf("client %d: %s %v", i, m.raw, err)
				return
			}
			// While the snapshot waits, the socket answers pings (300 ms)
			// and commands.
			c.send(`{"command":"unsubscribe","productIDs":[1]}`)
			if m, err := c.read(); err != nil || m.Type != "ack" {
				t.Errorf("client %d: command during the snapshot: %s %v", i, m.raw, err)
				return
			}
			m, err := c.read()
			if err != nil || m.Type != "error" || m.Code != "unavailable" || string(m.ID) != fmt.Sprint(i) {
				t.Errorf("client %d: snapshot answer %s %v, want an unavailable error", i, m.raw, err)
				return
			}
			c.send(`{"command":"unsubscribe","productIDs":[2]}`) // still connected
			if m, err := c.read(); err != nil || m.Type != "ack" {
				t.Errorf("client %d: after the timeout: %s %v", i, m.raw, err)
			}
			c.ws.CloseRead(context.Background()) // go on answering pings
		})
	}
	t.Run("watch-all resume waits off the reader", func(t *testing.T) {
		c := g.mustDialWS(t, nil)
		c.send(`{"command":"subscribe","all":true,"since":0}`)
		c.send(`{"command":"unsubscribe","productIDs":[3]}`)
		var sawAck, sawAllAck bool
		for !sawAck || !sawAllAck {
			m := c.next()
			switch {
			case m.Type == "ack" && strings.Contains(m.raw, `"all":true`):
				sawAllAck = true
			case m.Type == "ack":
				sawAck = true
			default:
				t.Fatalf("before both acks: %s", m.raw)
			}
		}
		if m := c.expect("error"); m.Code != "unavailable" || !strings.Contains(m.raw, `"all":true`) {
			t.Errorf("resume under the lock: %s", m.raw)
		}
		c.send(`{"command":"unsubscribe","all":true}`)
		c.expect("ack")
	})
	t.Run("REST answers 503 with a JSON body", func(t *testing.T) {
		start := time.Now()
		r := g.call(t, h2, apitest.NewValidator(t), "GET", fmt.Sprintf("/products/%d", p.ProductID), "", nil)
		if r.Status != 503 || r.errorCode() != "unavailable" || time.Since(start) > 10*time.Second {
			t.Errorf("= %d %s after %v", r.Status, r.Body, time.Since(start))
		}
	})
	t.Run("not ready", func(t *testing.T) {
		testenv.WaitUntil(t, 10*time.Second, "/readyz to say not ready", func() bool {
			return g.call(t, h2, nil, "GET", "/readyz", "", nil).Status == 503
		})
	})
	t.Run("a client that gives up is a 499, not an error", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", g.url(fmt.Sprintf("/products/%d", p.ProductID)), nil)
		if resp, err := h1Client().Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("answered %d under the lock", resp.StatusCode)
		}
		testenv.WaitUntil(t, 10*time.Second, "the 499 to be counted", func() bool {
			return g.metric(t, `productwatch_http_requests_total{method="GET",route="/products/:id",status="499"}`) == 1
		})
	})
	wg.Wait()
	if d := g.metric(t, `productwatch_ws_clients_dropped_total{reason="ping_timeout"}`); d != 0 {
		t.Errorf("%v healthy clients dropped for ping timeout while the database stalled", d)
	}
	if got := g.metric(t, `productwatch_ws_catchups_total{outcome="timeout"}`); got != clients {
		t.Errorf("%v catch-up timeouts counted, want %d", got, clients)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 10*time.Second, "ready again", func() bool { return g.call(t, h2, nil, "GET", "/readyz", "", nil).Status == 200 })
	c := g.mustDialWS(t, nil)
	c.send(fmt.Sprintf(`{"command":"subscribe","productIDs":[%d],"snapshot":true}`, p.ProductID))
	c.expect("ack")
	if m := c.expect("SNAPSHOT"); m.Version != p.Version {
		t.Errorf("snapshot after the stall: %s", m.raw)
	}
	if !strings.Contains(g.proc.Output(), "client went away") {
		t.Error("the client that went away was not logged (at debug)")
	}
	noServerErrors(t, g, `status="503"`)
}

// TestNATSInterestLimitConcurrent: subscribes that arrive together cannot
// all pass the NATS interest limit: each reserves its new interests until
// the hub has them. Four sockets ask for 400 new products each at once,
// with room for 1,000: two are acknowledged, two refused, and the gateway
// holds 800 NATS subscriptions.
func TestNATSInterestLimitConcurrent(t *testing.T) {
	t.Parallel()
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	g := startLiveGateway(t, pg, n, "WS_MAX_NATS_INTERESTS=1000", "WS_MAX_SUBSCRIPTIONS_PER_ADDR=5000")
	var socks []*wsClient
	for range 4 {
		socks = append(socks, g.mustDialWS(t, nil))
	}
	for i, c := range socks {
		parts := make([]string, 400)
		for j := range parts {
			parts[j] = fmt.Sprint(int64(1e12) + int64(i*400+j)) // no such products
		}
		c.send(`{"command":"subscribe","productIDs":[` + strings.Join(parts, ",") + `]}`)
	}
	acks, refused := 0, 0
	for _, c := range socks {
		switch m := c.next(); {
		case m.Type == "ack":
			acks++
		case m.Code == "unavailable":
			refused++
		default:
			t.Fatalf("answer %s", m.raw)
		}
	}
	held := g.metric(t, "productwatch_ws_nats_subscriptions")
	if acks != 2 || refused != 2 || held != 800 {
		t.Errorf("%d acknowledged, %d refused, %v NATS subscriptions; want 2, 2, 800 (limit 1,000)", acks, refused, held)
	}
}

// TestHostileLimits: limits per client address (behind a trusted proxy,
// by X-Forwarded-For) and per gateway hold, and made-up product ids count.
func TestHostileLimits(t *testing.T) {
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	g := startLiveGateway(t, pg, n, "TRUSTED_PROXIES=127.0.0.1/32", "WS_MAX_CONNECTIONS_PER_ADDR=3",
		"WS_MAX_SUBSCRIPTIONS_PER_ADDR=1000", "WS_MAX_TOTAL_SUBSCRIPTIONS=2500", "WS_MAX_NATS_INTERESTS=2000")
	from := func(addr string) http.Header { return http.Header{"X-Forwarded-For": {"10.9.9.9, " + addr}} }
	ids := func(first, count int) string {
		parts := make([]string, count)
		for i := range parts {
			parts[i] = fmt.Sprint(int64(1e12) + int64(first+i)) // no such products
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	subscribe := func(c *wsClient, list string) message {
		c.send(`{"command":"subscribe","productIDs":` + list + `}`)
		return c.next()
	}

	t.Run("connections per address", func(t *testing.T) {
		for range 3 {
			g.mustDialWS(t, from("198.51.100.1"))
		}
		_, resp, err := g.dialWS(t, from("198.51.100.1"))
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("fourth connection: %v %v", err, resp)
		}
		// Another address behind the same proxy is not affected.
		g.mustDialWS(t, from("198.51.100.2"))
	})
	a1, a2, a3 := g.mustDialWS(t, from("203.0.113.1")), g.mustDialWS(t, from("203.0.113.1")), g.mustDialWS(t, from("203.0.113.1"))
	t.Run("subscriptions per address, made-up ids included", func(t *testing.T) {
		if m := subscribe(a1, ids(0, 500)); m.Type != "ack" {
			t.Fatal(m.raw)
		}
		if m := subscribe(a2, ids(500, 500)); m.Type != "ack" {
			t.Fatal(m.raw)
		}
		if m := subscribe(a3, ids(1000, 1)); m.Code != "too_many_subscriptions" {
			t.Errorf("the 1,001st subscription of one address: %s", m.raw)
		}
	})
	b := g.mustDialWS(t, from("203.0.113.2"))
	c := g.mustDialWS(t, from("203.0.113.3"))
	t.Run("NATS interests per gateway", func(t *testing.T) {
		if m := subscribe(b, ids(2000, 500)); m.Type != "ack" {
			t.Fatal(m.raw)
		}
		if m := subscribe(b, ids(2500, 500)); m.Type != "ack" { // 2,000 products watched now
			t.Fatal(m.raw)
		}
		if m := subscribe(c, ids(5000, 1)); m.Code != "unavailable" {
			t.Errorf("a 2,001st product: %s", m.raw)
		}
		if m := subscribe(c, ids(0, 500)); m.Type != "ack" { // watched already: no new interest
			t.Errorf("products watched already: %s", m.raw)
		}
	})
	t.Run("subscriptions per gateway", func(t *testing.T) {
		d := g.mustDialWS(t, from("203.0.113.4"))
		if m := subscribe(d, ids(0, 1)); m.Code != "unavailable" { // 2,501st subscription
			t.Errorf("the 2,501st subscription: %s", m.raw)
		}
	})
	for _, series := range []string{"subscriptions_per_addr", "nats_interests", "subscriptions_total", "connections_per_addr"} {
		if g.metric(t, `productwatch_ws_limit_refusals_total{limit="`+series+`"}`) < 1 {
			t.Errorf("refusal by %s not counted", series)
		}
	}
	t.Run("closing gives the budget back", func(t *testing.T) {
		a1.ws.CloseNow()
		a2.ws.CloseNow()
		testenv.WaitUntil(t, 10*time.Second, "the closed sockets' subscriptions to go", func() bool {
			return g.metric(t, "productwatch_ws_subscriptions") == 1500
		})
		if m := subscribe(a3, ids(0, 500)); m.Type != "ack" {
			t.Errorf("after closing: %s", m.raw)
		}
	})
	noServerErrors(t, g)
}

// TestHostileConfig: the gateway refuses to start with a dangerous setting
// and says why; with writes disabled it warns.
func TestHostileConfig(t *testing.T) {
	path := testenv.Program(t, "gateway")
	cases := []struct{ env, why string }{
		{"ALLOWED_ORIGINS=*", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=**", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=*.*", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=*:*", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=?*", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=shop.example.com,*.com", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=shop.*", "wildcard in its domain"},
		{"ALLOWED_ORIGINS=[a-", "not a valid pattern"},
		{"API_TOKEN=a", "at least 16"},
		{"TRUSTED_PROXIES=10.0.0.0/33", "TRUSTED_PROXIES"},
	}
	for _, tc := range cases {
		t.Run(tc.env, func(t *testing.T) {
			cmd := exec.Command(path)
			cmd.Env = append(cmd.Environ(), "DATABASE_URL=postgres://127.0.0.1:1/x", tc.env)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), tc.why) {
				t.Errorf("exit %v, output %q; want exit 2 saying %q", err, out, tc.why)
			}
		})
	}
	t.Run("writes disabled: a warning", func(t *testing.T) {
		pg := testenv.Postgres(t)
		p := testenv.StartProcess(t, "gateway", path, "DATABASE_URL="+pg.DSN, "API_TOKEN=", "LISTEN_ADDR="+testenv.FreeAddr(t),
			"METRICS_ADDR="+testenv.FreeAddr(t), "LOG_FORMAT=text", "NATS_URL=")
		testenv.WaitUntil(t, 10*time.Second, "the warning", func() bool {
			return strings.Contains(p.Output(), `level=WARN msg="API_TOKEN is not set`)
		})
	})
}
