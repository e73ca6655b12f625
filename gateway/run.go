package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/health"
	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/postgres"
	"github.com/productwatch/productwatch/pkg/product"
	"github.com/productwatch/productwatch/pkg/schema"
)

// Gateway is one gateway process: its handler and the state behind it. Build
// it with newGateway, then Serve.
type Gateway struct {
	cfg      Config
	logger   *slog.Logger
	db       *sql.DB
	migrator *schema.Migrator
	probes   *health.Probes
	handler  http.Handler // the public port
	ops      http.Handler // METRICS_ADDR: metrics and detailed readiness
	opsLn    net.Listener // set by Run; nil: no ops listener

	// The WebSocket side; nil without NATS.
	hub      *hub.Hub
	ws       *wsServer
	resyncer *resyncer
}

// newGateway wires the gateway on an open database and, when nc is not nil,
// NATS (queue receives nc's reconnects and dropped messages: see Run). It
// does not migrate or listen: Serve does.
func newGateway(cfg Config, db *sql.DB, nc *nats.Conn, queue *resyncQueue, logger *slog.Logger) (*Gateway, error) {
	migrator, err := schema.New(db, logger)
	if err != nil {
		return nil, err
	}
	probes := health.New(cfg.ReadyTimeout)
	probes.Add("database", func(ctx context.Context) error { return probeDatabase(ctx, db) })
	probes.Add("migrations", migrator.Check)
	g := &Gateway{cfg: cfg, logger: logger, db: db, migrator: migrator, probes: probes}
	registry := health.NewRegistry()
	panics := newPanics(registry, logger)
	var websocket http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeAPIError(w, &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "this gateway has no NATS_URL: WebSocket subscriptions are off"})
	})
	if nc != nil {
		g.hub = hub.New(nc, hub.Options{Logger: logger, MaxProducts: cfg.WSMaxNATSInterests,
			OnPanic: func(v any, stack []byte) { panics.report("hub_dispatcher", v, stack) }})
		metrics := newWSMetrics(registry, g.hub)
		cu := &catchUp{db: db}
		wsCfg := cfg.wsConfig()
		wsCfg.trustedProxies, _ = parseTrustedProxies(cfg.TrustedProxies) // validated by loadConfig
		g.ws = newWSServer(wsCfg, g.hub, cu, logger, metrics, panics)
		registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_queued_messages",
			Help: "Messages waiting in all connections' queues (at most one event per watched product each)."}, g.ws.queued),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_client_addresses",
				Help: "Client addresses (IPv4, or IPv6 /64) holding WebSocket connections."}, g.ws.addresses),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_write_coalescing",
				Help: "1 while sockets' writes are coalesced (WS_WRITE_COALESCE; WS_WRITE_COALESCE_ABOVE messages a second turn it on), else 0."},
				func() float64 {
					if g.ws.coalescing.Load() {
						return 1
					}
					return 0
				}))
		g.resyncer = &resyncer{queue: queue, hub: g.hub, catchUp: cu, logger: logger, metrics: metrics, panics: panics, timeout: cfg.WSCatchUpTimeout}
		websocket = g.ws
		probes.Add("nats", func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("NATS %s", nc.Status())
			}
			return nil
		})
	}
	web, err := newWebAssets()
	if err != nil {
		return nil, err
	}
	g.handler = newRouter(routerDeps{
		web:             web,
		logger:          logger,
		store:           product.NewStore(db),
		probes:          probes,
		registry:        registry,
		websocket:       websocket,
		apiToken:        cfg.APIToken,
		maxBodyBytes:    cfg.MaxBodyBytes,
		requestTimeout:  cfg.RequestTimeout,
		bodyReadTimeout: cfg.BodyReadTimeout,
		hsts:            hstsValue(cfg.HSTSMaxAge),
	})
	g.ops = newOpsHandler(probes, registry)
	return g, nil
}

// probeDatabase is the readiness check of the database: a read of the
// products table within ctx's deadline, so that a gateway whose database
// does not answer (down, or the table locked) is not ready, where a bare
// ping would still succeed.
func probeDatabase(ctx context.Context, db *sql.DB) error {
	var one int
	err := db.QueryRowContext(ctx, `SELECT 1 FROM products LIMIT 1`).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	return err
}

// Run is the whole gateway: it opens the database, listens on
// cfg.ListenAddr and serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if cfg.APIToken == "" {
		logger.Warn("API_TOKEN is not set: writes (POST, PUT, PATCH, DELETE) are disabled and answer 401")
	}
	db, err := openDB(cfg.DatabaseURL, cfg.DBMaxConns, postgres.WithStatementTimeout(cfg.DBStatementTimeout), postgres.WithLockTimeout(cfg.DBLockTimeout))
	if err != nil {
		return err
	}
	defer db.Close()
	var nc *nats.Conn
	queue := newResyncQueue()
	if cfg.NATSURL != "" {
		nc, err = broker.Connect(cfg.NATSURL, "productwatch-gateway", cfg.NATSAuth, logger,
			broker.Hooks{OnReconnect: queue.requestAll, OnSlowConsumer: queue.lost})
		if err != nil {
			return err
		}
		defer nc.Close()
	} else {
		logger.Warn("NATS_URL is not set: /websocket answers 503")
	}
	g, err := newGateway(cfg, db, nc, queue, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.ListenAddr, err)
	}
	if cfg.MetricsAddr != "" {
		g.opsLn, err = net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
		}
	}
	if cfg.DebugAddr != "" {
		stop, err := serveDebug(cfg.DebugAddr, logger) // stop waits for it
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	return g.Serve(ctx, ln)
}

// defaultDBMaxConns is DB_MAX_CONNS's default: enough for 16 concurrent
// writers (BenchmarkPutProduct) with room for catch-up reads.
const defaultDBMaxConns = 32

// openDB opens the gateway's PostgreSQL pool of at most maxConns
// connections; connections are made lazily.
func openDB(dsn string, maxConns int, opts ...postgres.Option) (*sql.DB, error) {
	return postgres.Open(dsn, maxConns, opts...)
}

// Serve migrates the database (retrying until it is reachable; the gateway is
// not ready meanwhile) and serves on ln until ctx ends. Then it reports not
// ready, stops accepting connections and gives in-flight requests
// cfg.ShutdownTimeout to finish. It returns once everything it started has
// stopped, and closes ln.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: cmp.Or(g.cfg.HeaderReadTimeout, 10*time.Second),
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      max(30*time.Second, g.cfg.RequestTimeout+g.cfg.BodyReadTimeout+5*time.Second),
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(g.logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	scheme := "https"
	if g.cfg.InsecureHTTP {
		scheme = "http"
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tlsCfg, selfSigned, err := tlsConfig(g.cfg.TLSCert, g.cfg.TLSKey)
		if err != nil {
			ln.Close()
			if g.opsLn != nil {
				g.opsLn.Close()
			}
			return err
		}
		if selfSigned {
			g.logger.Warn("no TLS_CERT given: serving a self-signed development certificate; browsers will warn")
		}
		srv.TLSConfig = tlsCfg
		ln = tls.NewListener(ln, tlsCfg)
	}

	group, gctx := errgroup.WithContext(ctx)
	group.Go(func() error {
		_ = g.migrator.UpRetrying(gctx) // fails only when shutting down
		return nil
	})
	// The sockets' context: it ends after the drain (below), not with ctx,
	// so that sockets are closed with 1001 over the drain window first.
	wsCtx, stopWS := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWS()
	if g.hub != nil {
		group.Go(func() error { return g.hub.Run(wsCtx) })
		group.Go(func() error {
			g.resyncer.run(wsCtx)
			return nil
		})
		group.Go(func() error {
			g.ws.Serve(wsCtx)
			return nil
		})
	}
	var opsSrv *http.Server
	if g.opsLn != nil {
		opsSrv = &http.Server{Handler: g.ops, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
			ErrorLog: slog.NewLogLogger(g.logger.Handler(), slog.LevelWarn)}
		group.Go(func() error {
			g.logger.Info("metrics and readiness listening", "addr", g.opsLn.Addr().String())
			if err := opsSrv.Serve(g.opsLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve METRICS_ADDR: %w", err)
			}
			return nil
		})
	}
	group.Go(func() error {
		g.logger.Info("gateway listening", "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String())
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	group.Go(func() error {
		<-gctx.Done()
		g.probes.SetDraining()
		g.logger.Info("gateway shutting down", "drain_window", g.cfg.DrainWindow, "timeout", g.cfg.ShutdownTimeout)
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.DrainWindow+g.cfg.ShutdownTimeout)
		defer cancel()
		if g.ws != nil {
			// http.Server.Shutdown neither closes nor waits for hijacked
			// connections: the sockets are closed here, with 1001.
			g.ws.Drain(shutdownCtx, g.cfg.DrainWindow)
		}
		stopWS()
		err := srv.Shutdown(shutdownCtx)
		if err != nil {
			srv.Close()
			err = fmt.Errorf("shutdown: %w", err)
		}
		if opsSrv != nil { // last: metrics stay scrapeable while draining
			_ = opsSrv.Close()
		}
		return err
	})
	return group.Wait()
}
