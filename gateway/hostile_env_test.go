package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/productwatch/productwatch/api/apitest"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// hostileToken is the API token of the gateways the hostile-client suite
// runs (at least 16 bytes, as the gateway demands).
const hostileToken = "hostile-suite-token-0123456789abcdef"

// liveProcess is a real gateway binary (HTTPS with its development
// certificate, HTTP/2) on a test database and NATS, with the real bridge in
// front of the same database.
type liveProcess struct {
	pg   *testenv.PG
	proc *testenv.Process
	addr string // host:port of the public listener
	ops  string // http://host:port of METRICS_ADDR
}

// startLiveGateway builds and starts the gateway binary with env on top of
// the suite's defaults, and waits until it is ready.
func startLiveGateway(t *testing.T, pg *testenv.PG, n *testenv.NATSServer, env ...string) *liveProcess {
	t.Helper()
	path := testenv.Program(t, "gateway")
	g := &liveProcess{pg: pg, addr: testenv.FreeAddr(t)}
	metrics := testenv.FreeAddr(t)
	g.ops = "http://" + metrics
	base := []string{"DATABASE_URL=" + pg.DSN, "NATS_URL=" + n.URL, "NATS_USER=" + n.Gateway.User, "NATS_PASSWORD=" + n.Gateway.Password,
		"LISTEN_ADDR=" + g.addr, "METRICS_ADDR=" + metrics,
		"API_TOKEN=" + hostileToken, "LOG_FORMAT=text", "LOG_LEVEL=debug", "HSTS_MAX_AGE=600", "DRAIN_WINDOW=0s",
		"ALLOWED_ORIGINS=", "TLS_CERT=", "TLS_KEY=", "INSECURE_HTTP=false"}
	g.proc = testenv.StartProcess(t, "gateway", path, append(base, env...)...)
	testenv.WaitUntil(t, 10*time.Second, "the gateway to be ready", func() bool {
		select {
		case <-g.proc.Exited():
			t.Fatalf("the gateway exited: %v\n%s", g.proc.Err(), g.proc.Output())
		default:
		}
		resp, err := http.Get(g.ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return g
}

func (g *liveProcess) url(path string) string { return "https://" + g.addr + path }

// h1Client speaks HTTP/1.1 only (over TLS, trusting the development
// certificate).
func h1Client() *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
}

// call sends one request with client and returns the whole answer,
// checked against api/openapi.yaml when v is not nil.
func (g *liveProcess) call(t *testing.T, client *http.Client, v *apitest.Validator, method, path, body string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, g.url(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, val := range header {
		req.Header.Set(k, val)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the answer: %v", method, path, err)
	}
	if v != nil {
		check, _ := http.NewRequest(method, g.url(path), strings.NewReader(body))
		check.Header = req.Header.Clone()
		v.Check(t, check, resp, data)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// metric returns the value of one series of the gateway's /metrics (the
// whole line up to the value, e.g. `productwatch_ws_connections`), 0 when
// absent.
func (g *liveProcess) metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get(g.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// metricsText returns the whole /metrics page.
func (g *liveProcess) metricsText(t testing.TB) string {
	t.Helper()
	resp, err := http.Get(g.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}

// dialWS opens a WebSocket to the gateway with header (nil: none).
func (g *liveProcess) dialWS(t *testing.T, header http.Header) (*wsClient, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "wss://"+g.addr+"/websocket", &websocket.DialOptions{HTTPClient: h1Client(), HTTPHeader: header})
	if err != nil {
		return nil, resp, err
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &wsClient{t: t, ws: ws, validator: apitest.NewMessageValidator(t)}, resp, nil
}

func (g *liveProcess) mustDialWS(t *testing.T, header http.Header) *wsClient {
	t.Helper()
	c, resp, err := g.dialWS(t, header)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	return c
}

// rawConn is a TLS connection to the gateway speaking HTTP/1.1 by hand:
// for what well-behaved clients will not send.
type rawConn struct {
	t    *testing.T
	conn *tls.Conn
	br   *bufio.Reader
}

func (g *liveProcess) rawDial(t *testing.T) *rawConn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", g.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// response reads one HTTP answer (within timeout).
func (c *rawConn) response(timeout time.Duration) (*http.Response, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// upgrade performs the WebSocket handshake by hand; afterwards frames are
// written with frame and read with readFrame.
func (g *liveProcess) rawWebSocket(t *testing.T) *rawConn {
	t.Helper()
	c := g.rawDial(t)
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	c.write("GET /websocket HTTP/1.1\r\nHost: " + g.addr + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\n\r\n")
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", err, resp)
	}
	return c
}

// frame writes one WebSocket frame; masked is what RFC 6455 demands of a
// client.
func (c *rawConn) frame(fin bool, opcode byte, payload []byte, masked bool) {
	c.t.Helper()
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	hdr := []byte{b0}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, maskBit|byte(n))
	case n < 1<<16:
		hdr = append(hdr, maskBit|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, maskBit|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	data := payload
	if masked {
		key := [4]byte{0x12, 0x34, 0x56, 0x78}
		hdr = append(hdr, key[:]...)
		data = make([]byte, len(payload))
		for i, b := range payload {
			data[i] = b ^ key[i%4]
		}
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write(append(hdr, data...)); err != nil {
		c.t.Fatalf("write frame: %v", err)
	}
}

// readFrame reads one server frame (servers do not mask).
func (c *rawConn) readFrame(timeout time.Duration) (opcode byte, payload []byte, err error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var hdr [2]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0] & 0x0f, payload, nil
}

// closeCode reads frames until a close frame and returns its code: 0 when
// the connection ends without one, -1 when timeout passes first.
func (c *rawConn) closeCode(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		op, payload, err := c.readFrame(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return -1
			}
			return 0
		}
		if op == 8 {
			if len(payload) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(payload))
		}
	}
	return -1
}

// nextText reads frames until a text one and decodes it.
func (c *rawConn) nextText(timeout time.Duration) (message, error) {
	deadline := time.Now().Add(timeout)
	for {
		op, payload, err := c.readFrame(time.Until(deadline))
		if err != nil {
			return message{}, err
		}
		switch op {
		case 1:
			var m message
			err := json.Unmarshal(payload, &m)
			m.raw = string(payload)
			return m, err
		case 8:
			return message{}, fmt.Errorf("closed: %x", payload)
		}
	}
}
