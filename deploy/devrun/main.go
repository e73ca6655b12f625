// Command devrun is what `make run` runs: the whole productwatch system on one
// machine, with no set-up. It finds PostgreSQL (DATABASE_URL, else a server
// on 127.0.0.1:5432, else a private cluster it starts in .run/pgdata with the
// machine's initdb/pg_ctl), creates the productwatch database, then starts
// the bridge (with NATS embedded unless NATS_URL is set) and one gateway on
// https://localhost:8443, prints a generated API token with a ready-to-paste
// curl line and a nats CLI line (NATS is locked down: the credentials of its
// users bridge, gateway and debug are generated once and kept in
// .run/nats-credentials.json, the CLI's in .run/nats-context.json, both mode
// 0600), and stops everything on Ctrl-C.
//
// With -migrate it only applies the migrations and exits (make migrate).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/productwatch/productwatch/pkg/envflag"
)

type options struct {
	binDir      string // where `make build` put bridge and gateway
	stateDir    string // .run: private cluster, NATS store, API token
	migrateOnly bool
	gatewayAddr string
	metricsAddr string
}

func main() {
	var opts options
	fs := flag.NewFlagSet("devrun", flag.ExitOnError)
	set := envflag.New(fs)
	set.String(&opts.binDir, "bin", "DEVRUN_BIN", "bin", "directory holding the bridge and gateway binaries")
	set.String(&opts.stateDir, "state-dir", "DEVRUN_STATE_DIR", ".run", "directory for the private PostgreSQL cluster, the NATS store and the API token")
	set.String(&opts.gatewayAddr, "gateway-addr", "LISTEN_ADDR", ":8443", "the gateway's listen address")
	set.String(&opts.metricsAddr, "bridge-metrics-addr", "METRICS_ADDR", "127.0.0.1:9091", "the bridge's probes and metrics address")
	fs.BoolVar(&opts.migrateOnly, "migrate", false, "apply the migrations and exit")
	if err := set.Parse(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "devrun")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, opts, logger)
	// run returns once every process it started has exited and the private
	// PostgreSQL cluster, if it started one, is stopped.
	if err != nil {
		logger.Error("make run failed; everything it started has stopped", "err", err)
		stop()
		os.Exit(1)
	}
	if !opts.migrateOnly {
		logger.Info("everything stopped: gateway, bridge with its NATS server, and the PostgreSQL cluster if make run started one")
	}
}
