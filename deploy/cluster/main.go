// Command cluster runs productwatch's multi-replica topology as real
// processes on this machine, for `make cluster`, `make cluster-down` and
// `make cluster-scale`:
//
//	go run ./deploy/cluster up       # 3 NATS nodes, 2 bridges, 3 gateways, haproxy
//	go run ./deploy/cluster status   # what runs, where
//	go run ./deploy/cluster scale -gateways 5
//	go run ./deploy/cluster roll     # rolling restart of the gateways
//	go run ./deploy/cluster cookbook # run the nats CLI cookbook against the cluster
//	go run ./deploy/cluster down
//
// up starts the processes detached and returns; it records their PIDs and
// ports in the state directory (.run/cluster), so that the other commands,
// from any shell, act on the same cluster and stop processes by PID only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/productwatch/productwatch/pkg/envflag"
)

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "cluster")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cluster up|down|status|scale|roll|cookbook [flags]   (cluster <command> -h for flags)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:], os.Stdout, logger); err != nil {
		logger.Error(os.Args[1]+" failed", "err", err)
		stop()
		os.Exit(1)
	}
}

// options are the flags of every command; up reads all of them, the others
// only the state directory (and scale the gateway count).
type options struct {
	spec        Spec
	cookbook    string
	natsCLI     string
	ports       Ports
	gatewaysSet bool
}

func parseFlags(command string, args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("cluster "+command, flag.ContinueOnError)
	set := envflag.New(fs)
	def := DefaultPorts()
	set.String(&o.spec.StateDir, "state-dir", "CLUSTER_STATE_DIR", ".run/cluster", "where the cluster keeps its state, credentials, logs, configuration and NATS store")
	set.String(&o.spec.BinDir, "bin", "CLUSTER_BIN", "bin", "directory holding bridge, gateway and nats-server")
	set.String(&o.spec.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL for the cluster, used as is; unset: found or started as make run does, with the database -database")
	set.String(&o.spec.Database, "database", "CLUSTER_DATABASE", "productwatch_cluster", "database created on the server found (not make run's, whose bridge would compete for the lead)")
	set.Int(&o.spec.Gateways, "gateways", "GATEWAYS", 3, "gateways behind haproxy (up, scale)")
	set.Int(&o.spec.Bridges, "bridges", "BRIDGES", 2, "bridges (one leads)")
	set.Duration(&o.spec.DrainWindow, "drain-window", "DRAIN_WINDOW", 10*time.Second, "the gateways' DRAIN_WINDOW")
	set.Int(&o.ports.NATSClient, "nats-port", "CLUSTER_NATS_PORT", def.NATSClient, "client port of the first NATS node (the others: +1, +2)")
	set.Int(&o.ports.NATSCluster, "nats-cluster-port", "CLUSTER_NATS_CLUSTER_PORT", def.NATSCluster, "route port of the first NATS node")
	set.Int(&o.ports.NATSMonitor, "nats-monitor-port", "CLUSTER_NATS_MONITOR_PORT", def.NATSMonitor, "monitoring port of the first NATS node")
	set.Int(&o.ports.BridgeMetrics, "bridge-metrics-port", "CLUSTER_BRIDGE_METRICS_PORT", def.BridgeMetrics, "METRICS_ADDR port of the first bridge")
	set.Int(&o.ports.Gateway, "gateway-port", "CLUSTER_GATEWAY_PORT", def.Gateway, "plain HTTP port of the first gateway")
	set.Int(&o.ports.GatewayMetrics, "gateway-metrics-port", "CLUSTER_GATEWAY_METRICS_PORT", def.GatewayMetrics, "METRICS_ADDR port of the first gateway")
	set.String(&o.ports.HTTPSAddr, "https-addr", "CLUSTER_HTTPS_ADDR", def.HTTPSAddr, "haproxy's HTTPS and WSS address")
	set.String(&o.ports.StatsAddr, "stats-addr", "CLUSTER_STATS_ADDR", def.StatsAddr, "haproxy's stats page")
	set.String(&o.spec.NATSAuthDir, "nats-auth-dir", "CLUSTER_NATS_AUTH_DIR", "deploy/nats", "the NATS users and permissions the nodes include (auth.conf, permissions.conf)")
	set.String(&o.cookbook, "readme", "CLUSTER_COOKBOOK", defaultCookbook("."), "cookbook: the Markdown file whose nats CLI cookbook section is checked")
	set.String(&o.natsCLI, "nats-cli", "NATS_CLI", "bin/nats", "cookbook: the nats CLI to run")
	fs.SetOutput(os.Stderr)
	if err := set.Parse(args); err != nil {
		return o, err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "gateways" {
			o.gatewaysSet = true
		}
	})
	if os.Getenv("GATEWAYS") != "" {
		o.gatewaysSet = true
	}
	o.spec.Ports = o.ports
	var err error
	if o.spec.StateDir, err = filepath.Abs(o.spec.StateDir); err != nil {
		return o, err
	}
	if o.spec.BinDir, err = filepath.Abs(o.spec.BinDir); err != nil {
		return o, err
	}
	if o.spec.NATSAuthDir, err = filepath.Abs(o.spec.NATSAuthDir); err != nil {
		return o, err
	}
	switch {
	case o.spec.Gateways < 1 || o.spec.Gateways > maxGateways:
		return o, fmt.Errorf("-gateways %d: between 1 and %d", o.spec.Gateways, maxGateways)
	case o.spec.Bridges < 1 || o.spec.Bridges > 9:
		return o, fmt.Errorf("-bridges %d: between 1 and 9", o.spec.Bridges)
	case o.spec.DrainWindow < 0:
		return o, fmt.Errorf("-drain-window %v is negative", o.spec.DrainWindow)
	}
	return o, nil
}

func run(ctx context.Context, command string, args []string, out io.Writer, logger *slog.Logger) error {
	o, err := parseFlags(command, args)
	if err != nil {
		return err
	}
	if command == "scale" && !o.gatewaysSet {
		return errors.New("scale: say how many gateways: -gateways N (make cluster-scale GATEWAYS=N)")
	}
	if err := os.MkdirAll(o.spec.StateDir, 0o700); err != nil {
		return err
	}
	release, err := lockDir(o.spec.StateDir)
	if err != nil {
		return err
	}
	defer release()

	if command == "up" {
		c, err := up(ctx, o.spec, logger)
		if err != nil {
			return err
		}
		printBanner(out, c)
		return nil
	}
	c, err := open(o.spec.StateDir, logger)
	if err != nil {
		return err
	}
	switch command {
	case "down":
		if err := c.down(ctx); err != nil {
			return err
		}
		fmt.Fprintln(out, "cluster stopped (credentials, certificate, logs and the NATS store stay in "+o.spec.StateDir+")")
		return nil
	case "status":
		printStatus(ctx, out, c)
		return nil
	case "scale":
		if err := c.scale(ctx, o.spec.Gateways); err != nil {
			return err
		}
		printStatus(ctx, out, c)
		return nil
	case "roll":
		for _, i := range c.gatewayIndexes() {
			start := time.Now()
			if err := c.restartGateway(ctx, i); err != nil {
				return err
			}
			fmt.Fprintf(out, "gateway %d restarted in %v\n", i, time.Since(start).Round(time.Millisecond))
		}
		return nil
	case "cookbook":
		return checkCookbook(ctx, out, c, o.cookbook, o.natsCLI)
	default:
		return fmt.Errorf("unknown command %q: up, down, status, scale, roll or cookbook", command)
	}
}

// open loads a running cluster's state and credentials.
func open(stateDir string, logger *slog.Logger) (*cluster, error) {
	st, err := loadState(stateDir)
	if err != nil {
		return nil, err
	}
	creds, err := loadCredentials(stateDir)
	if err != nil {
		return nil, err
	}
	return &cluster{st: st, creds: creds, logger: logger}, nil
}
