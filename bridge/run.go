package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/health"
	"github.com/productwatch/productwatch/pkg/postgres"
	"github.com/productwatch/productwatch/pkg/schema"
)

// Run is the whole bridge: it migrates the database, starts the embedded
// NATS server unless NATS_URL is set, serves its probes and metrics on
// cfg.MetricsAddr, and, whenever it holds the leader lock, relays the change
// log to JetStream. It runs until ctx ends and returns once everything it
// started has stopped.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	db, err := postgres.Open(cfg.DatabaseURL, 8)
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
	registry := health.NewRegistry()
	metrics := newBridgeMetrics(registry)
	nc, err := broker.Connect(natsURL, "productwatch-bridge", cfg.NATSAuth, logger, broker.Hooks{OnReconnect: metrics.natsReconnects.Inc})
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout))
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}

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
	mux.Handle("GET /metrics", health.MetricsHandler(registry))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}

	b := &bridge{cfg: cfg, db: db, js: js, nc: nc, logger: logger, metrics: metrics}
	group, gctx := errgroup.WithContext(ctx)
	group.Go(func() error {
		if err := migrator.UpRetrying(gctx); err != nil {
			return nil // shutting down
		}
		leadership{db: db, retry: cfg.LeaderRetry, logger: logger}.run(gctx, b.lead)
		return nil
	})
	group.Go(func() error {
		sampleEvery(gctx, 5*time.Second, func() { b.sampleQueueUsage(gctx) })
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

// bridge is what a leading bridge needs.
type bridge struct {
	cfg     Config
	db      *sql.DB
	js      jetstream.JetStream
	nc      *nats.Conn
	logger  *slog.Logger
	metrics *bridgeMetrics
}

// lead relays the change log to JetStream, listens for wake-ups and prunes,
// until ctx ends (the lock is lost or the bridge stops).
func (b *bridge) lead(ctx context.Context) error {
	b.metrics.leader.Set(1)
	defer b.metrics.leader.Set(0)
	stream, err := broker.EnsureStream(ctx, b.js, b.cfg.Stream)
	if err != nil {
		return err
	}
	wake := make(chan string, 1)
	var high atomic.Int64
	r := &relay{
		cfg: relayConfig{batchSize: b.cfg.BatchSize, pollInterval: b.cfg.PollInterval,
			idleAfter: b.cfg.IdleAfter, safetyPollInterval: b.cfg.SafetyPollInterval},
		reader:  &logReader{db: b.db},
		pub:     newPublisher(b.js, stream, b.cfg.MaxInFlight, b.logger, b.metrics),
		wake:    wake,
		logger:  b.logger,
		metrics: b.metrics,
		high:    &high,
	}
	group, gctx := errgroup.WithContext(ctx)
	group.Go(func() error { return r.run(gctx) })
	group.Go(func() error {
		listen(gctx, listenerConfig{dsn: b.cfg.DatabaseURL, pingInterval: b.cfg.PingInterval}, wake, b.logger, b.metrics)
		return nil
	})
	group.Go(func() error {
		pruner{db: b.db, retention: b.cfg.Retention, interval: b.cfg.PruneInterval, batch: b.cfg.PruneBatch,
			logger: b.logger, metrics: b.metrics}.run(gctx)
		return nil
	})
	group.Go(func() error {
		sampleEvery(gctx, 2*time.Second, func() { b.sampleLag(gctx, high.Load()) })
		return nil
	})
	return group.Wait()
}

// sampleQueueUsage records how full PostgreSQL's NOTIFY queue is.
func (b *bridge) sampleQueueUsage(ctx context.Context) {
	var usage float64
	if err := b.db.QueryRowContext(ctx, `SELECT pg_notification_queue_usage()`).Scan(&usage); err == nil {
		b.metrics.notifyQueueUsage.Set(usage)
	}
}

// sampleLag records how many committed changes lie beyond what was
// published, and how old the oldest of them is.
func (b *bridge) sampleLag(ctx context.Context, high int64) {
	var count int64
	var age float64
	err := b.db.QueryRowContext(ctx,
		`SELECT count(*), coalesce(extract(epoch FROM now() - min(changed_at)), 0)::float8
		 FROM product_changes WHERE seq > $1`, high).Scan(&count, &age)
	if err == nil {
		b.metrics.lagChanges.Set(float64(count))
		b.metrics.lagSeconds.Set(age)
	}
}

// sampleEvery calls sample at once and then every interval until ctx ends.
func sampleEvery(ctx context.Context, interval time.Duration, sample func()) {
	for {
		sample()
		if !sleep(ctx, interval) {
			return
		}
	}
}
