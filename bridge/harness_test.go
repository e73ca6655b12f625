package main

// The end-to-end harness: the bridge as a real program in a subprocess (so
// that it can be killed with SIGKILL), writers that load the database, and
// the stream helpers the recovery tests wait on. verify_e2e_test.go holds the
// check of the stream against the change log.

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// raceEnabled is set by race_e2e_test.go when the tests run with -race; the
// bridge binary is then built with -race too, and its race reports fail the
// test that ran it.
var raceEnabled bool

// The bridge binary, built once per test process into a temporary directory
// that TestMain removes (removeBridgeBuild).
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// buildTimeout bounds `go build` of the bridge (a cold -race build included).
const buildTimeout = 5 * time.Minute

// bridgeBinary returns the path of the bridge program, building it on first
// use. Every caller after a failed build fails with the build's error.
func bridgeBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("find the go command: %w", err)
			return
		}
		buildDir, err = os.MkdirTemp("", "pwtest-bridge-")
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "bridge")
		args := []string{"build", "-buildvcs=false", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		// The tests run in the package directory: "." is ./bridge.
		cmd := exec.CommandContext(ctx, goTool, append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
			return
		}
		buildBin = bin
	})
	if buildErr != nil {
		t.Fatalf("build the bridge: %v", buildErr)
	}
	return buildBin
}

// removeBridgeBuild removes the directory of the built bridge; TestMain calls
// it after the tests.
func removeBridgeBuild() {
	if buildDir != "" {
		if err := os.RemoveAll(buildDir); err != nil {
			fmt.Fprintf(os.Stderr, "remove %s: %v\n", buildDir, err)
		}
	}
}

// configVars are the bridge's environment variables (config.go). Whatever
// the developer's shell sets of them is not passed on: a test's bridge gets
// exactly the configuration the test gives it.
var configVars = []string{
	"DATABASE_URL", "NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_EMBED_LISTEN", "NATS_STORE_DIR",
	"NATS_EMBED_GATEWAY_PASSWORD", "NATS_EMBED_DEBUG_PASSWORD", "METRICS_ADDR",
	"STREAM_DUPLICATE_WINDOW", "STREAM_MAX_AGE", "STREAM_HISTORY", "STREAM_REPLICAS",
	"BATCH_SIZE", "PUBLISH_MAX_IN_FLIGHT", "PUBLISH_TIMEOUT", "POLL_INTERVAL", "IDLE_AFTER",
	"SAFETY_POLL_INTERVAL", "LISTENER_PING_INTERVAL", "LEADER_RETRY_INTERVAL",
	"CHANGE_RETENTION", "PRUNE_INTERVAL", "PRUNE_BATCH", "LOG_LEVEL", "LOG_FORMAT",
	"WAKEUP_MAX_RATE", "WAKEUP_RESUME_RATE", "RATE_WINDOW", "WAKEUP_MAX_WAITERS",
}

// bridgeEnv returns the configuration of a bridge on the database dsn and the
// NATS server ns, as its bridge user, with extra's settings added or
// overriding. It keeps every change in the stream (STREAM_HISTORY), since
// verifyStream reads them all.
func bridgeEnv(dsn string, ns *testenv.NATSServer, extra map[string]string) map[string]string {
	env := map[string]string{
		"DATABASE_URL":   dsn,
		"NATS_URL":       ns.URL,
		"NATS_USER":      ns.Bridge.User,
		"NATS_PASSWORD":  ns.Bridge.Password,
		"LOG_FORMAT":     "text",
		"LOG_LEVEL":      "info",
		"STREAM_HISTORY": "1000000000",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// bridgeProc is one bridge process.
type bridgeProc struct {
	name        string // bridge#N, for logs
	metricsAddr string
	env         map[string]string
	cmd         *exec.Cmd
	out         *logBuffer
	exited      chan struct{} // closed when the process has exited
	exitErr     error         // cmd.Wait's result, set before exited closes
	client      *http.Client
}

var bridgeCounter atomic.Int64

// startBridge starts the bridge with env (bridgeEnv's result), on a free
// METRICS_ADDR unless env sets one, and returns at once; waitReady waits for
// it. When the test ends the process is stopped if it still runs; if the test
// failed, the tail of its output is logged; a race report or panic in its
// output fails the test.
func startBridge(t testing.TB, env map[string]string) *bridgeProc {
	t.Helper()
	bin := bridgeBinary(t)
	b := &bridgeProc{
		name:   fmt.Sprintf("bridge#%d", bridgeCounter.Add(1)),
		env:    make(map[string]string, len(env)+1),
		out:    &logBuffer{},
		exited: make(chan struct{}),
		client: &http.Client{Timeout: 2 * time.Second},
	}
	for k, v := range env {
		b.env[k] = v
	}
	if b.env["METRICS_ADDR"] == "" {
		b.env["METRICS_ADDR"] = freeAddr(t)
	}
	b.metricsAddr = b.env["METRICS_ADDR"]

	b.cmd = exec.Command(bin)
	b.cmd.Env = processEnv(b.env)
	b.cmd.Stdout = b.out
	b.cmd.Stderr = b.out
	b.cmd.SysProcAttr = childProcAttr()
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", b.name, err)
	}
	b.name = fmt.Sprintf("%s(pid %d)", b.name, b.cmd.Process.Pid)
	registerBridge(t, b)
	go func() {
		b.exitErr = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		if !b.hasExited() {
			if err := b.Stop(); err != nil {
				t.Errorf("%s: %v", b.name, err)
			}
		}
		out := b.out.String()
		if raceReport.MatchString(out) {
			t.Errorf("%s reported a data race:\n%s", b.name, out)
			return
		}
		if panicked.MatchString(out) {
			t.Errorf("%s panicked:\n%s", b.name, tail(out, 300))
			return
		}
		if t.Failed() {
			t.Logf("%s output (%s):\n%s", b.name, b.describeExit(), tail(out, 200))
		}
	})
	return b
}

// bridgesOf lists the bridges each running test started, for describeState.
var bridgesOf = struct {
	sync.Mutex
	m map[testing.TB][]*bridgeProc
}{m: make(map[testing.TB][]*bridgeProc)}

func registerBridge(t testing.TB, b *bridgeProc) {
	bridgesOf.Lock()
	defer bridgesOf.Unlock()
	if bridgesOf.m[t] == nil {
		t.Cleanup(func() {
			bridgesOf.Lock()
			defer bridgesOf.Unlock()
			delete(bridgesOf.m, t)
		})
	}
	bridgesOf.m[t] = append(bridgesOf.m[t], b)
}

// diagnosticMetrics are the bridge metrics describeState reports.
var diagnosticMetrics = []string{
	"productwatch_bridge_leader", "productwatch_bridge_changes_published_total",
	"productwatch_bridge_duplicates_total", "productwatch_bridge_already_in_stream_total",
	"productwatch_bridge_publish_failures_total", "productwatch_bridge_cursor_seq",
	"productwatch_bridge_lag_changes", "productwatch_bridge_wakeup_wanted",
}

var (
	raceReport = regexp.MustCompile(`(?m)^WARNING: DATA RACE`)
	panicked   = regexp.MustCompile(`(?m)^(panic: |fatal error: )`)
)

// restart starts a new bridge process with the same configuration, metrics
// address included.
func (b *bridgeProc) restart(t testing.TB) *bridgeProc {
	t.Helper()
	return startBridge(t, b.env)
}

// processEnv is the environment of a bridge process: this process's, without
// the bridge's configuration variables, plus env.
func processEnv(env map[string]string) []string {
	drop := make(map[string]bool, len(configVars)+len(env))
	for _, k := range configVars {
		drop[k] = true
	}
	for k := range env {
		drop[k] = true
	}
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// hasExited reports whether the process has exited.
func (b *bridgeProc) hasExited() bool {
	select {
	case <-b.exited:
		return true
	default:
		return false
	}
}

// describeExit says how the process ended, or that it runs.
func (b *bridgeProc) describeExit() string {
	if !b.hasExited() {
		return "running"
	}
	if b.exitErr == nil {
		return "exited with status 0"
	}
	return b.exitErr.Error()
}

// Kill sends SIGKILL and waits for the process to be gone: a crash, with no
// chance to clean up.
func (b *bridgeProc) Kill(t testing.TB) {
	t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil && !b.hasExited() {
		t.Fatalf("kill %s: %v", b.name, err)
	}
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still running 10s after SIGKILL", b.name)
	}
}

// stopTimeout is how long Stop waits after SIGTERM before it kills.
const stopTimeout = 15 * time.Second

// Stop sends SIGTERM and waits for the process to exit. It returns an error
// when the bridge did not exit within stopTimeout (it is then killed) or
// exited with a non-zero status.
func (b *bridgeProc) Stop() error {
	if b.hasExited() {
		return fmt.Errorf("had already exited: %s", b.describeExit())
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil && !b.hasExited() {
		return fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-b.exited:
	case <-time.After(stopTimeout):
		_ = b.cmd.Process.Signal(syscall.SIGKILL)
		<-b.exited
		return fmt.Errorf("did not exit within %v of SIGTERM; killed", stopTimeout)
	}
	if b.exitErr != nil {
		return fmt.Errorf("after SIGTERM: %w", b.exitErr)
	}
	return nil
}

// get fetches path from the bridge's metrics listener.
func (b *bridgeProc) get(path string) (int, string, error) {
	resp, err := b.client.Get("http://" + b.metricsAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// readyTimeout bounds a bridge's start until /readyz answers 200 (a cold
// start migrates the database and creates the stream).
const readyTimeout = 30 * time.Second

// waitReady waits until /readyz answers 200, failing the test if the process
// exits first or readyTimeout passes.
func (b *bridgeProc) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, readyTimeout, b.name+" /readyz 200", func() (bool, string) {
		if b.hasExited() {
			t.Fatalf("%s exited before it was ready: %s\n%s", b.name, b.describeExit(), tail(b.out.String(), 100))
		}
		status, body, err := b.get("/readyz")
		if err != nil {
			return false, err.Error()
		}
		return status == http.StatusOK, fmt.Sprintf("%d %s", status, body)
	})
}

// ready reports whether /readyz answers 200 now.
func (b *bridgeProc) ready() bool {
	status, _, err := b.get("/readyz")
	return err == nil && status == http.StatusOK
}

// metric scrapes /metrics and returns the value of the series called name
// (the sum over its label sets), or NaN when the bridge does not answer or
// does not export it. NaN compares false with everything, so a condition
// like metric(...) == 1 is simply not met yet.
func (b *bridgeProc) metric(name string) float64 {
	status, body, err := b.get("/metrics")
	if err != nil || status != http.StatusOK {
		return math.NaN()
	}
	return parseMetric(body, name)
}

// parseMetric returns the sum of the samples of name in a Prometheus text
// exposition, or NaN if there is none.
func parseMetric(text, name string) float64 {
	sum, found := 0.0, false
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		sum, found = sum+v, true
	}
	if !found {
		return math.NaN()
	}
	return sum
}

// logBuffer collects a process's output, safe for the concurrent writes of
// its stdout and stderr. Past maxLog bytes it keeps the newer half.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const maxLog = 32 << 20

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len()+len(p) > maxLog {
		keep := l.buf.Bytes()[l.buf.Len()/2:]
		l.buf = *bytes.NewBuffer(append([]byte("[older output dropped]\n"), keep...))
	}
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tail returns the last n lines of s, saying how many it left out.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	return fmt.Sprintf("[%d earlier lines left out]\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}

// freeAddr returns a 127.0.0.1 address with a port that is free now, below
// the ephemeral range (testenv.FreeAddr), so that the machine's outgoing
// connections do not take it before the bridge binds it.
func freeAddr(t testing.TB) string {
	t.Helper()
	return testenv.FreeAddr(t)
}

// pollEvery is how often waitFor checks its condition.
const pollEvery = 20 * time.Millisecond

// waitFor polls cond until it reports true, failing the test with what and
// cond's last detail when timeout passes first. It returns how long it
// waited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return time.Since(began)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; last: %s", timeout, what, detail)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-time.After(pollEvery):
		}
	}
}

// externalNATS serialises the tests of this package when NATS_URL names an
// external server: the bridge's stream name is fixed, so two tests' bridges
// would publish into one stream.
var externalNATS sync.Mutex

// natsForBridge returns the test's NATS server (testenv.NATS). On an external
// server (NATS_URL) it holds externalNATS until the test ends and deletes the
// PRODUCTS stream first, so that the test starts from an empty stream with an
// empty dedupe window. Tests of other packages must not use PRODUCTS on that
// server meanwhile.
func natsForBridge(t testing.TB) *testenv.NATSServer {
	t.Helper()
	ns := testenv.NATS(t)
	if ns.Server != nil {
		return ns
	}
	externalNATS.Lock()
	t.Cleanup(externalNATS.Unlock)
	_, js := connectJS(t, ns.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, broker.StreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("delete stream %s on %s: %v", broker.StreamName, ns.URL, err)
	}
	return ns
}

// connectJS connects to url for the test, reconnecting forever (the server
// may be restarted), and closes the connection when the test ends.
func connectJS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("productwatch-bridge-test"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to NATS %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// streamState returns the number of messages in PRODUCTS and its last
// sequence; a missing stream holds none.
func streamState(ctx context.Context, js jetstream.JetStream) (msgs, lastSeq uint64, err error) {
	stream, err := js.Stream(ctx, broker.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.LastSeq, nil
}

// waitStreamCount waits until PRODUCTS holds at least want messages and
// returns how long that took.
func waitStreamCount(t testing.TB, js jetstream.JetStream, want uint64, timeout time.Duration) time.Duration {
	t.Helper()
	return waitFor(t, timeout, fmt.Sprintf("%d messages in %s", want, broker.StreamName), func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		msgs, _, err := streamState(ctx, js)
		if err != nil {
			return false, err.Error()
		}
		return msgs >= want, fmt.Sprintf("%d messages", msgs)
	})
}

// changeCount returns the number of rows of product_changes.
func changeCount(t testing.TB, db *sql.DB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var n uint64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM product_changes`).Scan(&n); err != nil {
		t.Fatalf("count changes: %v", err)
	}
	return n
}

// waitAllPublished waits until the stream holds as many messages as the
// change log has rows, then checks it with verifyStream. When the stream
// falls short it reports what is missing before failing.
func waitAllPublished(t testing.TB, natsURL string, js jetstream.JetStream, db *sql.DB, timeout time.Duration) {
	t.Helper()
	want := changeCount(t, db)
	began := time.Now()
	deadline := began.Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		msgs, _, err := streamState(ctx, js)
		cancel()
		if err == nil && msgs >= want {
			t.Logf("%d changes in the stream %v after the writes ended", want, time.Since(began).Round(time.Millisecond))
			verifyStream(t, natsURL, db)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after %v the stream holds %d messages (err %v), the change log %d rows; %s",
				timeout, msgs, err, want, describeState(t, js, db))
			verifyStream(t, natsURL, db)
			t.FailNow()
		}
		time.Sleep(pollEvery)
	}
}

// describeState describes the stream's and the bridge's state, for a
// failure: a stream whose sequences have holes lost messages it had
// acknowledged; a cursor past a missing seq means the bridge skipped it.
func describeState(t testing.TB, js jetstream.JetStream, db *sql.DB) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var parts []string
	if stream, err := js.Stream(ctx, broker.StreamName); err != nil {
		parts = append(parts, fmt.Sprintf("stream: %v", err))
	} else if info, err := stream.Info(ctx); err != nil {
		parts = append(parts, fmt.Sprintf("stream info: %v", err))
	} else {
		s := info.State
		parts = append(parts, fmt.Sprintf("stream: msgs %d, first seq %d, last seq %d, deleted %d",
			s.Msgs, s.FirstSeq, s.LastSeq, s.NumDeleted))
	}
	var cursor, high int64
	if err := db.QueryRowContext(ctx, `SELECT cursor_seq, published_high FROM bridge_cursor`).Scan(&cursor, &high); err != nil {
		parts = append(parts, fmt.Sprintf("bridge_cursor: %v", err))
	} else {
		parts = append(parts, fmt.Sprintf("bridge_cursor: cursor_seq %d, published_high %d", cursor, high))
	}
	bridgesOf.Lock()
	bridges := slices.Clone(bridgesOf.m[t])
	bridgesOf.Unlock()
	for _, b := range bridges {
		if b.hasExited() {
			continue
		}
		status, body, err := b.get("/metrics")
		if err != nil || status != http.StatusOK {
			parts = append(parts, fmt.Sprintf("%s: /metrics %d %v", b.name, status, err))
			continue
		}
		var values []string
		for _, name := range diagnosticMetrics {
			values = append(values, fmt.Sprintf("%s %v", strings.TrimPrefix(name, "productwatch_bridge_"), parseMetric(body, name)))
		}
		parts = append(parts, b.name+": "+strings.Join(values, ", "))
	}
	return strings.Join(parts, "; ")
}

// Writers.

// writeLoad describes the load startWriters puts on the database.
type writeLoad struct {
	Writers  int           // concurrent writers, each with a connection of its own
	Total    int           // changes to commit, in all
	Products []int64       // products to change (seedProducts); inserts add, deletes remove
	Timeout  time.Duration // the whole load must be done by then
	// TolerateErrors keeps the writers going through failed statements (a
	// database restart); they are counted, not returned. A failed statement
	// may still have committed: the change log, not the count, is the truth.
	TolerateErrors bool
}

// writers is a running load.
type writers struct {
	db        *sql.DB
	load      writeLoad
	pool      productPool
	claimed   atomic.Int64 // changes being or been committed
	committed atomic.Int64
	failed    atomic.Int64
	stopped   atomic.Bool // stop was called: falling short of Total is no error
	cancel    context.CancelFunc
	done      chan struct{}
	err       error // set before done closes
	began     time.Time
	elapsed   time.Duration
}

// startWriters runs load on db in the background: load.Writers goroutines
// each loop over a mix of UPDATE (80 %), INSERT and DELETE (10 % each) of the
// products, until load.Total changes have committed, an error (unless
// tolerated), or load.Timeout. When the test ends they are stopped.
func startWriters(t testing.TB, db *sql.DB, load writeLoad) *writers {
	t.Helper()
	if load.Writers < 1 || load.Total < 1 || len(load.Products) == 0 || load.Timeout <= 0 {
		t.Fatalf("startWriters: bad load %+v", load)
	}
	w := &writers{db: db, load: load, done: make(chan struct{}), began: time.Now()}
	w.pool.ids = append([]int64(nil), load.Products...)
	ctx, cancel := context.WithTimeout(context.Background(), load.Timeout)
	w.cancel = cancel
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range load.Writers {
		wg.Go(func() {
			if err := w.write(ctx); err != nil && !w.stopped.Load() {
				errOnce.Do(func() {
					firstErr = err
					cancel()
				})
			}
		})
	}
	go func() {
		wg.Wait()
		cancel()
		w.elapsed = time.Since(w.began)
		if firstErr == nil && !w.stopped.Load() && w.committed.Load() < int64(load.Total) {
			firstErr = fmt.Errorf("writers committed %d of %d changes in %v (%d statements failed)",
				w.committed.Load(), load.Total, load.Timeout, w.failed.Load())
		}
		w.err = firstErr
		close(w.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

// Committed returns how many changes have committed so far.
func (w *writers) Committed() int64 { return w.committed.Load() }

// Done is closed when the writers have stopped.
func (w *writers) Done() <-chan struct{} { return w.done }

// Wait waits for the writers to stop and fails the test with their error.
func (w *writers) Wait(t testing.TB) {
	t.Helper()
	<-w.done
	if w.err != nil {
		t.Fatalf("writers: %v", w.err)
	}
	t.Logf("writers: %d changes committed by %d writers in %v (%d statements failed)",
		w.committed.Load(), w.load.Writers, w.elapsed.Round(time.Millisecond), w.failed.Load())
}

// stop ends the load before Total (which is then no error) and waits for
// the writers to stop.
func (w *writers) stop(t testing.TB) {
	t.Helper()
	w.stopped.Store(true)
	w.cancel()
	w.Wait(t)
}

// running reports whether the writers are still writing.
func (w *writers) running() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// waitCommitted waits until at least n changes have committed, or the
// writers have stopped.
func (w *writers) waitCommitted(t testing.TB, n int64) {
	t.Helper()
	waitFor(t, w.load.Timeout, fmt.Sprintf("%d committed changes", n), func() (bool, string) {
		select {
		case <-w.done:
			return true, ""
		default:
		}
		c := w.Committed()
		return c >= n, fmt.Sprintf("%d committed", c)
	})
}

// statementTimeout bounds one write, so that a connection left hanging by a
// database restart does not hold a writer for the whole load.
const statementTimeout = 10 * time.Second

// write is one writer's loop.
func (w *writers) write(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	minProducts := max(1, len(w.load.Products)/2)
	total := int64(w.load.Total)
	for ctx.Err() == nil {
		if w.claimed.Add(1) > total {
			w.claimed.Add(-1)
			if w.committed.Load() >= total {
				return nil
			}
			time.Sleep(time.Millisecond) // a claimed change is still in flight; it may fail
			continue
		}
		opCtx, cancel := context.WithTimeout(ctx, statementTimeout)
		ok, err := w.writeOne(opCtx, rng, minProducts)
		cancel()
		if ok {
			w.committed.Add(1)
			continue
		}
		w.claimed.Add(-1)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return nil // the load's time is up; the caller reports the shortfall
		}
		if !w.load.TolerateErrors {
			return err
		}
		w.failed.Add(1)
		select { // back off while the database recovers
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// writeOne makes one change and reports whether it committed one.
func (w *writers) writeOne(ctx context.Context, rng *rand.Rand, minProducts int) (bool, error) {
	db := w.db
	switch op := rng.IntN(10); {
	case op == 0 || w.pool.len() < minProducts: // INSERT
		var id int64
		if err := db.QueryRowContext(ctx, insertProduct, "Maker", fmt.Sprintf("Product %d", rng.Uint32()),
			price(rng), "EUR", rng.IntN(1000)).Scan(&id); err != nil {
			return false, fmt.Errorf("insert: %w", err)
		}
		w.pool.add(id)
		return true, nil
	case op == 1: // DELETE
		id := w.pool.take(rng)
		res, err := db.ExecContext(ctx, `DELETE FROM products WHERE product_id = $1`, id)
		if err != nil {
			return false, fmt.Errorf("delete %d: %w", id, err)
		}
		n, err := res.RowsAffected()
		return n == 1, err
	default: // UPDATE
		id := w.pool.pick(rng)
		res, err := db.ExecContext(ctx, `UPDATE products SET units_available = $2, price_amount = $3 WHERE product_id = $1`,
			id, rng.IntN(1000), price(rng))
		if err != nil {
			return false, fmt.Errorf("update %d: %w", id, err)
		}
		n, err := res.RowsAffected() // 0: deleted meanwhile
		return n == 1, err
	}
}

const insertProduct = `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
	VALUES ($1, $2, $3, $4, $5) RETURNING product_id`

// price returns a random price amount as text, e.g. "12.50".
func price(rng *rand.Rand) string {
	return fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100))
}

// productPool is the writers' shared set of live products.
type productPool struct {
	mu  sync.Mutex
	ids []int64
}

func (p *productPool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ids)
}

func (p *productPool) add(id int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids = append(p.ids, id)
}

// pick returns a random product, leaving it in the pool.
func (p *productPool) pick(rng *rand.Rand) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[rng.IntN(len(p.ids))]
}

// take removes a random product from the pool and returns it.
func (p *productPool) take(rng *rand.Rand) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := rng.IntN(len(p.ids))
	id := p.ids[i]
	p.ids[i] = p.ids[len(p.ids)-1]
	p.ids = p.ids[:len(p.ids)-1]
	return id
}

// seedProducts inserts n products in one statement and returns their ids.
func seedProducts(t testing.TB, db *sql.DB, n int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Maker', 'Seed ' || g, 10.00, 'EUR', 100 FROM generate_series(1, $1) g RETURNING product_id`, n)
	if err != nil {
		t.Fatalf("seed products: %v", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("seed products: %v", err)
	}
	return ids
}
