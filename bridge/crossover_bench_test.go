package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// benchCrossoverRates are the fixed write rates of BenchmarkNotifyCrossover
// (pgbench -R; 0 = as fast as it can).
var benchCrossoverRates = []int{100, 500, 1000, 2000, 4000, 0}

// benchCrossoverSeconds is how long each run of BenchmarkNotifyCrossover
// writes.
const benchCrossoverSeconds = 5

// BenchmarkNotifyCrossover measures where a pg_notify per row starts to cost
// the writers: at each fixed rate, 16 pgbench clients (the write-path
// benchmark's script, -M prepared) write for 5 s with the change log but
// without NOTIFY (log-only), and with a pg_notify per row and a connection
// LISTENing and reading every notification (notify+listen, what writers pay
// while the bridge is in wake-up mode). It reports the rate achieved
// (updates/s) and each transaction's latency as pgbench logged it
// (txn_p50_ms, txn_p99_ms: from the transaction's start to its commit,
// schedule lag excluded), and schedule lag (lag_avg_ms: how late pgbench
// started transactions against the -R schedule, i.e. whether the writers
// kept up). The crossover is the rate from which notify+listen's latency or
// rate moves away from log-only's; the bridge's WAKEUP_MAX_RATE sits below
// it (README, BENCHMARKS.md).
//
//	go test -run '^$' -bench NotifyCrossover -benchtime 1x ./bridge/
func BenchmarkNotifyCrossover(b *testing.B) {
	pgbench, script := pgbenchWrites(b)
	for _, rate := range benchCrossoverRates {
		name := "rate=max"
		if rate > 0 {
			name = "rate=" + strconv.Itoa(rate)
		}
		for _, v := range []benchWriteVariant{
			{name: "log-only", trigger: true, wakeup: 1},
			{name: "notify+listen", trigger: true, wakeup: 2, listen: true},
		} {
			b.Run(name+"/"+v.name, func(b *testing.B) {
				benchCrossover(b, pgbench, script, v, rate)
			})
		}
	}
}

func benchCrossover(b *testing.B, pgbench, script string, v benchWriteVariant, rate int) {
	pg := testenv.Postgres(b)
	benchExec(b, pg.DB, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Apple', 'MacBook ' || i, 500, 'EUR', i FROM generate_series(1, $1) AS i`, benchWriteProducts)
	benchExec(b, pg.DB, `SELECT setval('product_change_wakeup', $1)`, v.wakeup)
	var notified atomic.Int64
	if v.listen {
		benchListen(b, pg.DSN, &notified)
	}
	logDir := b.TempDir()
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(benchWriteClients), "-j", strconv.Itoa(benchWriteThreads),
		"-T", strconv.Itoa(benchCrossoverSeconds), "-f", script, "--log", "--log-prefix", filepath.Join(logDir, "txn")}
	if rate > 0 {
		args = append(args, "-R", strconv.Itoa(rate))
	}
	args = append(args, pg.DSN)
	b.ResetTimer()
	cmd := exec.CommandContext(b.Context(), pgbench, args...)
	cmd.Dir = logDir
	out, err := cmd.CombinedOutput()
	b.StopTimer()
	if err != nil {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	res, err := parsePgbench(string(out))
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	if res.failed != 0 {
		b.Fatalf("pgbench: %d failed transactions:\n%s", res.failed, out)
	}
	latencies, lags := readPgbenchLogs(b, logDir)
	if len(latencies) == 0 {
		b.Fatalf("pgbench logged no transactions:\n%s", out)
	}
	slices.Sort(latencies)
	var lagSum time.Duration
	for _, l := range lags {
		lagSum += l
	}
	b.ReportMetric(res.tps, "updates/s")
	b.ReportMetric(benchMS(benchQuantile(latencies, 0.50)), "txn_p50_ms")
	b.ReportMetric(benchMS(benchQuantile(latencies, 0.99)), "txn_p99_ms")
	if len(lags) > 0 {
		b.ReportMetric(benchMS(lagSum/time.Duration(len(lags))), "lag_avg_ms")
	}
	b.ReportMetric(0, "ns/op")
	if v.listen {
		b.Logf("listener read %d notifications so far", notified.Load())
	}
}

// readPgbenchLogs reads pgbench's per-transaction logs (--log) in dir: each
// transaction's latency and, with -R, its schedule lag.
func readPgbenchLogs(b *testing.B, dir string) (latencies, lags []time.Duration) {
	files, err := filepath.Glob(filepath.Join(dir, "txn.*"))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// client_id transaction_no time script_no time_epoch time_us [schedule_lag]
			fields := strings.Fields(sc.Text())
			if len(fields) < 6 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				continue
			}
			latencies = append(latencies, time.Duration(us)*time.Microsecond)
			if len(fields) >= 7 {
				if lag, err := strconv.ParseInt(fields[6], 10, 64); err == nil {
					lags = append(lags, time.Duration(lag)*time.Microsecond)
				}
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			b.Fatal(err)
		}
	}
	return latencies, lags
}
