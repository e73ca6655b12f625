package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lib/pq"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/procstat"
	"github.com/productwatch/productwatch/pkg/schema"
)

// readyTimeout bounds the wait for a program to answer /readyz, and for the
// bridge to publish the seeded products.
const readyTimeout = 90 * time.Second

// stopTimeout is how long a program gets to exit after SIGTERM before it is
// killed.
const stopTimeout = 20 * time.Second

// database is the PostgreSQL server the scenarios create their databases
// on, found the way `make run` finds it (pgserver.Resolve).
type database struct {
	adminDSN string
	cluster  *pgserver.Cluster // a private cluster started for the run; nil otherwise
	logger   *slog.Logger
}

// openDatabase resolves the server: DATABASE_URL, the local server on
// 127.0.0.1:5432, or a private cluster in stateDir/pgdata.
func openDatabase(ctx context.Context, stateDir string, logger *slog.Logger) (*database, error) {
	adminDSN, cluster, err := pgserver.Resolve(ctx, filepath.Join(stateDir, "pgdata"), logger)
	if err != nil {
		return nil, err
	}
	return &database{adminDSN: adminDSN, cluster: cluster, logger: logger}, nil
}

// dropStale drops the databases earlier load generators left behind when
// they were killed before cleaning up: productwatch_bench_<pid>_… whose
// process no longer runs.
func (d *database) dropStale(ctx context.Context) {
	db, err := sql.Open("postgres", d.adminDSN)
	if err != nil {
		return
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'productwatch\_bench\_%'`)
	if err != nil {
		return
	}
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(name, "productwatch_bench_%d_", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			stale = append(stale, name)
		}
	}
	rows.Close()
	for _, name := range stale {
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(name)+" WITH (FORCE)"); err == nil {
			d.logger.Info("dropped a database an earlier run left behind", "database", name)
		}
	}
}

// close stops the private cluster, if one was started.
func (d *database) close(ctx context.Context) {
	if d.cluster == nil {
		return
	}
	if err := d.cluster.Stop(context.WithoutCancel(ctx)); err != nil {
		d.logger.Warn("stopping the private PostgreSQL cluster", "err", err)
	}
}

// systemOptions says how to start the system under test for a scenario.
type systemOptions struct {
	binDir   string
	stateDir string
	tls      bool     // the gateway serves HTTPS with its development certificate; else INSECURE_HTTP
	gateway  []string // extra environment for the gateway (KEY=value)
	products int      // products seeded before the programs start
	rowBytes int      // approximate size of each product row's text (its name)
}

// system is one fresh productwatch: a database of its own, a bridge with
// NATS embedded and one gateway, all on free loopback ports.
type system struct {
	db       *sql.DB
	dsn      string
	dbName   string
	admin    string
	bridge   *child
	gateway  *child
	apiToken string

	bridgeMetrics  string // host:port of the bridge's /metrics
	gatewayAddr    string // host:port of the gateway's public listener
	gatewayMetrics string // host:port of the gateway's METRICS_ADDR (newer gateways serve /metrics there)
	debugAddr      string // the gateway's DEBUG_ADDR (pprof)
	natsURL        string
	scheme         string // http or https
	logger         *slog.Logger
}

// startSystem creates a database (migrated, with opts.products products),
// starts the bridge and waits until it has published them, then starts the
// gateway and waits until it is ready.
func startSystem(ctx context.Context, dbs *database, name string, opts systemOptions, logger *slog.Logger) (_ *system, err error) {
	s := &system{admin: dbs.adminDSN, logger: logger, scheme: "http"}
	if opts.tls {
		s.scheme = "https"
	}
	defer func() {
		if err != nil {
			s.stop(context.WithoutCancel(ctx))
		}
	}()
	s.dbName = fmt.Sprintf("productwatch_bench_%d_%s", os.Getpid(), strings.ToLower(name))
	if err := adminExec(ctx, dbs.adminDSN, "CREATE DATABASE "+pq.QuoteIdentifier(s.dbName)); err != nil {
		return s, fmt.Errorf("create database %s: %w", s.dbName, err)
	}
	if s.dsn, err = pgserver.WithDatabase(dbs.adminDSN, s.dbName); err != nil {
		return s, err
	}
	if s.db, err = sql.Open("postgres", s.dsn); err != nil {
		return s, err
	}
	s.db.SetMaxOpenConns(64)
	s.db.SetMaxIdleConns(64)
	if _, err := schema.Migrate(ctx, s.db, slog.New(slog.DiscardHandler)); err != nil {
		return s, fmt.Errorf("migrate %s: %w", s.dbName, err)
	}
	if err := seed(ctx, s.db, opts.products, opts.rowBytes); err != nil {
		return s, err
	}
	var maxSeq int64
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM product_changes`).Scan(&maxSeq); err != nil {
		return s, err
	}

	addrs, err := freeAddrs(5)
	if err != nil {
		return s, err
	}
	natsListen := addrs[0]
	s.bridgeMetrics, s.gatewayAddr, s.gatewayMetrics, s.debugAddr = addrs[1], addrs[2], addrs[3], addrs[4]
	s.natsURL = "nats://" + natsListen
	s.apiToken = randomHex(24)
	logDir := filepath.Join(opts.stateDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return s, err
	}
	natsStore, err := os.MkdirTemp(opts.stateDir, "nats-")
	if err != nil {
		return s, err
	}
	// NATS credentials, as `make run` gives them: the embedded server knows
	// the bridge, gateway and debug users; each program connects as its own.
	bridgePass, gatewayPass, debugPass := randomHex(16), randomHex(16), randomHex(16)

	bridgeEnv := []string{"DATABASE_URL=" + s.dsn, "METRICS_ADDR=" + s.bridgeMetrics, "NATS_URL=",
		"NATS_EMBED_LISTEN=" + natsListen, "NATS_STORE_DIR=" + natsStore, "LOG_FORMAT=text", "LOG_LEVEL=warn",
		"NATS_USER=" + broker.BridgeUser, "NATS_PASSWORD=" + bridgePass,
		"NATS_EMBED_GATEWAY_PASSWORD=" + gatewayPass, "NATS_EMBED_DEBUG_PASSWORD=" + debugPass}
	if s.bridge, err = startChild(filepath.Join(opts.binDir, "bridge"), "bridge", bridgeEnv,
		filepath.Join(logDir, name+"-bridge.log"), natsStore); err != nil {
		return s, err
	}
	if err := waitFor(ctx, s.bridge, readyTimeout, "the bridge ready", func() bool {
		return httpOK("http://" + s.bridgeMetrics + "/readyz")
	}); err != nil {
		return s, err
	}
	if err := waitFor(ctx, s.bridge, readyTimeout, fmt.Sprintf("the bridge past seq %d", maxSeq), func() bool {
		return scrapeValue("http://"+s.bridgeMetrics+"/metrics", "productwatch_bridge_cursor_seq") >= float64(maxSeq)
	}); err != nil {
		return s, err
	}

	gatewayEnv := []string{"DATABASE_URL=" + s.dsn, "NATS_URL=" + s.natsURL, "LISTEN_ADDR=" + s.gatewayAddr,
		"METRICS_ADDR=" + s.gatewayMetrics, "DEBUG_ADDR=" + s.debugAddr, "API_TOKEN=" + s.apiToken,
		"LOG_FORMAT=text", "LOG_LEVEL=warn", "DRAIN_WINDOW=1s", "SHUTDOWN_TIMEOUT=5s",
		"NATS_USER=" + broker.GatewayUser, "NATS_PASSWORD=" + gatewayPass,
		// The simulated browsers come from a handful of addresses, where a
		// real deployment sees one per browser: lift the per-address limits.
		"WS_MAX_CONNECTIONS_PER_ADDR=1000000", "WS_MAX_SUBSCRIPTIONS_PER_ADDR=10000000"}
	if opts.tls {
		gatewayEnv = append(gatewayEnv, "INSECURE_HTTP=false")
	} else {
		gatewayEnv = append(gatewayEnv, "INSECURE_HTTP=true")
	}
	gatewayEnv = append(gatewayEnv, opts.gateway...)
	if s.gateway, err = startChild(filepath.Join(opts.binDir, "gateway"), "gateway", gatewayEnv,
		filepath.Join(logDir, name+"-gateway.log"), ""); err != nil {
		return s, err
	}
	if err := waitFor(ctx, s.gateway, readyTimeout, "the gateway ready", func() bool {
		return httpOK(s.baseURL() + "/readyz")
	}); err != nil {
		return s, err
	}
	return s, nil
}

// baseURL is the gateway's public URL.
func (s *system) baseURL() string { return s.scheme + "://" + s.gatewayAddr }

// wsURL is the gateway's WebSocket endpoint.
func (s *system) wsURL() string {
	if s.scheme == "https" {
		return "wss://" + s.gatewayAddr + "/websocket"
	}
	return "ws://" + s.gatewayAddr + "/websocket"
}

// gatewayMetricsPage returns the gateway's Prometheus page: from its
// METRICS_ADDR when it serves one there, else from the public listener.
func (s *system) gatewayMetricsPage() string {
	if page := scrape("http://" + s.gatewayMetrics + "/metrics"); page != "" {
		return page
	}
	return scrape(s.baseURL() + "/metrics")
}

// stop stops the gateway, then the bridge, and drops the database.
func (s *system) stop(ctx context.Context) {
	for _, c := range []*child{s.gateway, s.bridge} {
		if c != nil {
			if err := c.stop(); err != nil {
				s.logger.Warn("stopping", "program", c.name, "err", err)
			}
		}
	}
	if s.db != nil {
		s.db.Close()
	}
	if s.dbName != "" {
		if err := adminExec(ctx, s.admin, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(s.dbName)+" WITH (FORCE)"); err != nil {
			s.logger.Warn("dropping the scenario's database", "database", s.dbName, "err", err)
		}
	}
}

// backendPIDs returns the process ids of the PostgreSQL backends serving
// the scenario's database (on this machine: their CPU is read from /proc).
func (s *system) backendPIDs(ctx context.Context) ([]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, rows.Err()
}

// seed inserts n products whose name makes each row about rowBytes long.
func seed(ctx context.Context, db *sql.DB, n, rowBytes int) error {
	if n == 0 {
		return nil
	}
	// The rest of an event is about 200 bytes; a text field holds 4,096
	// characters at most, so the padding is split between the two.
	pad := max(rowBytes-200, 0) / 2
	_, err := db.ExecContext(ctx, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Loadgen' || repeat('m', $2), 'Product ' || i || repeat('x', $2), 500, 'EUR', 1 FROM generate_series(1, $1) AS i`, n, pad)
	if err != nil {
		return fmt.Errorf("seed %d products: %w", n, err)
	}
	return nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// adminExec runs one statement on the server's administrative database.
func adminExec(ctx context.Context, adminDSN, statement string) error {
	db, err := sql.Open("postgres", adminDSN)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, statement)
	return err
}

// child is a program of the system under test.
type child struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{} // closed when it has exited
	waitErr error         // set before done is closed
	log     *os.File
	tempDir string // removed after it exits
}

// startChild starts path with env added to ours, its output into logPath.
func startChild(path, name string, env []string, logPath, tempDir string) (*child, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Our own process group: a Ctrl-C to `make bench` reaches the load
	// generator, which stops the programs itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (built by `make build`, or run with -build): %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), log: logFile, tempDir: tempDir}
	go func() {
		c.waitErr = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// pid returns the program's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the program has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits; after stopTimeout it kills the program.
func (c *child) stop() error {
	defer func() {
		if c.tempDir != "" {
			_ = os.RemoveAll(c.tempDir)
		}
	}()
	if c.exited() {
		return fmt.Errorf("%s had exited: %v (log: %s)", c.name, c.waitErr, c.log.Name())
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(stopTimeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM: killed", c.name, stopTimeout)
	}
}

// sample reads the program's CPU and memory.
func (c *child) sample() (procstat.Sample, error) { return procstat.Read(c.pid()) }

// waitFor polls cond every 50 ms until it holds; it fails when timeout
// passes, ctx ends or c exits first.
func waitFor(ctx context.Context, c *child, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if c != nil && c.exited() {
			return fmt.Errorf("waiting for %s: %s exited: %v (log: %s)", what, c.name, c.waitErr, c.log.Name())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// freeAddrs returns n distinct free TCP addresses on 127.0.0.1.
func freeAddrs(n int) ([]string, error) {
	var (
		out []string
		lns []net.Listener
	)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}

// probeClient talks to the programs' probes and metrics; the gateway's
// development certificate is self-signed.
var probeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // our own development certificate, on loopback
}}

// httpOK reports whether url answers 200.
func httpOK(url string) bool {
	resp, err := probeClient.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// scrape returns a Prometheus text page without its comments ("" when the
// URL does not answer 200).
func scrape(url string) string {
	resp, err := probeClient.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
			sb.WriteString(line)
			sb.WriteByte('\n')
		}
	}
	return sb.String()
}

// scrapeValue returns one series' value from url, NaN when absent.
func scrapeValue(url, series string) float64 {
	return metricValue(scrape(url), series)
}

// metricValue returns the value of series (name with its labels, as
// written on the page) from a Prometheus text page, NaN when absent.
func metricValue(page, series string) float64 {
	for line := range strings.Lines(page) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
				return v
			}
		}
	}
	return math.NaN()
}

// counters returns the series of page whose name starts with prefix,
// without histogram buckets: the gateway's counters and gauges.
func counters(page, prefix string) map[string]float64 {
	out := map[string]float64{}
	for line := range strings.Lines(page) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) || strings.Contains(line, "_bucket{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// raiseNoFile raises this process's open-file limit to want (the hard
// limit too, when allowed: root may go up to fs.nr_open). The programs it
// starts inherit the limit. It returns the soft limit in force.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}

// errSkipped marks a scenario that could not run here (not a failure of
// the system under test).
var errSkipped = errors.New("skipped")
