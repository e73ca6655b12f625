// Command gateway serves productwatch to clients: the products REST API,
// health and metrics, over HTTPS with HTTP/2 (see the README for every
// setting). main only reads the configuration and calls Run.
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
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	logger, err := cfg.Log.New(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg, logger); err != nil {
		logger.Error("gateway stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
