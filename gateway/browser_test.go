package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// liveGateway runs the real gateway (HTTPS, NATS) on addr until stop.
func liveGateway(t *testing.T, pg *testenv.PG, n *testenv.NATSServer, addr string) (stop func()) {
	t.Helper()
	cfg, err := loadConfig([]string{"-listen-addr", addr, "-drain-window", "100ms"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL, cfg.APIToken = pg.DSN, n.URL, testToken
	cfg.NATSAuth = n.Gateway // the gateway's production NATS permissions
	queue := newResyncQueue()
	nc, err := nats.Connect(n.URL, nats.ReconnectHandler(func(*nats.Conn) { queue.requestAll() }))
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGateway(cfg, pg.DB, nc, queue, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	return func() {
		cancel()
		<-done
		nc.Close()
	}
}

// TestBrowserLivePage drives Debian's Chromium (installed by make tools):
// the page loads over HTTPS, watches the products, shows a REST update
// within a second, and, after the gateway restarts, reconnects by itself
// and shows the change made while it was away. A screenshot is saved.
func TestBrowserLivePage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: run `make tools` (it installs Debian's chromium)")
	}
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	startBridge(t, pg, n)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop := liveGateway(t, pg, n, addr)
	defer func() { stop() }()
	base := "https://" + addr

	client := h2Client()
	write := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s = %d", method, path, resp.StatusCode)
		}
	}
	write(http.MethodPost, "/products", macbook)
	write(http.MethodPost, "/products", `{"manufacturer":"Dell","productName":"XPS 13","pricePerUnit":"999.90EUR","unitsAvailable":3}`)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("ignore-certificate-errors", true), // the development certificate
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 700),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	defer cancelTimeout()

	units := `document.querySelector('tr[data-id="1"] td:nth-child(5)')?.textContent`
	status := `document.querySelector('#status')?.textContent`
	if _, err := chromedp.Run(ctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("page did not load: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](status+` === "open" && `+units+` === "6"`, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		t.Fatalf("page did not connect and watch: %v", err)
	}

	// A REST update shows within a second.
	write(http.MethodPatch, "/products/1", `{"unitsAvailable":5}`)
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](units+` === "5"`, chromedp.WithPollingTimeout(time.Second))); err != nil {
		t.Fatalf("the update did not show within a second: %v", err)
	}

	// The gateway restarts; a change lands while the page is cut off.
	stop()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](status+` !== "open"`, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("the page did not notice the gateway going away: %v", err)
	}
	if _, err := pg.DB.Exec(`UPDATE products SET units_available = 2 WHERE product_id = 1`); err != nil {
		t.Fatal(err)
	}
	stop = liveGateway(t, pg, n, addr)
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](status+` === "open" && `+units+` === "2"`, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the page did not reconnect and catch up: %v", err)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(os.TempDir(), "productwatch-page-"+strconv.Itoa(os.Getpid())+".png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	fmt.Fprintln(os.Stderr, "browser test screenshot:", path)
}
