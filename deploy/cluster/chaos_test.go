//go:build chaos

// The chaos tests (make test-chaos): each starts its own cluster of real
// processes (three nats-server nodes, two bridges, gateways behind haproxy)
// on free ports with a fresh database, runs clients over WSS through
// haproxy and writers, breaks something, and checks that nothing is lost.
package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// chaosEnv is one test's cluster.
type chaosEnv struct {
	c     *cluster
	db    *sql.DB
	tls   *tls.Config
	wsURL string
	rest  *restWriter
}

// programs builds the bridge and the gateway once per test process into a
// directory that also links the pinned nats-server of bin/.
var programs = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "productwatch-chaos-bin-")
	if err != nil {
		return "", err
	}
	for _, prog := range []string{"bridge", "gateway"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, prog), "./"+prog)
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %v\n%s", prog, err, out)
		}
	}
	natsServer, err := filepath.Abs(filepath.Join("..", "..", "bin", "nats-server"))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(natsServer); err != nil {
		return "", fmt.Errorf("the pinned nats-server is not in bin/ (make cluster-tools installs it): %w", err)
	}
	return dir, os.Symlink(natsServer, filepath.Join(dir, "nats-server"))
})

// freeBase finds a block of 100 free loopback ports for a cluster, below
// the kernel's ephemeral range (32768-), where the local ends of outgoing
// connections (this machine runs load generators) would take ports away.
func freeBase(t *testing.T, spec Spec) Ports {
	t.Helper()
	for range 50 {
		base := 20000 + 100*rand.IntN(120)
		spec.Ports = PortsFrom(base)
		if checkPortsFree(spec) == nil {
			return spec.Ports
		}
	}
	t.Fatal("no free block of ports found")
	return Ports{}
}

// startCluster starts a cluster with n gateways for the test and stops it
// at the end (printing the ends of its logs when the test failed).
func startCluster(t *testing.T, gateways int) *chaosEnv {
	return startClusterWith(t, gateways, []string{"STREAM_HISTORY=1000000", "STREAM_DUPLICATE_WINDOW=5s"})
}

// startClusterWith starts a cluster whose bridges get bridgeEnv.
func startClusterWith(t *testing.T, gateways int, bridgeEnv []string) *chaosEnv {
	t.Helper()
	bin, err := programs()
	if err != nil {
		t.Fatal(err)
	}
	pg := testenv.Postgres(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{
		StateDir:    t.TempDir(),
		BinDir:      bin,
		DatabaseURL: pg.DSN,
		NATSAuthDir: filepath.Join(root, "deploy", "nats"),
		Gateways:    gateways,
		Bridges:     2,
		DrainWindow: 2 * time.Second,
		// The chaos tests keep every change in the stream, so they can
		// compare it with the change log, and use a short duplicate window,
		// so only the bridge's own check keeps a republished change out.
		BridgeEnv:  bridgeEnv,
		GatewayEnv: []string{"LOG_LEVEL=info"},
	}
	spec.Ports = freeBase(t, spec)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := up(ctx, spec, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up in %v (nats %d, haproxy %s)", time.Since(start).Round(time.Millisecond), spec.Ports.NATSClient, spec.Ports.HTTPSAddr)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.allProcs() {
				t.Logf("--- end of %s:\n%s", p.Log, tail(p.Log, 30))
			}
		}
		stopCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.down(stopCtx); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	tlsCfg, err := clientTLS(spec.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := newRESTWriter(c)
	if err != nil {
		t.Fatal(err)
	}
	return &chaosEnv{c: c, db: pg.DB, tls: tlsCfg, wsURL: "wss://" + spec.Ports.HTTPSAddr + "/websocket", rest: rest}
}

func (c *cluster) allProcs() []Proc {
	var out []Proc
	for _, n := range c.st.NATS {
		out = append(out, n.Proc)
	}
	for _, b := range c.st.Bridges {
		out = append(out, b.Proc)
	}
	for _, g := range c.st.Gateways {
		out = append(out, g.Proc)
	}
	if c.st.HAProxy != nil {
		out = append(out, *c.st.HAProxy)
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// finish verifies the clients and the stream, prints the report and fails
// the test on any loss, duplicate or stale version.
func finish(t *testing.T, env *chaosEnv, f *fleet, w *writer, r *report, start time.Time) {
	t.Helper()
	if f != nil {
		verifyClients(t, env.db, f, r)
		r.conflated, r.dropped = gatewayCounters(context.Background(), env.c)
	}
	verifyStream(t, env, r)
	r.writes, r.writeFailures = w.ok.Load(), w.fail.Load()
	w.mu.Lock()
	r.writeErrors = w.failures
	w.mu.Unlock()
	r.elapsed = time.Since(start)
	if r.writeFailures > 0 {
		// What the gateways said about the failed writes.
		for _, p := range env.c.allProcs() {
			data, _ := os.ReadFile(p.Log)
			for line := range strings.SplitSeq(string(data), "\n") {
				if strings.Contains(line, "level=ERROR") {
					t.Logf("%s: %s", p.Name, line)
				}
			}
		}
	}
	t.Log("\n" + r.String())
	fmt.Print(r.String()) // also on stdout, for make test-chaos's summary
	switch {
	case r.finalOK != r.finalPairs:
		t.Errorf("%d client×product pairs did not reach the final version", r.finalPairs-r.finalOK)
	case r.stale != 0:
		t.Errorf("clients saw %d stale versions", r.stale)
	}
	if r.streamMissing != 0 || r.streamDuplicates != 0 || r.streamExtra != 0 {
		t.Errorf("stream: %d missing, %d duplicates, %d not in the log", r.streamMissing, r.streamDuplicates, r.streamExtra)
	}
	if r.duplicates != 0 {
		t.Errorf("clients got %d duplicate versions", r.duplicates)
	}
	if r.writes == 0 {
		t.Error("no write committed: the test proved nothing")
	}
}

// loadSpec is the load a chaos test runs while it breaks something: the
// products it creates, the clients watching them, and the writer changing
// them at workers × perWorker per second for at most duration.
type loadSpec struct {
	products, clients int
	rest              bool // write through the REST API behind haproxy; false: SQL
	workers           int
	perWorker         float64
	duration          time.Duration
	warmup            int64  // changes committed before startLoad returns
	warmupWhat        string // what the wait for them is called
}

// chaosLoad is a cluster of 3 gateways under a loadSpec's load.
type chaosLoad struct {
	env      *chaosEnv
	start    time.Time
	products []int64
	f        *fleet
	w        *writer
	cancel   context.CancelFunc // ends the writes early; called at cleanup
	load     sync.WaitGroup
}

// startLoad starts a cluster of 3 gateways, its products, clients and
// writer, and waits until the writer has committed spec.warmup changes.
func startLoad(t *testing.T, spec loadSpec) *chaosLoad {
	t.Helper()
	l := &chaosLoad{env: startCluster(t, 3), start: time.Now()}
	l.products = createProducts(t, l.env.db, spec.products)
	l.f = startFleet(t, l.env, spec.clients, 10, l.products)
	l.w = &writer{products: l.products}
	if spec.rest {
		l.w.rest = l.env.rest
	} else {
		l.w.db = l.env.db
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	t.Cleanup(cancel)
	l.load.Go(func() { l.w.run(ctx, spec.workers, spec.perWorker, spec.duration) })
	testenv.WaitUntil(t, 10*time.Second, spec.warmupWhat, func() bool { return l.w.ok.Load() > spec.warmup })
	return l
}

// finish waits for the writer to end (call cancel first to end it early)
// and checks the clients of f and the stream (see the function finish).
func (l *chaosLoad) finish(t *testing.T, f *fleet, r *report) {
	t.Helper()
	l.load.Wait()
	finish(t, l.env, f, l.w, r, l.start)
}

// burst is the load of the bridge and NATS kills: 200 products, 100
// clients, 16 SQL writers at up to 100 changes a second each for 10 s.
var burst = loadSpec{products: 200, clients: 100, workers: 16, perWorker: 100, duration: 10 * time.Second,
	warmup: 1000, warmupWhat: "the burst to start"}

// restLoad is the load of the gateway restarts: 100 products, n clients,
// 8 REST writers at up to 12 changes a second each, until the test ends it.
func restLoad(clients int) loadSpec {
	return loadSpec{products: 100, clients: clients, rest: true, workers: 8, perWorker: 12, duration: 5 * time.Minute,
		warmup: 100, warmupWhat: "the first writes"}
}

// newReport starts the report of the chaos test name.
func newReport(name string) *report {
	return &report{name: name, recovery: map[string]time.Duration{}}
}

// debugStream connects to the cluster as the read-only debug user (the
// connection closes at cleanup) and returns its JetStream context.
func debugStream(t *testing.T, env *chaosEnv, name string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	opts = append([]nats.Option{nats.UserInfo(userDebug, env.c.creds.Debug), nats.Name(name)}, opts...)
	_, js := testenv.ConnectJS(t, natsURL(env.c.st.Spec.Ports), opts...)
	return js
}

// TestChaosGatewayKill: kill -9 of one gateway with 300 clients connected
// through haproxy. Every client of that gateway reconnects to another one,
// resumes with its versions, and every client ends with every product's
// final version; none sees a stale version.
func TestChaosGatewayKill(t *testing.T) {
	l := startLoad(t, loadSpec{products: 100, clients: 300, rest: true, workers: 8, perWorker: 12, duration: 15 * time.Second,
		warmup: 100, warmupWhat: "the first writes"})
	env, f := l.env, l.f
	victim := env.c.gateway(2)
	onVictim := f.clientsOn(gatewayServerName(2))
	if len(onVictim) == 0 {
		t.Fatalf("no client on gw2: %v", f.byGateway())
	}
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	r := newReport(fmt.Sprintf("kill -9 gateway 2 (%d of 300 clients on it), 3 gateways", len(onVictim)))
	testenv.WaitUntil(t, 60*time.Second, "the dropped clients to lose their connection", func() bool { return f.connectedCount() < 300 })
	testenv.WaitUntil(t, 60*time.Second, "every client to reconnect", func() bool { return f.connectedCount() == 300 })
	r.recovery["every client subscribed again (from the kill)"] = time.Since(killed)
	for _, c := range onVictim {
		c.mu.Lock()
		if c.lastGateway == gatewayServerName(2) {
			t.Errorf("client %d is on the killed gateway again", c.id)
		}
		c.mu.Unlock()
	}
	t.Logf("after the kill, per gateway: %v", f.byGateway())
	l.finish(t, f, r)
}

// TestChaosBridgeKill: kill -9 of the leading bridge during a write burst.
// The other takes over; nothing is missing in the stream, nothing is there
// twice, and the clients end with every final version.
func TestChaosBridgeKill(t *testing.T) {
	l := startLoad(t, burst)
	env, ctx := l.env, context.Background()
	leader := 0
	testenv.WaitUntil(t, 10*time.Second, "a leading bridge", func() bool { leader = env.c.leaderBridge(ctx); return leader != 0 })
	var victim *Member
	for k := range env.c.st.Bridges {
		if env.c.st.Bridges[k].Index == leader {
			victim = &env.c.st.Bridges[k]
		}
	}
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	r := newReport(fmt.Sprintf("kill -9 the leading bridge %d during a write burst", leader))
	testenv.WaitUntil(t, 30*time.Second, "the other bridge to lead", func() bool {
		l := env.c.leaderBridge(ctx)
		return l != 0 && l != leader
	})
	r.recovery["the other bridge leads (from the kill)"] = time.Since(killed)
	l.finish(t, l.f, r)
}

// TestChaosNATSNodeKill: kill -9 of the NATS node leading the PRODUCTS
// stream during a burst: nothing missing.
func TestChaosNATSNodeKill(t *testing.T) {
	l := startLoad(t, burst)
	env, ctx := l.env, context.Background()
	js := debugStream(t, env, "chaos-observer")
	streamInfo := func() *jetstream.StreamInfo {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "PRODUCTS")
		if err != nil {
			return nil
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil
		}
		return info
	}

	info := streamInfo()
	if info == nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("no stream leader: %+v", info)
	}
	var victim *Node
	for k := range env.c.st.NATS {
		if fmt.Sprintf("n%d", env.c.st.NATS[k].Index) == info.Cluster.Leader {
			victim = &env.c.st.NATS[k]
		}
	}
	if victim == nil {
		t.Fatalf("stream leader %q is none of the nodes", info.Cluster.Leader)
	}
	lastBefore := info.State.LastSeq
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	r := newReport(fmt.Sprintf("kill -9 NATS node %s (the stream leader) during a write burst", info.Cluster.Leader))
	testenv.WaitUntil(t, 60*time.Second, "a new stream leader that stores new changes", func() bool {
		i := streamInfo()
		return i != nil && i.Cluster != nil && i.Cluster.Leader != "" && i.Cluster.Leader != victim.Name[len("nats-"):] && i.State.LastSeq > lastBefore+100
	})
	r.recovery["the stream stores changes again under a new leader (from the kill)"] = time.Since(killed)
	l.finish(t, l.f, r)
	// The killed node comes back and catches up: every replica current,
	// none behind.
	restarted := time.Now()
	name, index := victim.Name[len("nats-"):], victim.Index // restartNode replaces the record victim points into
	if err := env.c.restartNode(ctx, index); err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 60*time.Second, "the restarted node's replica to catch up", func() bool {
		i := streamInfo()
		if i == nil || i.Cluster == nil || len(i.Cluster.Replicas)+1 != 3 {
			return false
		}
		found := i.Cluster.Leader == name
		for _, p := range i.Cluster.Replicas {
			if !p.Current || p.Lag != 0 || p.Offline {
				return false
			}
			found = found || p.Name == name
		}
		return found
	})
	t.Logf("node %s restarted, and its replica of PRODUCTS caught up, %v after the restart began", name, time.Since(restarted).Round(time.Millisecond))
}

// TestChaosRollingRestart: all three gateways restarted one after the other
// (drain, stop, start, healthy in haproxy) under load; nothing missing, and
// the longest time any client was without a connection is reported.
func TestChaosRollingRestart(t *testing.T) {
	l := startLoad(t, restLoad(300))
	env, f, ctx := l.env, l.f, context.Background()
	r := newReport("rolling restart of the 3 gateways (drain window 2s)")
	rollStart := time.Now()
	for _, i := range env.c.gatewayIndexes() {
		t0 := time.Now()
		if err := env.c.restartGateway(ctx, i); err != nil {
			t.Fatal(err)
		}
		t.Logf("gateway %d restarted in %v; per gateway: %v", i, time.Since(t0).Round(time.Millisecond), f.byGateway())
	}
	r.recovery["the whole rolling restart"] = time.Since(rollStart)
	if n := goingAway(f); n < 300 {
		t.Errorf("%d connections closed with 1001 during the rolling restart; every client's connection should have been drained at least once", n)
	} else {
		t.Logf("%d connections closed by a draining gateway with 1001", n)
	}
	testenv.WaitUntil(t, 60*time.Second, "every client to be subscribed", func() bool { return f.connectedCount() == 300 })
	l.cancel()
	l.finish(t, f, r)
}

// TestChaosScale: gateways scaled 3 -> 5 -> 2 while clients run: nothing
// missing.
func TestChaosScale(t *testing.T) {
	l := startLoad(t, restLoad(200))
	env, f, ctx := l.env, l.f, context.Background()
	r := newReport("scale gateways 3 -> 5 -> 2 (drain window 2s)")
	t0 := time.Now()
	if err := env.c.scale(ctx, 5); err != nil {
		t.Fatal(err)
	}
	r.recovery["scale 3 -> 5"] = time.Since(t0)
	// New clients land on the new gateways (least connections).
	extra := startFleet(t, env, 50, 10, l.products)
	t.Logf("with 5 gateways, new clients per gateway: %v", extra.byGateway())
	t0 = time.Now()
	if err := env.c.scale(ctx, 2); err != nil {
		t.Fatal(err)
	}
	r.recovery["scale 5 -> 2"] = time.Since(t0)
	testenv.WaitUntil(t, 60*time.Second, "every client to be subscribed", func() bool {
		return f.connectedCount() == len(f.clients) && extra.connectedCount() == len(extra.clients)
	})
	t.Logf("with 2 gateways: %v + %v; %d connections closed with 1001 by draining gateways", f.byGateway(), extra.byGateway(), goingAway(f)+goingAway(extra))
	if goingAway(f)+goingAway(extra) == 0 {
		t.Error("no connection was closed with 1001 while three gateways drained")
	}
	l.cancel()
	all := &fleet{clients: append(append([]*wsClient{}, f.clients...), extra.clients...)}
	l.finish(t, all, r)
}

// TestCookbook runs the nats CLI cookbook against a cluster, as
// make cluster-cookbook does against yours.
func TestCookbook(t *testing.T) {
	env := startClusterWith(t, 1, nil) // the stream's default history: 8 changes per product, one page of stream view
	cli, err := filepath.Abs(filepath.Join("..", "..", "bin", "nats"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cli); err != nil {
		t.Fatalf("the nats CLI is not in bin/ (make tools installs it): %v", err)
	}
	readme := defaultCookbook(filepath.Join("..", ".."))
	out := testWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := checkCookbook(ctx, out, env.c, readme, cli); err != nil {
		t.Fatal(err)
	}
}

// restartNode starts node i again after it stopped or was killed, and
// waits until it is healthy.
func (c *cluster) restartNode(ctx context.Context, i int) error {
	c.st.NATS = slices.DeleteFunc(c.st.NATS, func(n Node) bool { return n.Index == i })
	if err := c.startNode(ctx, i); err != nil {
		return err
	}
	return c.waitNode(ctx, i)
}

// goingAway counts the connections the gateways closed with 1001 (going
// away: the drain of a gateway shutting down).
func goingAway(f *fleet) int {
	n := 0
	for _, c := range f.clients {
		c.mu.Lock()
		n += c.closeCodes[websocket.StatusGoingAway]
		c.mu.Unlock()
	}
	return n
}
