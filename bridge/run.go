package main

import (
	"context"
	"crypto/rand"
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
	"github.com/productwatch/productwatch/pkg/sleep"
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

	natsURL, natsAuth := cfg.NATSURL, cfg.NATSAuth
	if natsURL == "" {
		var users []broker.EmbeddedUser
		users, natsAuth = embeddedUsers(cfg, logger)
		srv, err := broker.StartEmbedded(broker.EmbeddedOptions{
			Listen:             cfg.NATSEmbedListen,
			StoreDir:           cfg.NATSStoreDir,
			Logger:             logger,
			FallbackToFreePort: true,
			Users:              users,
		})
		if err != nil {
			return fmt.Errorf("embedded NATS: %w", err)
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		}()
		natsURL = srv.ClientURL()
		names := make([]string, len(users))
		for i, u := range users {
			names[i] = u.User
		}
		logger.Info("embedded NATS server running", "url", natsURL, "store_dir", cfg.NATSStoreDir, "users", names)
	}
	registry := health.NewRegistry()
	metrics := newBridgeMetrics(registry)
	nc, err := broker.Connect(natsURL, "productwatch-bridge", natsAuth, logger, broker.Hooks{OnReconnect: metrics.natsReconnects.Inc})
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
	// A wave that keeps failing for this long is a stall, not a hiccup:
	// at least two publish timeouts, so one slow acknowledgement is not.
	stalls := newStallWatch(max(10*time.Second, 2*cfg.PublishTimeout))
	probes.Add("publishing", stalls.check)
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", probes.LiveHandler())
	mux.Handle("GET /readyz", probes.ReadyHandler())
	mux.Handle("GET /metrics", health.MetricsHandler(registry))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}

	b := &bridge{cfg: cfg, db: db, js: js, nc: nc, logger: logger, metrics: metrics, stalls: stalls}
	group, gctx := errgroup.WithContext(ctx)
	group.Go(func() error {
		if err := migrator.UpRetrying(gctx); err != nil {
			return nil // shutting down
		}
		leadership{db: db, retry: cfg.LeaderRetry, logger: logger, standby: stalls.done}.run(gctx, b.lead)
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

// embeddedUsers returns the users of the embedded nats-server, with the
// permissions of broker.Roles, and the credentials the bridge connects with:
//
//   - the bridge's own user is NATS_USER (default "bridge") with
//     NATS_PASSWORD; when NATS_PASSWORD is unset it gets a random password
//     that only this process knows, since nothing else needs it;
//   - gateway and debug exist only when NATS_EMBED_GATEWAY_PASSWORD and
//     NATS_EMBED_DEBUG_PASSWORD give their passwords; without, nobody can
//     connect as them (logged), rather than anybody.
//
// No client connects without credentials.
func embeddedUsers(cfg Config, logger *slog.Logger) ([]broker.EmbeddedUser, broker.Credentials) {
	roles := make(map[string]broker.Role)
	for _, r := range broker.Roles() {
		roles[r.User] = r
	}
	own := cfg.NATSAuth
	if own.User == "" {
		own.User = broker.BridgeUser
	}
	if own.Password == "" {
		own.Password = rand.Text()
		logger.Info("NATS_PASSWORD is unset: the embedded NATS server's bridge user gets a random password only this process knows",
			"user", own.User)
	}
	bridgeUser := roles[broker.BridgeUser].WithPassword(own.Password)
	bridgeUser.User = own.User
	users := []broker.EmbeddedUser{bridgeUser}
	for _, other := range []struct{ user, password, env, without string }{
		{broker.GatewayUser, cfg.NATSEmbedAuth.Gateway, "NATS_EMBED_GATEWAY_PASSWORD", "no gateway can connect"},
		{broker.DebugUser, cfg.NATSEmbedAuth.Debug, "NATS_EMBED_DEBUG_PASSWORD", "the nats CLI cannot connect"},
	} {
		if other.password == "" {
			logger.Warn(other.env+" is unset: the embedded NATS server has no "+other.user+" user, so "+other.without,
				"user", other.user)
			continue
		}
		users = append(users, roles[other.user].WithPassword(other.password))
	}
	return users, own
}

// bridge is what a leading bridge needs.
type bridge struct {
	cfg     Config
	db      *sql.DB
	js      jetstream.JetStream
	nc      *nats.Conn
	logger  *slog.Logger
	metrics *bridgeMetrics
	stalls  *stallWatch
}

// lead relays the change log to JetStream, listens for wake-ups and prunes,
// until ctx ends (the lock is lost or the bridge stops).
func (b *bridge) lead(ctx context.Context) error {
	b.metrics.leader.Set(1)
	defer b.metrics.leader.Set(0)
	stream, err := broker.EnsureStream(ctx, b.js, b.cfg.Stream)
	if err != nil {
		// Retried by the leadership loop; if it keeps failing (NATS down,
		// or a user without the stream's permissions), /readyz says so.
		b.stalls.failed(err)
		return err
	}
	b.stalls.done()
	wake := make(chan string, 1)
	var high atomic.Int64
	r := &relay{
		cfg:     b.cfg.relayConfig(),
		reader:  &logReader{db: b.db},
		pub:     newPublisher(b.js, stream, b.cfg.MaxInFlight, b.logger, b.metrics, b.stalls),
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
		if !sleep.For(ctx, interval) {
			return
		}
	}
}
