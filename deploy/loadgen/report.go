package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/productwatch/productwatch/deploy/loadgen/tally"
)

// report is everything a run writes to bench-results/<commit>.json.
type report struct {
	Commit   string    `json:"commit"`
	Started  string    `json:"started"`
	Seconds  float64   `json:"seconds"`
	Machine  machine   `json:"machine"`
	Settings settings  `json:"settings"`
	Results  []*result `json:"results"`
}

// settings are the run's options that shape the figures.
type settings struct {
	Via     string  `json:"writesVia"`
	Writers int     `json:"writerConnections"`
	TLS     bool    `json:"tls"`
	Scale   float64 `json:"scale"`
}

// machine describes where the run happened.
type machine struct {
	CPU         string `json:"cpu"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int64  `json:"memoryMiB"`
	Kernel      string `json:"kernel"`
	Go          string `json:"go"`
	Postgres    string `json:"postgres"`
	LoadAverage string `json:"loadAverageAtStart"`
}

func describeMachine(ctx context.Context, adminDSN string) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
				break
			}
		}
		f.Close()
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kib); err == nil {
			m.MemoryMiB = kib / 1024
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAverage = strings.TrimSpace(string(data))
	}
	if db, err := sql.Open("postgres", adminDSN); err == nil {
		_ = db.QueryRowContext(ctx, `SELECT current_setting('server_version')`).Scan(&m.Postgres)
		db.Close()
	}
	return m
}

func writeJSON(path string, r *report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// f1 formats a number with one decimal, f2 with two; NaN-free inputs.
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }

// thousands writes n with comma separators.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// writeMarkdown writes the tables of a run.
func writeMarkdown(w io.Writer, r *report) {
	fmt.Fprintf(w, "Commit `%s`, %s, %.0f s. Machine: %s, %d CPUs, %d MiB, Linux %s, %s, PostgreSQL %s. Load average at start: %s.\n",
		r.Commit, r.Started, r.Seconds, r.Machine.CPU, r.Machine.CPUs, r.Machine.MemoryMiB, r.Machine.Kernel, r.Machine.Go,
		r.Machine.Postgres, r.Machine.LoadAverage)
	fmt.Fprintf(w, "Writes via %s (%d connections, open loop), WebSocket over %s, NATS embedded in the bridge.\n\n",
		r.Settings.Via, r.Settings.Writers, map[bool]string{true: "TLS", false: "plain HTTP (INSECURE_HTTP)"}[r.Settings.TLS])

	fmt.Fprintln(w, "| scenario | committed | delivered / expected | readers with every version | dup | stale | wasted | commit → client p50 / p90 / p99 / max (ms) | writer → client p50 / p90 / p99 / max (ms) | freshness p50 / p99 (ms) | writer lag p99 (ms) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, res := range r.Results {
		if res.Readers == nil {
			continue
		}
		a := res.Readers
		fmt.Fprintf(w, "| %s | %s | %s / %s | %d / %d | %d | %d | %d | %s | %s | %s / %s | %s |\n",
			res.Scenario.Name, thousands(res.Writes.Committed), thousands(a.Delivered), thousands(a.Expected),
			res.ReadersComplete, res.Scenario.Clients, a.Duplicates, a.OutOfOrder, a.Wasted,
			quantiles(res.CommitLatency), quantiles(res.WriterLatency), f2(res.Freshness.P50), f2(res.Freshness.P99),
			f2(res.Writes.ScheduleLag.P99))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "CPU seconds in the measured window (writes plus drain), peak RSS (MiB). The bridge's figures include NATS, embedded in it. Others: everything else the machine ran meanwhile (other work on a shared machine, PostgreSQL's background processes).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | window s | gateway CPU-s | bridge+NATS CPU-s | PG backends CPU-s | loadgen CPU-s | others on the machine CPU-s | CPU-s / 100k deliveries (gateway+bridge) | gateway peak RSS | bridge peak RSS | both |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, res := range r.Results {
		if res.Usage == nil || res.Readers == nil {
			continue
		}
		u := res.Usage
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", res.Scenario.Name, f1(u.WindowSeconds),
			f2(u.Gateway.CPUSeconds), f2(u.Bridge.CPUSeconds), f2(u.Postgres.CPUSeconds), f2(u.Loadgen.CPUSeconds),
			f2(u.OthersCPUSeconds), f2(res.CPUPer100k), f1(u.Gateway.PeakRSSMiB), f1(u.Bridge.PeakRSSMiB),
			f1(u.Gateway.PeakRSSMiB+u.Bridge.PeakRSSMiB))
	}
	fmt.Fprintln(w)
	for _, res := range r.Results {
		for i, st := range res.Stalled {
			fmt.Fprintf(w, "- %s stalled client %d: received %s of %s versions after it finally read; closed by the gateway: %v (close status %d). Gateway counters: %s.\n",
				res.Scenario.Name, i+1, thousands(st.Account.Delivered), thousands(st.Account.Expected), st.Closed, st.CloseStatus,
				metricSummary(res.GatewayMetrics))
		}
		if res.Scenario.Name == "S4" && res.Readers != nil {
			for _, base := range r.Results {
				if base.Scenario.Name == "S4-base" && base.Readers != nil && base.WriterLatency.P99 > 0 {
					fmt.Fprintf(w, "- S4's readers: writer → client p99 %s ms against %s ms without the stalled client (S4-base): %.2f×.\n",
						f2(res.WriterLatency.P99), f2(base.WriterLatency.P99), res.WriterLatency.P99/base.WriterLatency.P99)
				}
			}
		}
		if res.Messages > 0 && (res.Scenario.Batch || res.Scenario.Name == "S2") {
			fmt.Fprintf(w, "- %s: %s events in %s WebSocket messages (%.2f events per message%s).\n", res.Scenario.Name,
				thousands(res.Events), thousands(res.Messages), float64(res.Events)/float64(res.Messages),
				map[bool]string{true: ", batched framing", false: ", one event per message"}[res.Scenario.Batch])
		}
		if res.Idle != nil {
			id := res.Idle
			fmt.Fprintf(w, "- %s: %s idle subscribed connections (from %d source addresses) in %.1f s; gateway RSS %.1f → %.1f MiB: **%.1f KiB per connection** (the load generator: %.1f KiB per connection).\n",
				res.Scenario.Name, thousands(int64(id.Connections)), id.SourceAddresses, id.ConnectSeconds,
				id.GatewayRSSBeforeMiB, id.GatewayRSSAfterMiB, id.KiBPerConnection, id.LoadgenKiBPerConn)
			if id.Note != "" {
				fmt.Fprintf(w, "  Note: %s.\n", id.Note)
			}
		}
		if res.Bridge != nil {
			fmt.Fprintf(w, "- %s (`%s`):\n\n", res.Scenario.Name, res.Bridge.Command)
			fmt.Fprintln(w, "  | variant | updates/s | % of log-only | commit → NATS p50 / p99 / max (ms) |")
			fmt.Fprintln(w, "  |---|---|---|---|")
			for _, v := range bridgeVariants {
				m, ok := res.Bridge.Variants[v]
				if !ok {
					continue
				}
				pct, lat := "", ""
				if p, ok := m["%log-only"]; ok {
					pct = f1(p) + " %"
				}
				if _, ok := m["p50_ms"]; ok {
					lat = fmt.Sprintf("%s / %s / %s", f2(m["p50_ms"]), f2(m["p99_ms"]), f1(m["max_ms"]))
				}
				fmt.Fprintf(w, "  | %s | %s | %s | %s |\n", v, thousands(int64(m["updates/s"])), pct, lat)
			}
			fmt.Fprintln(w)
		}
		if res.Error != "" {
			fmt.Fprintf(w, "- %s: **%s**\n", res.Scenario.Name, res.Error)
		}
	}
}

// quantiles formats p50 / p90 / p99 / max.
func quantiles(s tally.Summary) string {
	return fmt.Sprintf("%s / %s / %s / %s", f2(s.P50), f2(s.P90), f2(s.P99), f1(s.Max))
}

// metricSummary picks the gateway counters that say what happened to slow
// clients.
func metricSummary(m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		if strings.Contains(k, "conflated") || strings.Contains(k, "dropped") {
			parts = append(parts, fmt.Sprintf("%s %v", strings.TrimPrefix(k, "productwatch_ws_"), v))
		}
	}
	if len(parts) == 0 {
		return "none conflated or dropped"
	}
	return strings.Join(parts, ", ")
}

// stamp is the time format of reports.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }
