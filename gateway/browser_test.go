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
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// liveGateway runs the real gateway (HTTPS, NATS) on addr until stop.
func liveGateway(t *testing.T, pg *testenv.PG, n *testenv.NATSServer, addr string) (stop func()) {
	t.Helper()
	return liveGatewayWith(t, pg, n, addr, nil)
}

// liveGatewayWith is liveGateway with its handler wrapped by wrap (nil: as
// it is).
func liveGatewayWith(t *testing.T, pg *testenv.PG, n *testenv.NATSServer, addr string, wrap func(http.Handler) http.Handler) (stop func()) {
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
	if wrap != nil {
		g.handler = wrap(g.handler)
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

// browser starts Debian's Chromium headless (installed by make tools) with
// a fresh profile; each context made from the returned one is a tab.
func browser(t *testing.T) context.Context {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: run `make tools` (it installs Debian's chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("ignore-certificate-errors", true), // the development certificate
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(ctx); err != nil { // start the browser with no timeout on its context
		t.Fatal(err)
	}
	return ctx
}

// page is one browser tab of a test.
type page struct {
	t    *testing.T
	name string
	ctx  context.Context
}

// newPage opens a tab in a browser context of its own (its own cookies and
// storage: another person), with the given viewport.
func newPage(t *testing.T, browserCtx context.Context, name string, width, height int64) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height)); err != nil {
		t.Fatal(err)
	}
	return &page{t: t, name: name, ctx: ctx}
}

// do runs steps with a deadline.
func (p *page) do(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %s: %v", p.name, what, err)
	}
}

// waitJS polls a JavaScript condition until it is true.
func (p *page) waitJS(what, cond string, timeout time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(timeout))); err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`[document.querySelector("#status").textContent, document.querySelector("#list-state").textContent,
			document.querySelector("#errors").textContent, document.querySelector("#result").textContent,
			"focus: " + document.activeElement.tagName + " " + (document.activeElement.name || document.activeElement.dataset?.id || "")].join(" | ")`))
		p.t.Fatalf("%s: %s: %v (page: %s)", p.name, what, err, state)
	}
}

// js evaluates an expression.
func js[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("%s: %s: %v", p.name, expr, err)
	}
	return v
}

// screenshot saves the whole page as a PNG in dir and logs the path.
func (p *page) screenshot(dir, name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot %s: %s (%d bytes)", name, path, len(shot))
}

// screenshotDir is where the browser test keeps its screenshots, outside the
// repository so they are looked at, not committed: $TMPDIR/productwatch-screenshots-<pid>.
func screenshotDir(t *testing.T) string {
	dir := filepath.Join(os.TempDir(), "productwatch-screenshots-"+strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(os.Stderr, "browser test screenshots:", dir)
	return dir
}

// socketGate holds every /websocket request (before the upgrade) until
// opened: the page's socket cannot open, and no WebSocket traffic flows,
// until then.
type socketGate struct {
	open    chan struct{}
	waiting atomic.Int32
}

func newSocketGate() *socketGate { return &socketGate{open: make(chan struct{})} }

func (g *socketGate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/websocket" {
			g.waiting.Add(1)
			select {
			case <-g.open:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// TestBrowserLivePage is what a person sees, in headless Chromium over
// HTTPS: the whole list (read by pages) shows while the WebSocket is still
// blocked, with the state saying so; once live, a product created over REST
// appears; an edit made in the form of one browser context (selected with
// the keyboard) shows in another one, at phone width; a delete made there
// strikes the row through in both; after a gateway restart the page says
// reconnecting, then shows the change made meanwhile. Screenshots are saved
// and their directory logged.
func TestBrowserLivePage(t *testing.T) {
	ctx := browser(t)
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	startBridge(t, pg, n)
	addr := testenv.FreeAddr(t)
	gate := newSocketGate()
	stop := liveGatewayWith(t, pg, n, addr, gate.wrap)
	defer func() { stop() }()
	base := "https://" + addr
	shots := screenshotDir(t)

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
	for _, p := range []string{
		macbook,
		`{"manufacturer":"Dell","productName":"XPS 13","pricePerUnit":"999.90EUR","unitsAvailable":3}`,
		`{"manufacturer":"Lenovo","productName":"ThinkPad X1","pricePerUnit":"1450USD","unitsAvailable":12}`,
		`{"manufacturer":"Framework","productName":"Laptop 13","pricePerUnit":"1099EUR","unitsAvailable":8}`,
		`{"manufacturer":"Apple","productName":"iPad Air","pricePerUnit":"699EUR","unitsAvailable":21}`,
		`{"manufacturer":"Samsung","productName":"Galaxy Tab S9","pricePerUnit":"849.00EUR","unitsAvailable":5}`,
		`{"manufacturer":"Sony","productName":"WH-1000XM5","pricePerUnit":"379.99EUR","unitsAvailable":40}`,
	} {
		write(http.MethodPost, "/products", p)
	}
	const seeded = 7
	rowCount := `document.querySelectorAll("#products tbody tr").length`
	cell := func(id, col int) string {
		return fmt.Sprintf(`document.querySelector('tr[data-id="%d"] td:nth-child(%d)')?.textContent`, id, col)
	}
	status := `document.querySelector("#status").textContent`

	// A: the WebSocket is held at the gateway; the list comes from REST,
	// 3 a page.
	a := newPage(t, ctx, "desktop", 1200, 800)
	a.do("load the page", 20*time.Second, chromedp.Navigate(base+"/?pageSize=3"))
	a.waitJS("every row, from three REST pages, without a socket", rowCount+` === `+strconv.Itoa(seeded)+` && document.querySelector("#list-state").textContent.includes("connecting")`, 10*time.Second)
	if st := js[string](a, status); st != "connecting" || gate.waiting.Load() == 0 {
		t.Fatalf("the status says %q while the socket is held (%d held)", st, gate.waiting.Load())
	}
	if got := js[string](a, cell(3, 3)); got != "ThinkPad X1" {
		t.Fatalf("row 3 shows %q", got)
	}
	a.screenshot(shots, "1-list-before-socket")

	// The socket gets through: live.
	close(gate.open)
	a.waitJS("live", status+` === "live" && document.querySelector("#list-state").textContent.includes("live")`, 15*time.Second)

	// A product created over REST appears, at the end of the list.
	write(http.MethodPost, "/products", `{"manufacturer":"Fairphone","productName":"Fairphone 5","pricePerUnit":"699EUR","unitsAvailable":2}`)
	a.waitJS("the new product", cell(seeded+1, 3)+` === "Fairphone 5" && document.querySelector("#products tbody tr:last-child").dataset.id === "`+strconv.Itoa(seeded+1)+`"`, 5*time.Second)
	a.screenshot(shots, "2-list-live-after-create")

	// B: another person, at phone width.
	b := newPage(t, ctx, "phone", 390, 844)
	b.do("load the page", 20*time.Second, chromedp.Navigate(base+"/"))
	b.waitJS("live with every row", status+` === "live" && `+rowCount+` === `+strconv.Itoa(seeded+1), 15*time.Second)
	if w := js[float64](b, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("at phone width the page is %v px wide: it scrolls sideways", w)
	}

	// In A, with the keyboard: focus row 2, Enter fills the form; save.
	a.do("select row 2 with the keyboard", 10*time.Second,
		chromedp.Focus(`tr[data-id="2"]`), chromedp.KeyEvent("\r"))
	a.waitJS("the form filled from row 2", `document.querySelector("#edit [name=productId]").value === "2" && document.querySelector("#edit [name=productName]").value === "XPS 13" && document.activeElement.name === "manufacturer"`, 5*time.Second)
	a.do("edit and save", 10*time.Second,
		chromedp.SendKeys(`#edit [name=token]`, testToken),
		chromedp.SetValue(`#edit [name=unitsAvailable]`, "42"),
		chromedp.Click(`#edit [name=save]`))
	a.waitJS("saved", `document.querySelector("#result").textContent.includes("saved: version 2")`, 5*time.Second)
	b.waitJS("the edit made in A", cell(2, 5)+` === "42" && `+cell(2, 6)+` === "2"`, 5*time.Second)

	// In B, by clicking: delete product 4; both strike it through.
	b.do("select row 4 and delete it", 10*time.Second,
		chromedp.Click(`tr[data-id="4"]`),
		chromedp.SendKeys(`#edit [name=token]`, testToken),
		chromedp.Click(`#edit [name=delete]`))
	struck := `(() => { const tr = document.querySelector('tr[data-id="4"]'); return !!tr && tr.classList.contains("deleted") && getComputedStyle(tr.cells[2]).textDecorationLine === "line-through"; })()`
	b.waitJS("the delete struck through", struck, 5*time.Second)
	a.waitJS("the delete struck through", struck, 5*time.Second)
	a.waitJS("the highlight to fade", `document.getAnimations().filter((an) => an.animationName === "flash").every((an) => an.playState === "finished")`, 5*time.Second)
	a.screenshot(shots, "3-list-after-edit-and-delete")
	b.screenshot(shots, "4-phone-after-delete")

	// The gateway restarts; a change lands while the page is cut off.
	stop()
	a.waitJS("the page to say reconnecting", status+` === "reconnecting"`, 10*time.Second)
	a.screenshot(shots, "5-reconnecting")
	if _, err := pg.DB.Exec(`UPDATE products SET units_available = 2 WHERE product_id = 1`); err != nil {
		t.Fatal(err)
	}
	stop = liveGateway(t, pg, n, addr)
	a.waitJS("reconnected and caught up", status+` === "live" && `+cell(1, 5)+` === "2"`, 20*time.Second)
	a.screenshot(shots, "6-caught-up-after-restart")
	if errs := js[string](a, `document.querySelector("#errors").textContent`); errs != "" {
		t.Errorf("the page shows errors: %s", errs)
	}
}
