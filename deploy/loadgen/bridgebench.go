package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// S6 does not measure the bridge itself: bridge/bench_test.go's
// BenchmarkBridgeWritePath already runs pgbench against the real trigger
// with and without the bridge. The load generator runs three of its
// variants and reads their figures.

// bridgeVariants are the sub-benchmarks S6 runs, in this order (the
// benchmark reports productwatch's rate against log-only's when both run in
// the same invocation).
var bridgeVariants = []string{"log-only", "productwatch", "productwatch-rate=1000"}

// bridgeResult is S6's outcome: each variant's metrics as the benchmark
// reported them (unit -> value: updates/s, p50_ms, p99_ms, max_ms,
// %log-only, …).
type bridgeResult struct {
	Command  string                        `json:"command"`
	Variants map[string]map[string]float64 `json:"variants"`
	Output   string                        `json:"outputFile"`
}

// runBridgeBench runs BenchmarkBridgeWritePath's S6 variants in the
// repository at opts.repoDir.
func runBridgeBench(ctx context.Context, sc scenario, opts runOptions) (*result, error) {
	res := &result{Scenario: sc}
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkBridgeWritePath$/^(" + strings.Join(bridgeVariants, "|") + ")$",
		"-benchtime", opts.s6Benchtime, "-count", "1", "-timeout", "8m", "./bridge/"}
	ctx, cancel := context.WithTimeout(ctx, 9*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = opts.repoDir
	out, err := cmd.CombinedOutput()
	path := filepath.Join(opts.outDir, opts.commit+"-S6-bridge.txt")
	if werr := os.WriteFile(path, out, 0o644); werr != nil {
		return res, werr
	}
	res.Bridge = &bridgeResult{Command: "go " + strings.Join(args, " "), Variants: parseBenchOutput(string(out)), Output: path}
	if err != nil {
		return res, fmt.Errorf("go test -bench BridgeWritePath: %w (output in %s)", err, path)
	}
	if len(res.Bridge.Variants) == 0 {
		return res, fmt.Errorf("no benchmark results in the output (%s)", path)
	}
	return res, nil
}

// parseBenchOutput reads Go benchmark result lines
// ("BenchmarkX/sub-2   1   123 ns/op   4567 updates/s …") into
// sub-benchmark name -> unit -> value. The GOMAXPROCS suffix is dropped.
func parseBenchOutput(out string) map[string]map[string]float64 {
	results := map[string]map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue // a name printed alone, or a log line
		}
		name := fields[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if i := strings.IndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		metrics := map[string]float64{}
		for k := 2; k+1 < len(fields); k += 2 {
			v, err := strconv.ParseFloat(fields[k], 64)
			if err != nil {
				break
			}
			metrics[fields[k+1]] = v
		}
		results[name] = metrics
	}
	return results
}
