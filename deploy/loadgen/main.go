// Command loadgen is productwatch's load generator, what `make bench` runs.
// For each scenario it starts a fresh system (a database of its own on the
// PostgreSQL server `make run` would use, the bridge with NATS embedded, one
// gateway, on free loopback ports), connects simulated browsers over real
// WebSockets, changes products on a fixed open-loop schedule directly in
// PostgreSQL (or through the REST API), and accounts for every version each
// client should have seen: delivered, missing, duplicated, out of order,
// wasted, how late and how fresh. It reads the CPU time and peak memory of
// the gateway, the bridge (with its embedded NATS), the PostgreSQL backends
// and itself from /proc.
//
// Scenarios (issue 10): S1 100 clients on 1 product at 50 changes/s; S2
// 1,000 clients on 1 product at 200/s (S2b: the same with batched
// framing, /websocket?batch=1); S3 1,000 clients × 10 random of
// 10,000 products at 1,000/s; S4 100 clients at 200/s with ~6 KB rows, with
// (S4) and without (S4-base) a client that never reads; S5 50,000 idle
// subscribed connections; S6 the bridge's commit → JetStream benchmark
// (bridge/bench_test.go, run with go test).
//
// It writes bench-results/<commit>.json, .md (the tables) and .png (the
// latency picture), and prints the tables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config is what the command line says.
type config struct {
	scenarios string
	scale     float64
	batch     bool
	build     bool
	run       runOptions
}

func main() {
	var cfg config
	fs := flag.NewFlagSet("loadgen", flag.ExitOnError)
	fs.StringVar(&cfg.scenarios, "scenarios", "S1,S2,S2b,S3,S4-base,S4,S5,S6", "scenarios to run, comma-separated")
	fs.BoolVar(&cfg.batch, "batch", false, "every scenario's clients ask for batched framing (/websocket?batch=1); S2b always does")
	fs.Float64Var(&cfg.scale, "scale", 1, "scale clients, rates and durations by this factor (0.1 for a quick try)")
	fs.BoolVar(&cfg.build, "build", true, "build bin/bridge and bin/gateway first (go build)")
	fs.StringVar(&cfg.run.binDir, "bin", "bin", "directory of the bridge and gateway binaries")
	fs.StringVar(&cfg.run.stateDir, "state-dir", ".bench", "directory for logs, NATS stores and a private PostgreSQL cluster")
	fs.StringVar(&cfg.run.outDir, "out", "bench-results", "directory for the results")
	fs.StringVar(&cfg.run.repoDir, "repo", ".", "the repository (S6 runs go test ./bridge/ there)")
	fs.BoolVar(&cfg.run.tls, "tls", false, "the gateway serves HTTPS with its development certificate (default: INSECURE_HTTP)")
	fs.StringVar(&cfg.run.via, "via", "sql", "how the writers change products: sql (UPDATE in PostgreSQL) or rest (PATCH through the gateway)")
	fs.IntVar(&cfg.run.writers, "writers", 16, "writer connections (UPDATEs in flight at most)")
	fs.StringVar(&cfg.run.profile, "profile", "", "scenarios during which to take a CPU profile of the gateway (DEBUG_ADDR pprof), comma-separated")
	fs.DurationVar(&cfg.run.drain, "drain", 15*time.Second, "after the writes, wait at most this long for the clients to catch up")
	fs.StringVar(&cfg.run.s6Benchtime, "s6-benchtime", "1x", "-benchtime of S6's go test -bench")
	_ = fs.Parse(os.Args[1:])
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "loadgen")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("loadgen failed", "err", err)
		stop()
		os.Exit(1)
	}
}

// scenario time limits: a stuck scenario fails, the run goes on.
const (
	fanoutTimeout = 3 * time.Minute
	idleTimeout   = 4 * time.Minute
	bridgeTimeout = 8 * time.Minute
)

func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	started := time.Now()
	opts := cfg.run
	if opts.via != "sql" && opts.via != "rest" {
		return fmt.Errorf("-via %q: want sql or rest", opts.via)
	}
	wanted := strings.Split(cfg.scenarios, ",")
	var list []scenario
	for _, sc := range scenarios(cfg.scale) {
		if slices.Contains(wanted, sc.Name) {
			sc.profile = slices.Contains(strings.Split(opts.profile, ","), sc.Name)
			sc.Batch = sc.Batch || cfg.batch
			list = append(list, sc)
		}
	}
	if len(list) == 0 {
		return fmt.Errorf("-scenarios %q names none of S1, S2, S2b, S3, S4-base, S4, S5, S6", cfg.scenarios)
	}
	for _, dir := range []*string{&opts.stateDir, &opts.outDir, &opts.binDir, &opts.repoDir} {
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		*dir = abs
	}
	for _, dir := range []string{opts.stateDir, opts.outDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	opts.commit = commitName(opts.repoDir)
	if cfg.build {
		for _, prog := range []string{"bridge", "gateway"} {
			logger.Info("building", "program", prog)
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(opts.binDir, prog), "./"+prog)
			cmd.Dir, cmd.Stdout, cmd.Stderr = opts.repoDir, os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("go build ./%s: %w", prog, err)
			}
		}
	}
	dbs, err := openDatabase(ctx, opts.stateDir, logger)
	if err != nil {
		return err
	}
	defer dbs.close(ctx)
	dbs.dropStale(ctx)

	rep := &report{Commit: opts.commit, Started: stamp(started), Machine: describeMachine(ctx, dbs.adminDSN),
		Settings: settings{Via: opts.via, Writers: opts.writers, TLS: opts.tls, Scale: cfg.scale}}
	var failed []string
	for _, sc := range list {
		logger.Info("scenario", "name", sc.Name, "title", sc.Title)
		t0 := time.Now()
		var (
			res *result
			err error
		)
		switch {
		case sc.Bridge:
			sctx, cancel := context.WithTimeout(ctx, bridgeTimeout)
			res, err = runBridgeBench(sctx, sc, opts)
			cancel()
		case sc.Idle:
			sctx, cancel := context.WithTimeout(ctx, idleTimeout)
			res, err = runIdle(sctx, dbs, sc, opts, logger)
			cancel()
		default:
			sctx, cancel := context.WithTimeout(ctx, fanoutTimeout)
			res, err = runFanout(sctx, dbs, sc, opts, logger)
			cancel()
		}
		res.Started, res.Seconds = stamp(t0), time.Since(t0).Seconds()
		if err != nil {
			res.Error = err.Error()
			logger.Error("scenario failed", "name", sc.Name, "err", err)
			if !errors.Is(err, errSkipped) {
				failed = append(failed, sc.Name)
			}
		}
		rep.Results = append(rep.Results, res)
		if ctx.Err() != nil {
			break
		}
	}
	rep.Seconds = time.Since(started).Seconds()

	base := filepath.Join(opts.outDir, opts.commit)
	if err := writeJSON(base+".json", rep); err != nil {
		return err
	}
	md, err := os.Create(base + ".md")
	if err != nil {
		return err
	}
	writeMarkdown(md, rep)
	if err := md.Close(); err != nil {
		return err
	}
	if err := writePlot(base+".png", rep.Results); err != nil {
		return fmt.Errorf("latency picture: %w", err)
	}
	writeMarkdown(os.Stdout, rep)
	fmt.Printf("\nWritten: %s.json, %s.md, %s.png\n", base, base, base)
	if len(failed) > 0 {
		return fmt.Errorf("scenarios failed: %s", strings.Join(failed, ", "))
	}
	return ctx.Err()
}

// commitName returns the repository's short commit, with "-dirty" when the
// work tree has changes, or "unknown" outside git.
func commitName(repo string) string {
	out, err := exec.Command("git", "-C", repo, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	name := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		name += "-dirty"
	}
	return name
}
