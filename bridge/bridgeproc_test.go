package main

// The bridge as a real program in a subprocess (so that it can be killed
// with SIGKILL): its configuration, start, stop, kill, probes, metrics and
// output.

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

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
	proc        *testenv.Process
	client      *http.Client
}

var bridgeCounter atomic.Int64

// startBridge starts the bridge with env (bridgeEnv's result), on a free
// METRICS_ADDR unless env sets one, and returns at once; waitReady waits for
// it. When the test ends the process is stopped if it still runs (a non-zero
// exit fails the test); if the test failed, the tail of its output is logged
// (testenv.StartCommand); a race report or panic in its output fails the
// test.
func startBridge(t testing.TB, env map[string]string) *bridgeProc {
	t.Helper()
	bin := testenv.RaceProgram(t, "bridge")
	b := &bridgeProc{
		name:   fmt.Sprintf("bridge#%d", bridgeCounter.Add(1)),
		env:    make(map[string]string, len(env)+1),
		client: &http.Client{Timeout: 2 * time.Second},
	}
	for k, v := range env {
		b.env[k] = v
	}
	if b.env["METRICS_ADDR"] == "" {
		b.env["METRICS_ADDR"] = testenv.FreeAddr(t)
	}
	b.metricsAddr = b.env["METRICS_ADDR"]

	cmd := exec.Command(bin)
	cmd.Env = processEnv(b.env)
	b.proc = testenv.StartCommand(t, b.name, cmd)
	b.name = fmt.Sprintf("%s(pid %d)", b.name, cmd.Process.Pid)
	registerBridge(t, b)
	t.Cleanup(func() {
		if !b.hasExited() {
			if err := b.Stop(); err != nil {
				t.Errorf("%s: %v", b.name, err)
			}
		}
		out := b.proc.Output()
		if raceReport.MatchString(out) {
			t.Errorf("%s reported a data race:\n%s", b.name, out)
		} else if panicked.MatchString(out) {
			t.Errorf("%s panicked:\n%s", b.name, testenv.Tail(out, 300))
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
func (b *bridgeProc) hasExited() bool { return b.proc.HasExited() }

// describeExit says how the process ended, or that it runs.
func (b *bridgeProc) describeExit() string { return b.proc.DescribeExit() }

// Kill sends SIGKILL and waits for the process to be gone: a crash, with no
// chance to clean up.
func (b *bridgeProc) Kill(t testing.TB) {
	t.Helper()
	if err := b.proc.Cmd.Process.Signal(syscall.SIGKILL); err != nil && !b.hasExited() {
		t.Fatalf("kill %s: %v", b.name, err)
	}
	select {
	case <-b.proc.Exited():
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
	if err := b.proc.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !b.hasExited() {
		return fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-b.proc.Exited():
	case <-time.After(stopTimeout):
		_ = b.proc.Cmd.Process.Signal(syscall.SIGKILL)
		<-b.proc.Exited()
		return fmt.Errorf("did not exit within %v of SIGTERM; killed", stopTimeout)
	}
	if err := b.proc.Err(); err != nil {
		return fmt.Errorf("after SIGTERM: %w", err)
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
	testenv.WaitFor(t, readyTimeout, b.name+" /readyz 200", func() (bool, string) {
		if b.hasExited() {
			t.Fatalf("%s exited before it was ready: %s\n%s", b.name, b.describeExit(), testenv.Tail(b.proc.Output(), 100))
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
// (the sum over its label sets that have match's name=value pairs), or NaN when the bridge does not answer or
// does not export it. NaN compares false with everything, so a condition
// like metric(...) == 1 is simply not met yet.
func (b *bridgeProc) metric(name string, match ...string) float64 {
	status, body, err := b.get("/metrics")
	if err != nil || status != http.StatusOK {
		return math.NaN()
	}
	return sumMetric(body, name, match...)
}

// sumMetric returns the sum of the samples of name on a /metrics page, NaN
// when there is none or the page does not parse.
func sumMetric(page, name string, match ...string) float64 {
	m, err := testenv.ParseMetrics(page)
	if err != nil {
		return math.NaN()
	}
	return m.Sum(name, match...)
}
