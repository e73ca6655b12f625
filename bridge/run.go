package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/health"
	"github.com/productwatch/productwatch/pkg/postgres"
	"github.com/productwatch/productwatch/pkg/schema"
)

// Run is the whole bridge: it migrates the database, starts the embedded
// NATS server unless NATS_URL is set, serves its probes and metrics on
// cfg.MetricsAddr, and runs until ctx ends. It returns once everything it
// started has stopped.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	db, err := postgres.Open(cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer db.Close()
	migrator, err := schema.New(db, logger)
	if err != nil {
		return err
	}

	natsURL := cfg.NATSURL
	if natsURL == "" {
		srv, err := broker.StartEmbedded(broker.EmbeddedOptions{
			Listen:             cfg.NATSEmbedListen,
			StoreDir:           cfg.NATSStoreDir,
			Logger:             logger,
			FallbackToFreePort: true,
		})
		if err != nil {
			return fmt.Errorf("embedded NATS: %w", err)
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		}()
		natsURL = srv.ClientURL()
		logger.Info("embedded NATS server running", "url", natsURL, "store_dir", cfg.NATSStoreDir)
	}
	nc, err := nats.Connect(natsURL, nats.Name("productwatch-bridge"), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", natsURL, err)
	}
	defer nc.Close()

	probes := health.New(2 * time.Second)
	probes.Add("database", db.PingContext)
	probes.Add("migrations", migrator.Check)
	probes.Add("nats", func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("NATS %s", nc.Status())
		}
		return nil
	})
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", probes.LiveHandler())
	mux.Handle("GET /readyz", probes.ReadyHandler())
	mux.Handle("GET /metrics", health.MetricsHandler(health.NewRegistry()))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}

	group, gctx := errgroup.WithContext(ctx)
	group.Go(func() error {
		_ = migrator.UpRetrying(gctx) // fails only when shutting down
		return nil
	})
	group.Go(func() error {
		logger.Info("bridge probes listening", "addr", ln.Addr().String())
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve metrics: %w", err)
		}
		return nil
	})
	group.Go(func() error {
		<-gctx.Done()
		probes.SetDraining()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	})
	return group.Wait()
}
