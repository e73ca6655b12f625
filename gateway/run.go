package main

import (
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
	handler  http.Handler

	// The WebSocket side; nil without NATS.
	hub      *hub.Hub
	ws       *wsServer
	resyncer *resyncer
	wsBase   context.Context // the sockets' context: ends after the drain
	stopWS   context.CancelFunc
}

// newGateway wires the gateway on an open database and, when nc is not nil,
// NATS (queue receives nc's reconnects and dropped messages: see Run). It
// does not migrate or listen: Serve does.
func newGateway(cfg Config, db *sql.DB, nc *nats.Conn, queue *resyncQueue, logger *slog.Logger) (*Gateway, error) {
	migrator, err := schema.New(db, logger)
	if err != nil {
		return nil, err
	}
	probes := health.New(2 * time.Second)
	probes.Add("database", db.PingContext)
	probes.Add("migrations", migrator.Check)
	g := &Gateway{cfg: cfg, logger: logger, db: db, migrator: migrator, probes: probes}
	registry := health.NewRegistry()
	var websocket http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(marshalError(&apiError{Code: codeUnavailable, Message: "this gateway has no NATS_URL: WebSocket subscriptions are off"}))
	})
	if nc != nil {
		g.hub = hub.New(nc, hub.Options{Logger: logger})
		metrics := newWSMetrics(registry, g.hub)
		cu := &catchUp{db: db}
		g.wsBase, g.stopWS = context.WithCancel(context.Background())
		g.ws = newWSServer(g.wsBase, cfg.wsConfig(), g.hub, cu, logger, metrics)
		registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_queued_messages",
			Help: "Messages waiting in all connections' queues (at most one event per watched product each)."}, g.ws.queued))
		g.resyncer = &resyncer{queue: queue, hub: g.hub, catchUp: cu, logger: logger, metrics: metrics}
		websocket = g.ws
		probes.Add("nats", func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("NATS %s", nc.Status())
			}
			return nil
		})
	}
	web, err := newWebAssets(cfg.HSTSMaxAge)
	if err != nil {
		return nil, err
	}
	g.handler = newRouter(routerDeps{
		web:          web,
		logger:       logger,
		store:        product.NewStore(db),
		probes:       probes,
		registry:     registry,
		websocket:    websocket,
		apiToken:     cfg.APIToken,
		maxBodyBytes: cfg.MaxBodyBytes,
	})
	return g, nil
}

// Run is the whole gateway: it opens the database, listens on
// cfg.ListenAddr and serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	db, err := openDB(cfg.DatabaseURL)
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
	if cfg.DebugAddr != "" {
		stop, err := serveDebug(cfg.DebugAddr, logger)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	return g.Serve(ctx, ln)
}

// openDB opens the gateway's PostgreSQL pool; connections are made lazily.
func openDB(dsn string) (*sql.DB, error) { return postgres.Open(dsn, 32) }

// Serve migrates the database (retrying until it is reachable; the gateway is
// not ready meanwhile) and serves on ln until ctx ends. Then it reports not
// ready, stops accepting connections and gives in-flight requests
// cfg.ShutdownTimeout to finish. It returns once everything it started has
// stopped, and closes ln.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
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
	if g.hub != nil {
		group.Go(func() error { return g.hub.Run(g.wsBase) })
		group.Go(func() error {
			g.resyncer.run(g.wsBase)
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
			g.stopWS()
		}
		if err := srv.Shutdown(shutdownCtx); err != nil {
			srv.Close()
			return fmt.Errorf("shutdown: %w", err)
		}
		return nil
	})
	return group.Wait()
}
