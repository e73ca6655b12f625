package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/procstat"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// The write-path benchmark: 16 pgbench clients UPDATE random products, with
// synchronous commit on (the server's setting), in several set-ups of the
// trigger and the bridge. See BENCHMARKS.md for the figures and how to read
// them.
const (
	benchWriteClients  = 16
	benchWriteThreads  = 2
	benchWriteProducts = 1000 // deploy/bench/update.sql picks ids 1 to 1000
	// benchWriteScript is the pgbench script, relative to this package.
	benchWriteScript = "../deploy/bench/update.sql"
	// A run makes at least this many updates whatever b.N is: -benchtime 1x
	// (and the framework's first probe, N=1) must measure something.
	benchWriteMinUpdates = 20000
	// The rate-limited run: 10 s at 1,000 updates/s.
	benchWriteRate           = 1000
	benchWriteRateMinUpdates = 10000
	// The trickle (issue 10's S1): about 10 s at 50 updates/s.
	benchWriteTrickleRate       = 50
	benchWriteTrickleMinUpdates = 500
	// benchCatchUpTimeout bounds the wait for the stream to hold every change.
	benchCatchUpTimeout = time.Minute
)

// pgbenchWrites returns the pgbench program and the absolute path of its
// write script (benchWriteScript), or fails the benchmark.
func pgbenchWrites(b *testing.B) (pgbench, script string) {
	b.Helper()
	pgbench, err := pgserver.Tool("pgbench")
	if err != nil {
		b.Fatal(err)
	}
	script, err = filepath.Abs(benchWriteScript)
	if err != nil {
		b.Fatal(err)
	}
	return pgbench, script
}

// benchWriteVariant is one set-up of the write path.
type benchWriteVariant struct {
	name       string
	trigger    bool // the change-log trigger is enabled
	wakeup     int  // the product_change_wakeup flag: 2 = pg_notify per row, 1 = none; 0 = the bridge sets it
	listen     bool // a connection LISTENs on the change channel and reads every notification
	bridge     bool // the bridge runs in this process, adaptive (it sets the flag itself)
	rate       int  // pgbench -R; 0 = as fast as it can
	minUpdates int
}

var benchWriteVariants = []benchWriteVariant{
	{name: "plain", minUpdates: benchWriteMinUpdates},
	{name: "log-only", trigger: true, wakeup: 1, minUpdates: benchWriteMinUpdates},
	{name: "notify", trigger: true, wakeup: 2, minUpdates: benchWriteMinUpdates},
	{name: "notify+listen", trigger: true, wakeup: 2, listen: true, minUpdates: benchWriteMinUpdates},
	{name: "productwatch", trigger: true, bridge: true, minUpdates: benchWriteMinUpdates},
	{name: "productwatch-rate=1000", trigger: true, bridge: true, rate: benchWriteRate, minUpdates: benchWriteRateMinUpdates},
	{name: "productwatch-rate=50", trigger: true, bridge: true, rate: benchWriteTrickleRate, minUpdates: benchWriteTrickleMinUpdates},
}

// BenchmarkBridgeWritePath measures what the change log, NOTIFY and the
// bridge cost the writers, and how long a change takes from its commit to
// NATS. Each sub-benchmark runs pgbench (deploy/bench/update.sql, 16
// clients, -M prepared) once on a fresh database of 1,000 products:
//
//   - plain: the change-log trigger disabled (no log, no NOTIFY);
//   - log-only: the trigger writes the change log, the wake-up flag is off
//     (no pg_notify), no bridge;
//   - notify: the trigger also calls pg_notify for every row, nobody
//     listens (what writers paid before the bridge issue);
//   - notify+listen: the same, with a connection LISTENing and reading every
//     notification (what writers paid while a bridge listened);
//   - productwatch: the bridge runs in this process, adaptively (it turns
//     NOTIFY off while it reads the log continuously), publishing to an
//     embedded NATS server;
//   - productwatch-rate=1000: the same at 1,000 updates/s (pgbench -R);
//   - productwatch-rate=50: the same at 50 updates/s, a trickle.
//
// b.N counts updates, spread over the 16 clients; a run makes at least
// 20,000 (10,000 at 1,000/s), so `-benchtime 1x` gives one full run per
// variant. The bridge is warmed up first (see benchWritePath), then left to
// go idle, so that a run starts with the wake-up from idle and then
// measures the steady state. A change missing from the stream fails the
// benchmark.
//
// Metrics: updates/s (pgbench's tps, without connection time). For the
// productwatch variants also: the latency from each change's changedAt (the
// trigger's clock, a little before its commit) to its arrival at a core
// NATS subscriber of product.> in this process (p50_ms, p99_ms, max_ms:
// exact, from every change); the bridge's own commit-to-ack histogram
// (ack_p99_le_ms: the bucket bound below which 99 % of the run's
// acknowledgements fell); the largest lag (lag_max_changes: the bridge's
// productwatch_bridge_lag_changes gauge, which it samples every 2 s, scraped
// every 100 ms; behind_max_changes: changes made minus messages stored,
// sampled every 100 ms); how long after pgbench's last commit the stream
// held every change (catchup_ms); and productwatch's rate as a percentage of
// log-only's (%log-only), when both ran in the same invocation. What the
// bridge costs while pgbench runs: its reads of the change log per second
// (reads/s, from productwatch_bridge_polls_total), the CPU of this process
// (proc_cpu_%: the bridge, the embedded NATS server and the latency
// subscriber; % of one core) and of the PostgreSQL backends serving the
// bridge's connections (pg_bridge_cpu_%: the log reads, the LISTEN
// connection, the leader lock; from /proc).
func BenchmarkBridgeWritePath(b *testing.B) {
	pgbench, script := pgbenchWrites(b)
	rates := map[string]float64{} // sub-benchmarks run one after another
	for _, v := range benchWriteVariants {
		b.Run(v.name, func(b *testing.B) {
			rate := benchWritePath(b, pgbench, script, v)
			rates[v.name] = rate
			if base, ok := rates["log-only"]; ok && v.bridge && v.rate == 0 {
				b.ReportMetric(100*rate/base, "%log-only")
			}
		})
	}
}

// benchWritePath runs one variant and returns its update rate.
func benchWritePath(b *testing.B, pgbench, script string, v benchWriteVariant) float64 {
	ctx := b.Context()
	pg := testenv.Postgres(b)
	benchExec(b, pg.DB, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Apple', 'MacBook ' || i, 500, 'EUR', i FROM generate_series(1, $1) AS i`, benchWriteProducts)
	if !v.trigger {
		benchExec(b, pg.DB, `ALTER TABLE products DISABLE TRIGGER notify_event_on_products_update`)
	}
	if v.wakeup != 0 {
		benchExec(b, pg.DB, `SELECT setval('product_change_wakeup', $1)`, v.wakeup)
	}
	var notified atomic.Int64
	if v.listen {
		benchListen(b, pg.DSN, &notified)
	}
	var (
		br  *benchBridge
		lat *benchLatency
	)
	if v.bridge {
		br = startBenchBridge(b, pg.DSN)
		// Warm up. A bridge that has just started checks its first
		// 4 × BATCH_SIZE changes against the stream one at a time (they
		// may have been published before it started): a round trip to
		// NATS each, a second or more in all, which is not the steady
		// state this benchmark measures. Whole-table UPDATEs get it past
		// them.
		warm := int64(benchWriteProducts)
		for warm < benchWriteProducts+4*int64(br.cfg.BatchSize)+benchWriteProducts {
			benchExec(b, pg.DB, `UPDATE products SET units_available = units_available`)
			warm += benchWriteProducts
		}
		// Then start as production does after a quiet spell: every change
		// in the stream, the bridge idle and asking for wake-ups. (The lag
		// gauge is sampled every 2 s: wait for a sample that shows it.)
		br.mustWait(b, "the warm-up changes in the stream and the bridge idle", func() bool {
			last, _ := br.streamLastSeq(ctx)
			return int64(last) == warm && br.metric("productwatch_bridge_wakeup_wanted") == 1 &&
				br.metric("productwatch_bridge_lag_changes") == 0
		})
		lat = subscribeLatency(b, br.natsURL)
	}
	// A checkpoint now rather than in the middle of the run (it needs a
	// superuser, or pg_checkpoint: without, the run takes its chances).
	if _, err := pg.DB.ExecContext(ctx, `CHECKPOINT`); err != nil {
		b.Logf("no checkpoint before the run: %v", err)
	}
	var baseSeq int64 // the changes of the run are those above
	if err := pg.DB.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM product_changes`).Scan(&baseSeq); err != nil {
		b.Fatal(err)
	}

	perClient := (max(b.N, v.minUpdates) + benchWriteClients - 1) / benchWriteClients
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(benchWriteClients), "-j", strconv.Itoa(benchWriteThreads),
		"-t", strconv.Itoa(perClient), "-f", script}
	if v.rate > 0 {
		args = append(args, "-R", strconv.Itoa(v.rate))
	}
	args = append(args, pg.DSN)

	var (
		sampler       *benchLagSampler
		metricsBefore string
		cpuBefore     benchCPU
	)
	if br != nil {
		sampler = br.sampleLag(ctx, pg.DB)
		metricsBefore = br.scrape()
		cpuBefore = br.cpu(b, pg.DB)
	}
	b.ResetTimer()
	start := time.Now()
	out, err := exec.CommandContext(ctx, pgbench, args...).CombinedOutput()
	ended := time.Now()
	b.StopTimer()
	var cpuDuring benchCPUUsed
	if br != nil {
		cpuDuring = br.cpu(b, pg.DB).since(cpuBefore)
	}
	if err != nil {
		b.Fatalf("pgbench %s: %v\n%s", strings.Join(args[:len(args)-1], " "), err, out)
	}
	res, err := parsePgbench(string(out))
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	updates := perClient * benchWriteClients
	if res.failed != 0 || res.processed != updates {
		b.Fatalf("pgbench processed %d of %d updates, %d failed:\n%s", res.processed, updates, res.failed, out)
	}
	b.ReportMetric(res.tps, "updates/s")
	b.ReportMetric(1e9/res.tps, "ns/op") // per update, whatever b.N was
	b.Logf("%d updates in %v (%.0f/s) from %s to %s; pgbench latency average %.3f ms%s", updates, ended.Sub(start).Round(time.Millisecond), res.tps,
		start.Format("15:04:05"), ended.Format("15:04:05"), res.latencyMS, strings.TrimRight(" "+pgbenchScheduleLag.FindString(string(out)), " "))

	if v.listen {
		// Every notification must have been read: the listener kept up.
		want := int64(updates)
		deadline := time.Now().Add(benchCatchUpTimeout)
		for notified.Load() < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling a counter with a deadline
		}
		b.Logf("listener read %d notifications", notified.Load())
	}
	if br == nil {
		return res.tps
	}

	// Keeping up: how long after the last commit the stream holds every
	// change. The stream keeps only the last few changes of each product, so
	// what counts is its last sequence number: one per stored message
	// (duplicates are dropped before they get one). Writes have stopped, so
	// the log's row count is final. The wait also ends when the bridge's
	// cursor passes the last change: it will publish nothing more.
	var changes, maxSeq int64
	if err := pg.DB.QueryRowContext(ctx, `SELECT count(*), max(seq) FROM product_changes`).Scan(&changes, &maxSeq); err != nil {
		b.Fatal(err)
	}
	br.mustWait(b, fmt.Sprintf("%d changes in the stream, or the cursor at %d", changes, maxSeq), func() bool {
		last, _ := br.streamLastSeq(ctx)
		return int64(last) >= changes || br.metric("productwatch_bridge_cursor_seq") >= float64(maxSeq)
	})
	catchUp := time.Since(ended)
	lagMax, behindMax := sampler.stop()
	stored, err := br.streamLastSeq(ctx)
	if err != nil {
		b.Fatal(err)
	}
	arrivals := lat.stop(b)
	missing, twice, examples := benchMissing(b, pg.DB, baseSeq, arrivals, start)
	// A lost change fails the benchmark (after the figures, in the log).
	lost := missing > 0 || int64(stored) != changes
	defer func() {
		if lost {
			b.Errorf("LOST CHANGES: the stream stored %d messages for %d changes; the subscriber missed %d of the run's %d:\n%s",
				stored, changes, missing, updates, strings.Join(examples, "\n"))
		}
	}()
	if len(arrivals) == 0 {
		return res.tps
	}
	if !lost && twice > 0 {
		b.Logf("the subscriber received %d changes more than once (republished; the stream dropped the duplicates):\n%s",
			twice, strings.Join(examples, "\n"))
	}
	lastID := br.lastMsgID(b)
	samples := make([]time.Duration, len(arrivals))
	for i, a := range arrivals {
		samples[i] = a.latency
	}
	slices.Sort(samples)
	p50, p99, worst := benchQuantile(samples, 0.50), benchQuantile(samples, 0.99), samples[len(samples)-1]
	b.ReportMetric(benchMS(p50), "p50_ms")
	b.ReportMetric(benchMS(p99), "p99_ms")
	b.ReportMetric(benchMS(worst), "max_ms")
	metrics := br.scrape()
	wall := ended.Sub(start).Seconds()
	reads := sumMetric(metrics, "productwatch_bridge_polls_total") - sumMetric(metricsBefore, "productwatch_bridge_polls_total")
	b.ReportMetric(reads/wall, "reads/s")
	const horizon = "productwatch_bridge_local_horizon_reads_total"
	b.ReportMetric((sumMetric(metrics, horizon)-sumMetric(metricsBefore, horizon))/wall, "pg_locks_reads/s")
	b.ReportMetric(100*cpuDuring.process.Seconds()/wall, "proc_cpu_%")
	b.ReportMetric(100*cpuDuring.backends.Seconds()/wall, "pg_bridge_cpu_%")
	b.Logf("while pgbench ran (%.1f s): %.0f reads of the change log, this process %v CPU, the bridge's PostgreSQL backends %v CPU",
		wall, reads, cpuDuring.process.Round(time.Millisecond), cpuDuring.backends.Round(time.Millisecond))
	b.ReportMetric(1000*benchHistogramQuantileBound(metricsBefore, metrics, "productwatch_bridge_publish_latency_seconds", 0.99), "ack_p99_le_ms")
	b.ReportMetric(lagMax, "lag_max_changes")
	b.ReportMetric(float64(behindMax), "behind_max_changes")
	b.ReportMetric(float64(catchUp.Milliseconds()), "catchup_ms")
	b.Logf("stream complete %v after pgbench: %d changes, %d stored, last Nats-Msg-Id %s, max(seq) %d",
		catchUp.Round(time.Millisecond), changes, stored, lastID, maxSeq)
	b.Logf("commit -> subscriber: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (%d samples)",
		benchMS(p50), benchMS(benchQuantile(samples, 0.90)), benchMS(p99), benchMS(benchQuantile(samples, 0.999)), benchMS(worst), len(samples))
	b.Logf("bridge: %s", benchPollSummary(metrics))
	return res.tps
}

// pgbenchResult is what the benchmark reads from pgbench's report.
type pgbenchResult struct {
	processed, failed int
	tps, latencyMS    float64
}

var (
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	pgbenchTPS       = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	pgbenchLatency   = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	// With -R: how late transactions started against their schedule.
	pgbenchScheduleLag = regexp.MustCompile(`rate limit schedule lag: avg [0-9.]+ \(max [0-9.]+\) ms`)
)

func parsePgbench(out string) (pgbenchResult, error) {
	var r pgbenchResult
	find := func(re *regexp.Regexp) (string, error) {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return "", fmt.Errorf("pgbench output lacks %q", re)
		}
		return m[1], nil
	}
	var errs []error
	for _, f := range []struct {
		re  *regexp.Regexp
		set func(string) error
	}{
		{pgbenchProcessed, func(s string) (err error) { r.processed, err = strconv.Atoi(s); return }},
		{pgbenchFailed, func(s string) (err error) { r.failed, err = strconv.Atoi(s); return }},
		{pgbenchTPS, func(s string) (err error) { r.tps, err = strconv.ParseFloat(s, 64); return }},
		{pgbenchLatency, func(s string) (err error) { r.latencyMS, err = strconv.ParseFloat(s, 64); return }},
	} {
		s, err := find(f.re)
		if err == nil {
			err = f.set(s)
		}
		errs = append(errs, err)
	}
	return r, errors.Join(errs...)
}

func benchExec(b *testing.B, db *sql.DB, query string, args ...any) {
	b.Helper()
	if _, err := db.ExecContext(b.Context(), query, args...); err != nil {
		b.Fatalf("%s: %v", query, err)
	}
}

// benchListen LISTENs on the change channel until the benchmark ends,
// counting the notifications it reads.
func benchListen(b *testing.B, dsn string, n *atomic.Int64) {
	l := pq.NewListener(dsn, 100*time.Millisecond, time.Second, nil)
	if err := l.Listen(change.Channel); err != nil {
		b.Fatalf("LISTEN %s: %v", change.Channel, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range l.Notify {
			if ev != nil {
				n.Add(1)
			}
		}
	}()
	b.Cleanup(func() {
		l.Close() // closes l.Notify
		<-done
	})
}

// benchBridge is the bridge running in the benchmark's process.
type benchBridge struct {
	cfg         Config
	natsURL     string
	metricsAddr string
	js          jetstream.JetStream
}

// benchBridgeAppName is the application_name of the benchmark bridge's
// PostgreSQL connections, by which its backends are found.
const benchBridgeAppName = "productwatch-bench-bridge"

// startBenchBridge runs the bridge (Run, defaults from the environment as
// for the real program) against dsn and a NATS server of its own, and stops
// it when the benchmark ends.
func startBenchBridge(b *testing.B, dsn string) *benchBridge {
	nt := testenv.NATS(b)
	dsn, err := benchWithAppName(dsn, benchBridgeAppName)
	if err != nil {
		b.Fatal(err)
	}
	cfg := runBridgeInProcess(b, dsn, nt)
	_, js := testenv.ConnectJS(b, nt.URL, nats.Name("productwatch-bench"))
	return &benchBridge{cfg: cfg, natsURL: nt.URL, metricsAddr: cfg.MetricsAddr, js: js}
}

// runBridgeInProcess starts Run with the configuration the environment gives
// (as the real program would read it), dsn, natsURL and a free metrics
// port; it waits until the bridge leads, and stops it when tb ends. It
// returns the bridge's configuration.
func runBridgeInProcess(tb testing.TB, dsn string, ns *testenv.NATSServer) Config {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	cfg, err := loadConfig(nil)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL, cfg.NATSAuth, cfg.MetricsAddr = dsn, ns.URL, ns.Bridge, metricsAddr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testenv.Logger(tb)) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("bridge: Run = %v", err)
			}
		case <-time.After(30 * time.Second):
			tb.Error("bridge: Run did not return 30 s after cancel")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for benchScrapeMetric(metricsAddr, "productwatch_bridge_leader") != 1 {
		select {
		case err := <-done:
			tb.Fatalf("bridge: Run returned early: %v", err)
		case <-time.After(20 * time.Millisecond): // polling a condition with a deadline
		}
		if time.Now().After(deadline) {
			tb.Fatal("bridge: not leading after 30 s")
		}
	}
	return cfg
}

// benchWithAppName sets application_name in a URL or key=value DSN.
func benchWithAppName(dsn, name string) (string, error) {
	if !strings.Contains(dsn, "://") {
		return dsn + " application_name=" + name, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// benchCPU is CPU time used so far: by this process, and by the PostgreSQL
// backends of the bridge's connections.
type benchCPU struct {
	process  time.Duration
	backends map[int]time.Duration // by pid
}

// cpu reads the CPU time of this process (getrusage) and of the bridge's
// backends (/proc/<pid>/stat; PostgreSQL runs on this machine).
func (br *benchBridge) cpu(b *testing.B, db *sql.DB) benchCPU {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	c := benchCPU{process: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), backends: map[int]time.Duration{}}
	rows, err := db.QueryContext(b.Context(), `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, benchBridgeAppName)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			b.Fatal(err)
		}
		if st, err := procstat.ReadStat(pid); err == nil {
			c.backends[pid] = st.CPU
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return c
}

// benchCPUUsed is CPU time used over an interval.
type benchCPUUsed struct {
	process  time.Duration
	backends time.Duration // summed over the backends present at both ends
}

// since returns the CPU used between earlier and c.
func (c benchCPU) since(earlier benchCPU) (d benchCPUUsed) {
	d.process = c.process - earlier.process
	for pid, t := range c.backends {
		if t0, ok := earlier.backends[pid]; ok {
			d.backends += t - t0
		}
	}
	return d
}

// streamLastSeq returns the stream's last sequence number: how many messages
// it stored (duplicates get none), including those it no longer keeps.
func (br *benchBridge) streamLastSeq(ctx context.Context) (uint64, error) {
	stream, err := br.js.Stream(ctx, broker.StreamName)
	if err != nil {
		return 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// lastMsgID returns the Nats-Msg-Id of the stream's last message.
func (br *benchBridge) lastMsgID(b *testing.B) string {
	stream, err := br.js.Stream(b.Context(), broker.StreamName)
	if err != nil {
		b.Fatal(err)
	}
	info, err := stream.Info(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	msg, err := stream.GetMsg(b.Context(), info.State.LastSeq)
	if err != nil {
		b.Fatal(err)
	}
	return msg.Header.Get(nats.MsgIdHdr)
}

// waitFor polls cond until it holds, for benchCatchUpTimeout at most, and
// reports whether it held.
func (br *benchBridge) waitFor(b *testing.B, what string, cond func() bool) bool {
	b.Helper()
	if !testenv.Poll(b, benchCatchUpTimeout, cond) {
		b.Logf("no %s after %v", what, benchCatchUpTimeout)
		return false
	}
	return true
}

// mustWait is waitFor, failing the benchmark when cond does not hold.
func (br *benchBridge) mustWait(b *testing.B, what string, cond func() bool) {
	b.Helper()
	if !br.waitFor(b, what, cond) {
		b.Fatalf("bridge metrics:\n%s", br.scrape())
	}
}

func (br *benchBridge) metric(name string) float64 { return benchScrapeMetric(br.metricsAddr, name) }

func (br *benchBridge) scrape() string { return benchScrape(br.metricsAddr) }

// benchScrape returns the bridge's /metrics page ("" when it does not answer).
func benchScrape(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		return ""
	}
	return string(page)
}

// benchScrapeMetric returns the value of a metric (summed over its labels),
// NaN when absent.
func benchScrapeMetric(addr, name string) float64 {
	return sumMetric(benchScrape(addr), name)
}

// benchHistogramQuantileBound returns the upper bound of the first bucket of
// histogram name holding at least q of the observations made between two
// scrapes of it (+Inf if none).
func benchHistogramQuantileBound(before, after, name string, q float64) float64 {
	parse := func(page string) (map[float64]uint64, uint64) {
		m, err := testenv.ParseMetrics(page)
		if err != nil {
			return nil, 0
		}
		return m.Histogram(name)
	}
	was, wasCount := parse(before)
	now, nowCount := parse(after)
	total := float64(nowCount - wasCount)
	bounds := make([]float64, 0, len(now))
	for le := range now {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	for _, le := range bounds {
		if float64(now[le]-was[le]) >= q*total {
			return le
		}
	}
	return math.Inf(1)
}

// benchPollSummary says how the relay read the log: its reads by reason,
// publishes and duplicates.
func benchPollSummary(page string) string {
	var parts []string
	for line := range strings.Lines(page) {
		if strings.HasPrefix(line, "productwatch_bridge_polls_total{") ||
			strings.HasPrefix(line, "productwatch_bridge_cursor_seq ") ||
			strings.HasPrefix(line, "productwatch_bridge_changes_published_total ") ||
			strings.HasPrefix(line, "productwatch_bridge_duplicates_total ") ||
			strings.HasPrefix(line, "productwatch_bridge_publish_failures_total ") ||
			strings.HasPrefix(line, "productwatch_bridge_notify_throttled_total ") {
			parts = append(parts, strings.TrimPrefix(strings.TrimSpace(line), "productwatch_bridge_"))
		}
	}
	return strings.Join(parts, ", ")
}

// benchLagSampler samples the bridge's lag every 100 ms while pgbench runs.
type benchLagSampler struct {
	cancel    context.CancelFunc
	done      chan struct{}
	lagMax    float64 // productwatch_bridge_lag_changes
	behindMax int64   // changes made (the seq sequence) minus messages in the stream
}

func (br *benchBridge) sampleLag(ctx context.Context, db *sql.DB) *benchLagSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &benchLagSampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v := br.metric("productwatch_bridge_lag_changes"); v > s.lagMax {
				s.lagMax = v
			}
			var made int64
			stored, err := br.streamLastSeq(ctx)
			if err == nil && db.QueryRowContext(ctx, `SELECT last_value FROM product_changes_seq`).Scan(&made) == nil {
				s.behindMax = max(s.behindMax, made-int64(stored))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *benchLagSampler) stop() (lagMax float64, behindMax int64) {
	s.cancel()
	<-s.done
	return s.lagMax, s.behindMax
}

// benchLatency records when each change reaches a core NATS subscriber of
// product.>; the events are decoded after the run, to leave the CPU to the
// bridge meanwhile.
type benchLatency struct {
	sub *nats.Subscription
	mu  sync.Mutex
	got []benchArrival
}

type benchArrival struct {
	at   time.Time
	data []byte
}

func subscribeLatency(b *testing.B, natsURL string) *benchLatency {
	nc, err := nats.Connect(natsURL, nats.Name("productwatch-bench-subscriber"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	l := &benchLatency{got: make([]benchArrival, 0, 64<<10)}
	l.sub, err = nc.Subscribe(change.SubjectPrefix+">", func(m *nats.Msg) {
		at := time.Now()
		l.mu.Lock()
		l.got = append(l.got, benchArrival{at: at, data: m.Data})
		l.mu.Unlock()
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := l.sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return l
}

// benchEvent is a change as the subscriber received it.
type benchEvent struct {
	seq     int64
	latency time.Duration // from changedAt to arrival
}

// stop unsubscribes and returns every change received.
func (l *benchLatency) stop(b *testing.B) []benchEvent {
	if err := l.sub.Drain(); err != nil {
		b.Fatal(err)
	}
	for l.sub.IsValid() {
		time.Sleep(time.Millisecond) // polling the drain's end
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]benchEvent, 0, len(l.got))
	for _, a := range l.got {
		var ev struct {
			Seq       int64     `json:"seq"`
			ChangedAt time.Time `json:"changedAt"`
		}
		if err := json.Unmarshal(a.data, &ev); err != nil || ev.ChangedAt.IsZero() {
			b.Fatalf("event without changedAt: %s (%v)", a.data, err)
		}
		out = append(out, benchEvent{seq: ev.Seq, latency: a.at.Sub(ev.ChangedAt)})
	}
	return out
}

// benchMissing compares the changes received with the change log above
// baseSeq: how many were not received, how many more than once, and a
// description of the first of those.
func benchMissing(b *testing.B, db *sql.DB, baseSeq int64, got []benchEvent, start time.Time) (missing, twice int, examples []string) {
	seen := make(map[int64]int, len(got))
	for _, ev := range got {
		seen[ev.seq]++
	}
	rows, err := db.QueryContext(b.Context(), `SELECT seq, product_id, version, xid::text, changed_at FROM product_changes WHERE seq > $1 ORDER BY seq`, baseSeq)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			seq, product, version int64
			xid                   string
			at                    time.Time
		)
		if err := rows.Scan(&seq, &product, &version, &xid, &at); err != nil {
			b.Fatal(err)
		}
		n := seen[seq]
		switch {
		case n == 0:
			missing++
		case n > 1:
			twice++
		}
		if n != 1 && len(examples) < 10 {
			examples = append(examples, fmt.Sprintf("  seq %d (product %d version %d, xid %s, changedAt %v after pgbench started) received %d times",
				seq, product, version, xid, at.Sub(start).Round(time.Microsecond), n))
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return missing, twice, examples
}

// benchQuantile returns the q quantile of sorted (nearest rank).
func benchQuantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
