package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/productwatch/productwatch/deploy/loadgen/tally"
)

// scenario is one measurement: a fresh system, clients watching products,
// writers changing them.
type scenario struct {
	Name     string  `json:"name"`
	Title    string  `json:"title"`
	Clients  int     `json:"clients"`
	Watch    int     `json:"watchPerClient"` // products each client watches (random among Products when fewer)
	Products int     `json:"products"`
	Rate     float64 `json:"changesPerSecond"`
	Duration string  `json:"duration"`
	RowBytes int     `json:"rowBytes"`
	Stalled  int     `json:"stalledClients"`
	Idle     bool    `json:"idle"` // connections only (S5)
	Bridge   bool    `json:"bridgeBenchmark"`
	// Batch: the clients open /websocket?batch=1 (events waiting together
	// come as one JSON array message).
	Batch bool `json:"batch,omitempty"`
	// GatewayEnv: settings given to the gateway for this scenario.
	GatewayEnv []string `json:"gatewayEnv,omitempty"`

	duration time.Duration
	profile  bool // take a CPU profile of the gateway during the window
}

// scenarios returns S1–S6 as the issue defines them; scale < 1 shrinks
// clients, rates and durations for a quick try.
func scenarios(scale float64) []scenario {
	sc := func(n int) int { return max(1, int(float64(n)*scale)) }
	dur := func(d time.Duration) time.Duration { return max(time.Second, time.Duration(float64(d)*scale)) }
	list := []scenario{
		{Name: "S1", Title: "100 clients on 1 product, 50 changes/s",
			Clients: sc(100), Watch: 1, Products: 1, Rate: 50, duration: dur(10 * time.Second)},
		{Name: "S2", Title: "1,000 clients on 1 product, 200 changes/s",
			Clients: sc(1000), Watch: 1, Products: 1, Rate: 200, duration: dur(10 * time.Second)},
		{Name: "S2b", Title: "S2 with batched framing (/websocket?batch=1)",
			Clients: sc(1000), Watch: 1, Products: 1, Rate: 200, Batch: true, duration: dur(10 * time.Second)},
		{Name: "S3", Title: "1,000 clients × 10 random of 10,000 products, 1,000 changes/s",
			Clients: sc(1000), Watch: 10, Products: 10000, Rate: 1000 * scale, duration: dur(10 * time.Second)},
		{Name: "S4-base", Title: "100 clients on 1 product, 200 changes/s, ~6 KB rows (S4 without the stalled client)",
			Clients: sc(100), Watch: 1, Products: 1, Rate: 200, RowBytes: 6000, duration: dur(10 * time.Second)},
		{Name: "S4", Title: "S4-base + 1 client that never reads",
			Clients: sc(100), Watch: 1, Products: 1, Rate: 200, RowBytes: 6000, Stalled: 1, duration: dur(20 * time.Second)},
		{Name: "S5", Title: "50,000 idle subscribed connections on one gateway",
			Clients: sc(50000), Watch: 5, Products: 1000, Idle: true,
			GatewayEnv: []string{"WS_MAX_CONNECTIONS=" + fmt.Sprint(sc(50000)+1000)}},
		{Name: "S6", Title: "commit → JetStream: bridge capture rate vs pgbench log-only at 16 writers; latency at 1,000 changes/s",
			Bridge: true},
	}
	for i := range list {
		if list[i].duration > 0 {
			list[i].Duration = list[i].duration.String()
		}
	}
	return list
}

// runOptions are the settings of a whole run.
type runOptions struct {
	binDir      string
	stateDir    string
	outDir      string
	repoDir     string
	tls         bool
	via         string // sql or rest
	writers     int
	profile     string // scenario names whose gateway gets CPU-profiled
	drain       time.Duration
	commit      string
	s6Benchtime string
}

// result is the outcome of one scenario.
type result struct {
	Scenario scenario `json:"scenario"`
	Error    string   `json:"error,omitempty"`
	Started  string   `json:"started"`
	Seconds  float64  `json:"seconds"`

	Writes *writeResult `json:"writes,omitempty"`
	// Readers: the clients that read; every count is summed over them.
	Readers *tally.Client `json:"readers,omitempty"`
	// Messages: the WebSocket messages carrying events the readers read
	// (fewer than the events with batched framing).
	Messages         int64 `json:"eventMessages,omitempty"`
	Events           int64 `json:"eventsRead,omitempty"`
	ReadersComplete  int   `json:"readersWithEveryVersion"`
	ReadersConflated int   `json:"readersMissingVersions"`
	ReadersDropped   int   `json:"readersClosedEarly"`
	// WorstReader is the account of the reader with the most missing,
	// duplicated, stale and wasted events.
	WorstReader   *tally.Client   `json:"worstReader,omitempty"`
	GatewayErrors []string        `json:"gatewayErrors,omitempty"`
	Stalled       []stalledResult `json:"stalled,omitempty"`
	DrainSeconds  float64         `json:"drainSeconds"`
	// MissingExample lists some versions the first client that missed any
	// did not receive, for diagnosis.
	MissingExample string `json:"missingExample,omitempty"`

	CommitLatency  tally.Summary      `json:"commitToClient"`
	WriterLatency  tally.Summary      `json:"writerToClient"`
	Freshness      tally.Summary      `json:"freshness"`
	LatencyCurve   []curvePoint       `json:"commitToClientCurve,omitempty"`
	Usage          *usageReport       `json:"usage,omitempty"`
	CPUPer100k     float64            `json:"cpuSecondsPer100kDeliveries,omitempty"` // gateway + bridge (+ embedded NATS)
	GatewayMetrics map[string]float64 `json:"gatewayMetricsDelta,omitempty"`
	Profile        string             `json:"gatewayCpuProfile,omitempty"`
	Idle           *idleResult        `json:"idle,omitempty"`
	Bridge         *bridgeResult      `json:"bridge,omitempty"`

	latencies *tally.Latencies
}

// curvePoint is one point of a latency percentile curve.
type curvePoint struct {
	Percentile float64 `json:"percentile"`
	Millis     float64 `json:"ms"`
}

// runFanout runs a scenario with writers and reading clients (S1–S4).
func runFanout(ctx context.Context, dbs *database, sc scenario, opts runOptions, logger *slog.Logger) (*result, error) {
	res := &result{Scenario: sc}
	s, err := startSystem(ctx, dbs, sc.Name, systemOptions{binDir: opts.binDir, stateDir: opts.stateDir, tls: opts.tls,
		gateway: sc.GatewayEnv, products: sc.Products, rowBytes: sc.RowBytes}, logger)
	if err != nil {
		return res, err
	}
	defer s.stop(ctx)

	rng := rand.New(rand.NewPCG(uint64(len(sc.Name)), 2))
	watches := make([][]int64, sc.Clients)
	for i := range watches {
		if sc.Watch >= sc.Products {
			watches[i] = idRange(sc.Products)
		} else {
			watches[i] = pickDistinct(rng, sc.Products, sc.Watch)
		}
	}
	// Room for every event a client should get, so that appending never
	// copies during the window.
	expectFrames := int(sc.Rate*sc.duration.Seconds()*float64(sc.Watch)/float64(sc.Products)*1.1) + 16
	var readers sync.WaitGroup
	wsURL := s.wsURL()
	if sc.Batch {
		wsURL += "?batch=1"
	}
	d := newDialer(wsURL, sc.Clients)
	clients, err := connectClients(ctx, d, sc.Clients, 32, func(i int) []int64 { return watches[i] }, expectFrames, &readers)
	defer closeClients(clients, &readers)
	if err != nil {
		return res, err
	}
	var stalled []*stalledClient
	for range sc.Stalled {
		st, err := dialStalled(ctx, s.wsURL(), idRange(min(sc.Products, sc.Watch)))
		if err != nil {
			return res, err
		}
		defer st.ws.CloseNow()
		stalled = append(stalled, st)
	}
	logger.Info("clients subscribed", "scenario", sc.Name, "clients", len(clients), "stalled", len(stalled))

	metricsBefore := counters(s.gatewayMetricsPage(), "productwatch_ws_")
	before := snapshot(ctx, s)
	var profileDone chan string
	if sc.profile {
		profileDone = make(chan string, 1)
		pctx, cancel := context.WithCancel(ctx)
		go func() { profileDone <- takeProfile(pctx, s.debugAddr, sc.duration, opts, sc.Name) }()
		defer func() { // on an early return: stop the profile and wait for it
			cancel()
			if res.Profile == "" {
				<-profileDone
			}
		}()
	}
	newUpdater := func(ctx context.Context) (updater, error) { return newSQLUpdater(ctx, s.db) }
	if opts.via == "rest" {
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: opts.writers, TLSClientConfig: probeClient.Transport.(*http.Transport).TLSClientConfig}}
		newUpdater = func(context.Context) (updater, error) {
			return &restUpdater{client: hc, baseURL: s.baseURL(), token: s.apiToken}, nil
		}
	}
	products := idRange(sc.Products)
	writes, err := write(ctx, writeOptions{rate: sc.Rate, duration: sc.duration, products: products,
		connections: opts.writers, via: opts.via, seed: 7}, newUpdater)
	if err != nil {
		return res, err
	}
	res.Writes = writes

	// Drain: until every reader holds the last version of what it watches
	// (or has been closed), bounded by opts.drain.
	finals := writes.finals()
	drainStart := time.Now()
	_ = waitFor(ctx, nil, opts.drain, "every client up to date", func() bool {
		for _, c := range clients {
			if !c.holds(finals) {
				return false
			}
		}
		return true
	})
	res.DrainSeconds = time.Since(drainStart).Seconds()
	after := snapshot(ctx, s)
	usage := usageBetween(before, after)
	res.Usage = &usage
	res.GatewayMetrics = delta(metricsBefore, counters(s.gatewayMetricsPage(), "productwatch_ws_"))
	if profileDone != nil {
		res.Profile = <-profileDone
	}
	for _, st := range stalled {
		res.Stalled = append(res.Stalled, st.drain(writes.commits, 5*time.Second))
	}
	closeClients(clients, &readers)

	lat := tally.NewLatencies()
	var sum tally.Client
	res.WorstReader = &tally.Client{Missing: -1}
	for i, c := range clients {
		frames, gwErrors, readErr := c.result()
		res.Messages += c.messages.Load()
		res.Events += c.events.Load()
		acc := tally.Account(c.watch, writes.commits, frames, lat)
		if acc.Missing > 0 && res.MissingExample == "" {
			res.MissingExample = missingExample(i, c.watch, writes.commits, frames)
		}
		sum.Add(acc)
		if acc.Missing+acc.Duplicates+acc.OutOfOrder+acc.Wasted > res.WorstReader.Missing+res.WorstReader.Duplicates+
			res.WorstReader.OutOfOrder+res.WorstReader.Wasted {
			res.WorstReader = &acc
		}
		switch {
		case acc.Missing == 0:
			res.ReadersComplete++
		default:
			res.ReadersConflated++
		}
		if readErr != nil {
			res.ReadersDropped++
			if len(res.GatewayErrors) < 5 {
				res.GatewayErrors = append(res.GatewayErrors, "read: "+readErr.Error())
			}
		}
		for _, e := range gwErrors {
			if len(res.GatewayErrors) < 10 {
				res.GatewayErrors = append(res.GatewayErrors, e)
			}
		}
	}
	res.Readers = &sum
	res.latencies = lat
	res.CommitLatency = tally.Summarize(lat.Commit)
	res.WriterLatency = tally.Summarize(lat.Writer)
	res.Freshness = tally.Summarize(lat.Freshness)
	res.LatencyCurve = curve(lat)
	if sum.Delivered > 0 {
		res.CPUPer100k = (usage.Gateway.CPUSeconds + usage.Bridge.CPUSeconds) / float64(sum.Delivered) * 1e5
	}
	return res, nil
}

// missingExample names up to 20 versions client i did not receive.
func missingExample(i int, watch []int64, commits tally.Commits, frames []tally.Frame) string {
	got := map[[2]int64]bool{}
	for _, f := range frames {
		got[[2]int64{f.ProductID, f.Version}] = true
	}
	var missing []string
	for _, id := range watch {
		for _, c := range commits[id] {
			if !got[[2]int64{id, c.Version}] && len(missing) < 20 {
				missing = append(missing, fmt.Sprintf("%d.v%d", id, c.Version))
			}
		}
	}
	return fmt.Sprintf("client %d did not receive (product.version): %s", i, strings.Join(missing, " "))
}

// curve returns the commit → client latency at the percentiles the picture
// shows.
func curve(lat *tally.Latencies) []curvePoint {
	if lat.Commit.TotalCount() == 0 {
		return nil
	}
	var out []curvePoint
	for _, p := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100} {
		out = append(out, curvePoint{Percentile: p, Millis: float64(lat.Commit.ValueAtQuantile(p)) / 1000})
	}
	return out
}

// delta returns after minus before for every series of after.
func delta(before, after map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(after))
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if v := after[k] - before[k]; v != 0 || strings.HasSuffix(k, "connections") {
			out[k] = v
		}
	}
	return out
}

// takeProfile fetches a CPU profile of the gateway over d and saves it in
// the output directory; it returns the file's path ("" on failure, logged).
func takeProfile(ctx context.Context, debugAddr string, d time.Duration, opts runOptions, name string) string {
	secs := max(1, int(d.Seconds()))
	client := &http.Client{Timeout: d + 30*time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", debugAddr, secs), nil)
	if err != nil {
		return "error: " + err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "error: " + resp.Status
	}
	path := filepath.Join(opts.outDir, fmt.Sprintf("%s-%s-gateway.pprof", opts.commit, name))
	f, err := os.Create(path)
	if err != nil {
		return "error: " + err.Error()
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		return "error: " + err.Error()
	}
	return path
}

// idleResult is S5's outcome.
type idleResult struct {
	Connections         int     `json:"connections"`
	SourceAddresses     int     `json:"sourceAddresses"`
	GatewayRSSBeforeMiB float64 `json:"gatewayRssBeforeMiB"`
	GatewayRSSAfterMiB  float64 `json:"gatewayRssAfterMiB"`
	KiBPerConnection    float64 `json:"gatewayKiBPerConnection"`
	LoadgenKiBPerConn   float64 `json:"loadgenKiBPerConnection"`
	ConnectSeconds      float64 `json:"connectSeconds"`
	GatewayConnections  float64 `json:"gatewayConnectionsGauge"`
	NoFileLimit         uint64  `json:"openFileLimit"`
	Note                string  `json:"note,omitempty"`
}

// runIdle opens sc.Clients idle subscribed connections (S5) and measures
// the gateway's resident memory per connection.
func runIdle(ctx context.Context, dbs *database, sc scenario, opts runOptions, logger *slog.Logger) (*result, error) {
	res := &result{Scenario: sc}
	// Every connection takes a file descriptor in the gateway and one here;
	// the gateway inherits this process's limit.
	limit, err := raiseNoFile(uint64(sc.Clients + 5000))
	if err != nil {
		return res, err
	}
	note := ""
	if asked := sc.Clients; limit < uint64(asked+1000) {
		if limit < 2000 {
			return res, fmt.Errorf("%w: open-file limit %d", errSkipped, limit)
		}
		sc.Clients = int(limit) - 1000
		res.Scenario.Clients = sc.Clients
		note = fmt.Sprintf("asked for %d connections; the open-file limit is %d and this process may not raise it "+
			"(raising the hard limit needs CAP_SYS_RESOURCE), so %d were opened", asked, limit, sc.Clients)
		logger.Warn("fewer idle connections than asked", "asked", asked, "opened", sc.Clients, "nofile", limit)
	}
	s, err := startSystem(ctx, dbs, sc.Name, systemOptions{binDir: opts.binDir, stateDir: opts.stateDir, tls: opts.tls,
		gateway: sc.GatewayEnv, products: sc.Products}, logger)
	if err != nil {
		return res, err
	}
	defer s.stop(ctx)
	before := snapshot(ctx, s)
	rng := rand.New(rand.NewPCG(5, 5))
	watches := make([][]int64, sc.Clients)
	for i := range watches {
		watches[i] = pickDistinct(rng, sc.Products, sc.Watch)
	}
	var readers sync.WaitGroup
	d := newDialer(s.wsURL(), sc.Clients)
	start := time.Now()
	clients, err := connectClients(ctx, d, sc.Clients, 64, func(i int) []int64 { return watches[i] }, 0, &readers)
	defer closeClients(clients, &readers)
	if err != nil {
		return res, err
	}
	connect := time.Since(start)
	after := snapshot(ctx, s)
	usage := usageBetween(before, after)
	res.Usage = &usage
	res.Idle = &idleResult{
		Connections:         sc.Clients,
		SourceAddresses:     len(d.clients),
		GatewayRSSBeforeMiB: mib(before.gateway.RSS),
		GatewayRSSAfterMiB:  mib(after.gateway.RSS),
		KiBPerConnection:    float64(after.gateway.RSS-before.gateway.RSS) / float64(sc.Clients),
		LoadgenKiBPerConn:   float64(after.self.RSS-before.self.RSS) / float64(sc.Clients),
		ConnectSeconds:      connect.Seconds(),
		GatewayConnections:  metricValue(s.gatewayMetricsPage(), "productwatch_ws_connections"),
		NoFileLimit:         limit,
		Note:                note,
	}
	logger.Info("idle connections open", "connections", sc.Clients, "kib_per_conn", res.Idle.KiBPerConnection)
	return res, nil
}
