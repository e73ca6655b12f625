package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/lib/pq"

	"github.com/productwatch/productwatch/pkg/change"
)

// listenerConfig are the LISTEN connection's knobs.
type listenerConfig struct {
	dsn          string
	pingInterval time.Duration
}

// listen LISTENs on the change channel with lib/pq's Listener, which
// reconnects by itself (100 ms to 5 s backoff), and turns what arrives into
// wake-ups for the relay: "wakeup" for a notification (its payload is not
// needed: the change log is read anyway), "reconnect" after a reconnection
// (notifications may have been missed). The connection is pinged after
// pingInterval without traffic, so a dead connection is found while idle. It
// runs until ctx ends.
func listen(ctx context.Context, cfg listenerConfig, wake chan<- string, logger *slog.Logger, metrics *bridgeMetrics) {
	l := pq.NewListener(cfg.dsn, 100*time.Millisecond, 5*time.Second, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventConnected:
			logger.Info("listening for change notifications", "channel", change.Channel)
		case pq.ListenerEventDisconnected:
			logger.Warn("LISTEN connection lost", "err", err)
		case pq.ListenerEventReconnected:
			metrics.listenerReconnect.Inc()
			logger.Info("LISTEN connection re-established", "channel", change.Channel)
		case pq.ListenerEventConnectionAttemptFailed:
			logger.Warn("LISTEN connection attempt failed", "err", err)
		}
	})
	// Listen blocks until lib/pq is connected; closing the listener ends
	// it, and listen waits for it before returning.
	listening := make(chan error, 1)
	listened := make(chan struct{})
	go func() {
		defer close(listened)
		listening <- l.Listen(change.Channel)
	}()
	defer func() {
		_ = l.Close()
		<-listened
	}()

	signal := func(reason string) {
		select {
		case wake <- reason:
		default: // a wake-up is already pending; one read serves both
		}
	}
	ping := time.NewTimer(cfg.pingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-listening:
			if err != nil {
				logger.Error("LISTEN failed", "channel", change.Channel, "err", err)
				continue
			}
			signal("reconnect") // anything committed before LISTEN took effect
		case n := <-l.Notify:
			if n == nil {
				signal("reconnect")
			} else {
				signal("wakeup")
			}
			ping.Reset(cfg.pingInterval)
		case <-ping.C:
			if err := l.Ping(); err != nil {
				logger.Warn("LISTEN connection ping failed; lib/pq reconnects", "err", err)
			}
			ping.Reset(cfg.pingInterval)
		}
	}
}
