package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// BenchmarkDeliveryLatency: 100 clients read changes of 50 products published
// at 1,000 changes/s; with and without a client next to them that never
// reads (a tiny receive buffer, so its socket really stalls). The stalled
// client must not move the others' latency (from the event's changedAt, set
// at publish time, to its arrival at the reader).
func BenchmarkDeliveryLatency(b *testing.B) {
	for _, stalled := range []int{0, 1} {
		b.Run(fmt.Sprintf("readers=100/stalled=%d", stalled), func(b *testing.B) {
			g := newWSGateway(b, nil, nil, func(c *Config) { c.WSWriteTimeout, c.WSSlowClientAfter = time.Minute, time.Minute })
			const products, readers = 50, 100
			ids := make([]int64, products)
			for i := range ids {
				ids[i] = int64(i + 1)
			}
			subscribe := `{"command":"subscribe","productIDs":` + commaList(ids) + `}`
			if stalled > 0 {
				s := g.dialWith(b, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: tinyReceiveBuffer().DialContext}}})
				s.send(subscribe)
			}
			latencies := make([][]time.Duration, readers)
			var wg sync.WaitGroup
			want := b.N
			for i := range readers {
				c := g.dial(b, nil)
				c.validator = nil
				c.send(subscribe)
				c.expect("ack")
				latencies[i] = make([]time.Duration, 0, want)
				final := finalVersions(want, products)
				wg.Go(func() {
					// Until every product's last version arrived (a reader
					// that falls behind gets intermediate versions conflated).
					for len(final) > 0 {
						_, data, err := c.ws.Read(context.Background())
						if err != nil {
							return
						}
						if at, ok := change.ChangedAt(data); ok {
							latencies[i] = append(latencies[i], time.Since(at))
						}
						id, v := productAndVersion(data)
						if v >= final[id] {
							delete(final, id)
						}
					}
				})
			}
			pad := strings.Repeat("x", 1000)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			b.ResetTimer()
			for n := range want {
				<-tick.C
				id := int64(n%products + 1)
				if err := g.nc.Publish(change.Subject(id), bigEvent(id, int64(n/products+1), pad)); err != nil {
					b.Fatal(err)
				}
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				b.Fatal("readers did not get every change within 30 s")
			}
			b.StopTimer()
			var all []time.Duration
			for _, l := range latencies {
				all = append(all, l...)
			}
			slices.Sort(all)
			if len(all) == 0 {
				b.Fatal("no samples")
			}
			q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
			b.ReportMetric(q(0.5), "p50_ms")
			b.ReportMetric(q(0.99), "p99_ms")
			b.ReportMetric(q(1), "max_ms")
		})
	}
}

// finalVersions returns the last version each product gets when n events
// go round-robin over products (product n%products+1 at version n/products+1).
func finalVersions(n, products int) map[int64]int64 {
	final := map[int64]int64{}
	for k := range n {
		final[int64(k%products+1)] = int64(k/products + 1)
	}
	return final
}

// productAndVersion reads an event's productId and version.
func productAndVersion(data []byte) (int64, int64) {
	s := string(data)
	i := strings.Index(s, `"productId":`)
	if i < 0 {
		return 0, 0
	}
	rest := s[i+len(`"productId":`):]
	j := strings.IndexByte(rest, ',')
	if j < 0 {
		return 0, 0
	}
	id, _ := strconv.ParseInt(rest[:j], 10, 64)
	v, _ := change.EventVersion(data)
	return id, v
}

// tinyReceiveBuffer dials sockets with a 4 KiB receive buffer.
func tinyReceiveBuffer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// BenchmarkIdleConnectionMemory runs the real gateway binary and opens
// 10,000 WebSocket connections, each watching 5 of 1,000 products, then
// reports the gateway's resident memory per connection (RSS after minus RSS
// before, over the connections). Target: at most 10 KiB each.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns, perConn, products = 10000, 5, 1000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 4*conns {
		lim.Cur = max(lim.Cur, min(lim.Max, 4*conns))
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // the gateway inherits it
	}
	path, err := buildProgram("gateway")
	if err != nil {
		b.Fatal(err)
	}
	pg, n := testenv.Postgres(b), testenv.NATS(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pg.DSN, "NATS_URL="+n.URL, "NATS_USER="+n.Gateway.User, "NATS_PASSWORD="+n.Gateway.Password, "LISTEN_ADDR="+addr,
		"INSECURE_HTTP=true", "WS_MAX_CONNECTIONS=20000", "LOG_LEVEL=warn", "API_TOKEN=", "DEBUG_ADDR="+os.Getenv("BENCH_DEBUG_ADDR"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	waitReady(b, "the gateway", "http://"+addr)
	before, err := rssKiB(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	clients := make([]*websocket.Conn, conns)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/websocket", nil)
				if err != nil {
					cancel()
					errs <- err
					continue
				}
				ids := make([]int64, perConn)
				for k := range ids {
					ids[k] = rand.Int64N(products) + 1
				}
				err = ws.Write(ctx, websocket.MessageText, []byte(`{"command":"subscribe","productIDs":`+commaList(ids)+`}`))
				if err == nil {
					_, _, err = ws.Read(ctx) // the ack
				}
				cancel()
				if err != nil {
					errs <- err
				}
				clients[i] = ws
			}
		})
	}
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	after, err := rssKiB(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(after-before)/conns, "KiB/conn")
	b.ReportMetric(float64(after)/1024, "rss_MiB")
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			for _, name := range []string{"go_goroutines ", "go_memstats_stack_inuse_bytes ", "go_memstats_heap_inuse_bytes "} {
				if v, ok := strings.CutPrefix(line, name); ok {
					f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
					if name == "go_goroutines " {
						b.ReportMetric(f/conns, "goroutines/conn")
					} else {
						b.ReportMetric(f/1024/conns, strings.TrimSuffix(strings.TrimPrefix(name, "go_memstats_"), "_bytes ")+"_KiB/conn")
					}
				}
			}
		}
	}
	if debug, out := os.Getenv("BENCH_DEBUG_ADDR"), os.Getenv("BENCH_HEAP_PROFILE"); debug != "" && out != "" {
		// make bench-profile: keep the gateway's heap profile with every socket open
		if resp, err := http.Get("http://" + debug + "/debug/pprof/heap?gc=1"); err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(out, data, 0o644)
		}
	}
	for _, ws := range clients {
		if ws != nil {
			ws.CloseNow()
		}
	}
}
