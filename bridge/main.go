// Command bridge is productwatch's pg-bridge: it carries every committed
// product change from PostgreSQL's change log to the JetStream stream
// PRODUCTS. main only reads the configuration and calls Run.
//
// It also migrates the database, runs an embedded nats-server when NATS_URL
// is unset, and serves /healthz, /readyz and /metrics on METRICS_ADDR. How it
// keeps every change exactly once and in order is in relay.go and the
// README.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := loadConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridge:", err)
		os.Exit(2)
	}
	logger, err := cfg.Log.New(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridge:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg, logger); err != nil {
		logger.Error("bridge stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
