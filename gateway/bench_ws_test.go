package main

import (
	"context"
	"errors"
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/procstat"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// BenchmarkDeliveryLatency: 100 clients read changes of 50 products published
// at 1,000 changes/s; with and without a client next to them that never
// reads (a tiny receive buffer, so its socket really stalls). The stalled
// client must not move the others' latency (from the event's changedAt, set
// at publish time, to its arrival at the reader). hot: 1,000 clients watch
// one product that changes 200 times a second (S2's shape). Besides the
// latency it reports the messages per socket write, the share of deliveries
// conflated, and the test process's CPU time (gateway, NATS and the reading
// clients together) per delivery.
func BenchmarkDeliveryLatency(b *testing.B) {
	cases := []struct {
		name                       string
		readers, products, stalled int
		interval                   time.Duration
	}{
		{"readers=100/stalled=0", 100, 50, 0, time.Millisecond},
		{"readers=100/stalled=1", 100, 50, 1, time.Millisecond},
		{"hot/readers=1000/products=1/rate=200", 1000, 1, 0, 5 * time.Millisecond},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			g := newWSGateway(b, nil, nil, func(c *Config) {
				c.WSWriteTimeout, c.WSSlowClientAfter = time.Minute, time.Minute
				c.WSMaxConnectionsPerAddr = 2000 // every reader comes from 127.0.0.1
			})
			products, readers, stalled := tc.products, tc.readers, tc.stalled
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
			tick := time.NewTicker(tc.interval)
			defer tick.Stop()
			var before syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			writesBefore, msgsBefore := histogram(b, g.g.ws.metrics.batchMessages)
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
			case <-time.After(30*time.Second + time.Duration(want*readers)*20*time.Microsecond):
				// every version to every reader that keeps up: the readers
				// in this process must be able to read them all
				b.Fatalf("readers did not get every change within %v", 30*time.Second+time.Duration(want*readers)*20*time.Microsecond)
			}
			b.StopTimer()
			var after syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			writes, msgs := histogram(b, g.g.ws.metrics.batchMessages)
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			deliveries := float64(want * readers)
			b.ReportMetric(float64(cpu.Microseconds())/deliveries, "cpu_us/delivery")
			b.ReportMetric(float64(msgs-msgsBefore)/float64(max(writes-writesBefore, 1)), "msgs/write")
			b.ReportMetric(testutil.ToFloat64(g.g.ws.metrics.conflated)/deliveries, "conflated/delivery")
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
	s, err := procstat.Read(pid)
	return s.RSS, err
}

// BenchmarkIdleConnectionMemory runs the real gateway binary and opens
// 10,000 WebSocket connections (BENCH_IDLE_CONNS), each watching 5 of 1,000
// products, then reports the gateway's resident memory per connection (RSS
// after minus RSS before, over the connections). Target: at most 10 KiB
// each. The connections come from many source addresses in 127.0.0.0/8, so
// that ephemeral ports do not run short; the file descriptor limit (the
// test process and the gateway each hold one per connection) caps them.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const perConn, products = 5, 1000
	conns := 10000
	if n, err := strconv.Atoi(os.Getenv("BENCH_IDLE_CONNS")); err == nil && n > 0 {
		conns = n
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(4*conns) {
		lim.Cur = max(lim.Cur, min(lim.Max, uint64(4*conns)))
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // the gateway inherits it
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(conns)+500 {
		b.Fatalf("RLIMIT_NOFILE is %d (hard %d): too few for %d connections", lim.Cur, lim.Max, conns)
	}
	var source atomic.Uint32
	dialer := &net.Dialer{}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		n := source.Add(1)
		d := *dialer
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, byte(1+n/250%250), byte(1+n%250))}
		return d.DialContext(ctx, network, addr)
	}}}
	path := testenv.Program(b, "gateway")
	pg, n := testenv.Postgres(b), testenv.NATS(b)
	addr := testenv.FreeAddr(b)
	// pprof on its own port: a heap profile with gc=1 collects the garbage
	// before each measurement, so that GC timing does not move the figures.
	debugAddr := os.Getenv("BENCH_DEBUG_ADDR")
	if debugAddr == "" {
		debugAddr = testenv.FreeAddr(b)
	}
	collect := func() {
		if resp, err := http.Get("http://" + debugAddr + "/debug/pprof/heap?gc=1"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	metricsAddr := testenv.FreeAddr(b)
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pg.DSN, "NATS_URL="+n.URL, "NATS_USER="+n.Gateway.User, "NATS_PASSWORD="+n.Gateway.Password, "LISTEN_ADDR="+addr,
		"METRICS_ADDR="+metricsAddr, "WS_MAX_CONNECTIONS_PER_ADDR="+strconv.Itoa(conns+1000), "WS_MAX_SUBSCRIPTIONS_PER_ADDR="+strconv.Itoa(10*conns*perConn),
		"INSECURE_HTTP=true", "WS_MAX_CONNECTIONS="+strconv.Itoa(conns+1000), "LOG_LEVEL=warn", "API_TOKEN=", "DEBUG_ADDR="+debugAddr)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	waitReady(b, "the gateway", "http://"+metricsAddr)
	collect()
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
				ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/websocket", &websocket.DialOptions{HTTPClient: client})
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
	// Idle means idle: the writers that sent the acks end after a second or
	// two without work. Wait (at most 20 s) until only the readers are left.
	testenv.Poll(b, 20*time.Second, func() bool {
		m, err := testenv.ScrapeMetrics("http://" + metricsAddr + "/metrics")
		return err == nil && m.Sum("go_goroutines") <= float64(conns)*1.01+100
	})
	collect()
	after, err := rssKiB(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(after-before)/float64(conns), "KiB/conn")
	b.ReportMetric(float64(after)/1024, "rss_MiB")
	if m, err := testenv.ScrapeMetrics("http://" + metricsAddr + "/metrics"); err == nil {
		b.ReportMetric(m.Sum("go_goroutines")/float64(conns), "goroutines/conn")
		b.ReportMetric(m.Sum("go_memstats_stack_inuse_bytes")/1024/float64(conns), "stack_inuse_KiB/conn")
		b.ReportMetric(m.Sum("go_memstats_heap_inuse_bytes")/1024/float64(conns), "heap_inuse_KiB/conn")
	}
	if debug, out := debugAddr, os.Getenv("BENCH_HEAP_PROFILE"); out != "" {
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
