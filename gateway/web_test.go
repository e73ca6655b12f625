package main

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// servePage runs the real server (HTTPS, HTTP/2, self-signed, on a fresh
// database, no NATS) and returns its base URL and a stop function that
// cancels it and returns what Serve returned (also called at cleanup).
func servePage(t *testing.T) (string, func() error) {
	t.Helper()
	pg := testenv.Postgres(t)
	cfg, err := loadConfig([]string{"-listen-addr", "127.0.0.1:0", "-hsts-max-age", "600", "-shutdown-timeout", "5s"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL = pg.DSN
	g, err := newGateway(cfg, pg.DB, nil, newResyncQueue(), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	var once sync.Once
	var served error
	stop := func() error {
		once.Do(func() { cancel(); served = <-done })
		return served
	}
	t.Cleanup(func() { _ = stop() })
	return "https://" + ln.Addr().String(), stop
}

func h2Client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, // the development certificate
		ForceAttemptHTTP2:  true,
		DisableCompression: true,
	}}
}

// TestPageEarlyHintsAndHeaders: the page answers 103 Early Hints with the
// preload links, then the page with its security headers; assets come with
// ETag (304 on revalidation) and gzip when asked.
func TestPageEarlyHintsAndHeaders(t *testing.T) {
	t.Parallel()
	base, _ := servePage(t)
	var hints []http.Header
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code == http.StatusEarlyHints {
			hints = append(hints, http.Header(h))
		}
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, base+"/", nil)
	resp, err := h2Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || !strings.Contains(string(body), `<script type="module" src="/app.js">`) {
		t.Fatalf("GET / = %s %d", resp.Proto, resp.StatusCode)
	}
	if len(hints) != 1 || !strings.Contains(strings.Join(hints[0]["Link"], ","), "</main.css>; rel=preload; as=style") {
		t.Errorf("103 Early Hints: %v", hints)
	}
	for header, want := range map[string]string{
		"Content-Security-Policy":   "default-src 'self'",
		"Strict-Transport-Security": "max-age=600",
		"X-Content-Type-Options":    "nosniff",
		"Referrer-Policy":           "no-referrer",
	} {
		if !strings.Contains(resp.Header.Get(header), want) {
			t.Errorf("%s = %q, want %q", header, resp.Header.Get(header), want)
		}
	}

	css, _ := http.NewRequest(http.MethodGet, base+"/main.css", nil)
	css.Header.Set("Accept-Encoding", "gzip")
	resp, err = h2Client().Do(css)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil || resp.Header.Get("Content-Encoding") != "gzip" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("main.css: %v %v", err, resp.Header)
	}
	plain, _ := io.ReadAll(zr)
	resp.Body.Close()
	if !strings.Contains(string(plain), "font-family") || resp.Header.Get("ETag") == "" {
		t.Errorf("main.css body or ETag wrong")
	}
	again, _ := http.NewRequest(http.MethodGet, base+"/main.css", nil)
	again.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = h2Client().Do(again)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation = %d, want 304", resp.StatusCode)
	}

	// The JS client's type declarations are served next to it.
	resp, err = h2Client().Get(base + "/productwatch.d.ts")
	if err != nil {
		t.Fatal(err)
	}
	dts, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/typescript; charset=utf-8" ||
		!strings.Contains(string(dts), "export class ProductWatch extends EventTarget") {
		t.Errorf("productwatch.d.ts = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// TestServerPush uses nghttp (Debian's nghttp2-client, installed by make
// tools), a client that accepts pushes: without the cookie the page pushes
// its assets and sets the cookie; with it, nothing is pushed. Both times a
// 103 with the preload links comes first.
func TestServerPush(t *testing.T) {
	t.Parallel()
	nghttp, err := exec.LookPath("nghttp")
	if err != nil {
		t.Fatal("nghttp not found: run `make tools` (it installs Debian's nghttp2-client)")
	}
	base, _ := servePage(t)
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, nghttp, append([]string{"-nv"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nghttp %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	cold := run(base + "/")
	for _, want := range []string{"PUSH_PROMISE", ":path: /main.css", ":path: /productwatch.js", ":status: 103", "set-cookie: assetspushed=1"} {
		if !strings.Contains(cold, want) {
			t.Errorf("without the cookie, nghttp output lacks %q", want)
		}
	}
	warm := run("-H", "cookie: assetspushed=1", base+"/")
	if strings.Contains(warm, "PUSH_PROMISE") {
		t.Error("pushed although the cookie says the assets were pushed")
	}
	if !strings.Contains(warm, ":status: 103") || !strings.Contains(warm, "rel=preload") {
		t.Error("no 103 Early Hints with the cookie")
	}
	if t.Failed() {
		t.Logf("cold:\n%s\nwarm:\n%s", cold, warm)
	}
}
