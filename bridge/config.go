package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/envflag"
	"github.com/productwatch/productwatch/pkg/logging"
)

// Config is everything the bridge can be told, from flags or environment
// variables (the README's configuration table lists them all).
type Config struct {
	DatabaseURL     string                   // DATABASE_URL
	NATSURL         string                   // NATS_URL; empty: run an embedded nats-server
	NATSAuth        broker.Credentials       // NATS_USER, NATS_PASSWORD: the bridge's NATS user
	NATSEmbedListen string                   // NATS_EMBED_LISTEN, default 127.0.0.1:4222 (a free port when taken)
	NATSStoreDir    string                   // NATS_STORE_DIR: JetStream storage of the embedded server
	NATSEmbedAuth   broker.EmbeddedPasswords // NATS_EMBED_GATEWAY_PASSWORD, NATS_EMBED_DEBUG_PASSWORD
	MetricsAddr     string                   // METRICS_ADDR: /healthz, /readyz, /metrics

	Stream broker.StreamOptions // STREAM_DUPLICATE_WINDOW, STREAM_MAX_AGE, STREAM_HISTORY, STREAM_REPLICAS

	BatchSize          int           // BATCH_SIZE: changes read from the log at a time
	MaxInFlight        int           // PUBLISH_MAX_IN_FLIGHT: unacknowledged publishes at most
	PublishTimeout     time.Duration // PUBLISH_TIMEOUT: wait for one JetStream ack
	PollInterval       time.Duration // POLL_INTERVAL: pause between reads while changes flow
	IdleAfter          time.Duration // IDLE_AFTER: no change for this long: ask for wake-ups
	SafetyPollInterval time.Duration // SAFETY_POLL_INTERVAL: read the log at least this often
	WakeupMaxRate      float64       // WAKEUP_MAX_RATE: changes/s above which writers stop notifying and the log is read continuously
	WakeupResumeRate   float64       // WAKEUP_RESUME_RATE: changes/s below which writers notify again
	RateWindow         time.Duration // RATE_WINDOW: window of the change-rate moving average
	WakeupMaxWaiters   int           // WAKEUP_MAX_WAITERS: writers queueing on NOTIFY's commit lock that end wake-ups; 0: never
	PingInterval       time.Duration // LISTENER_PING_INTERVAL: ping the LISTEN connection when idle
	LeaderRetry        time.Duration // LEADER_RETRY_INTERVAL: how often a standby tries to lead
	Retention          time.Duration // CHANGE_RETENTION: keep published changes this long
	PruneInterval      time.Duration // PRUNE_INTERVAL
	PruneBatch         int           // PRUNE_BATCH: rows deleted per statement

	Log logging.Options // LOG_LEVEL, LOG_FORMAT
}

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/productwatch?sslmode=disable"

func loadConfig(args []string) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	set := envflag.New(fs)
	defaults := broker.DefaultStreamOptions()
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", defaultDatabaseURL, "PostgreSQL connection string")
	set.String(&cfg.NATSURL, "nats-url", "NATS_URL", "", "NATS server URLs (comma-separated); unset: start an embedded nats-server with JetStream")
	set.String(&cfg.NATSEmbedListen, "nats-embed-listen", "NATS_EMBED_LISTEN", "127.0.0.1:4222", "listen address of the embedded nats-server (a free port is used when this one is taken)")
	set.String(&cfg.NATSStoreDir, "nats-store-dir", "NATS_STORE_DIR", filepath.Join(os.TempDir(), "productwatch-nats"), "JetStream storage directory of the embedded nats-server")
	set.String(&cfg.MetricsAddr, "metrics-addr", "METRICS_ADDR", "127.0.0.1:9091", "address of the bridge's /healthz, /readyz and /metrics")
	set.Duration(&cfg.Stream.DuplicateWindow, "stream-duplicate-window", "STREAM_DUPLICATE_WINDOW", defaults.DuplicateWindow, "how long JetStream drops a republished change (same seq)")
	set.Duration(&cfg.Stream.MaxAge, "stream-max-age", "STREAM_MAX_AGE", defaults.MaxAge, "how long changes stay in the PRODUCTS stream")
	set.Int64(&cfg.Stream.History, "stream-history", "STREAM_HISTORY", defaults.History, "changes kept per product in the stream")
	set.Int(&cfg.Stream.Replicas, "stream-replicas", "STREAM_REPLICAS", defaults.Replicas, "stream replicas in a NATS cluster")
	set.Int(&cfg.BatchSize, "batch-size", "BATCH_SIZE", 1000, "changes read from the change log at a time")
	set.Int(&cfg.MaxInFlight, "publish-max-in-flight", "PUBLISH_MAX_IN_FLIGHT", 512, "unacknowledged JetStream publishes at most")
	set.Duration(&cfg.PublishTimeout, "publish-timeout", "PUBLISH_TIMEOUT", 5*time.Second, "how long to wait for a JetStream acknowledgement before retrying")
	set.Duration(&cfg.PollInterval, "poll-interval", "POLL_INTERVAL", time.Millisecond, "pause between reads of the change log while changes flow")
	set.Duration(&cfg.IdleAfter, "idle-after", "IDLE_AFTER", 50*time.Millisecond, "after this long without changes, stop polling and ask writers for NOTIFY wake-ups")
	set.Float64(&cfg.WakeupMaxRate, "wakeup-max-rate", "WAKEUP_MAX_RATE", 200, "changes per second from which writers stop calling pg_notify and the bridge reads the change log continuously")
	set.Float64(&cfg.WakeupResumeRate, "wakeup-resume-rate", "WAKEUP_RESUME_RATE", 100, "changes per second below which writers notify again and the bridge reads only when woken")
	set.Int(&cfg.WakeupMaxWaiters, "wakeup-max-waiters", "WAKEUP_MAX_WAITERS", 3, "writers seen queueing on NOTIFY's commit lock that make the bridge read continuously whatever the rate (0: never)")
	set.Duration(&cfg.RateWindow, "rate-window", "RATE_WINDOW", 250*time.Millisecond, "window of the moving average of changes per second that WAKEUP_MAX_RATE and WAKEUP_RESUME_RATE compare with")
	set.Duration(&cfg.SafetyPollInterval, "safety-poll-interval", "SAFETY_POLL_INTERVAL", time.Second, "read the change log at least this often, wake-up or not")
	set.Duration(&cfg.PingInterval, "listener-ping-interval", "LISTENER_PING_INTERVAL", 90*time.Second, "ping the LISTEN connection after this long without a notification")
	set.Duration(&cfg.LeaderRetry, "leader-retry-interval", "LEADER_RETRY_INTERVAL", 500*time.Millisecond, "how often a standby bridge tries to take the lead")
	set.Duration(&cfg.Retention, "change-retention", "CHANGE_RETENTION", 24*time.Hour, "keep published changes in the change log this long (resume needs them)")
	set.Duration(&cfg.PruneInterval, "prune-interval", "PRUNE_INTERVAL", time.Minute, "how often to prune the change log")
	set.Int(&cfg.PruneBatch, "prune-batch", "PRUNE_BATCH", 1000, "change rows deleted per statement when pruning")
	cfg.NATSAuth.Register(set)
	cfg.NATSEmbedAuth.Register(set)
	cfg.Log.Register(set)
	fs.SetOutput(os.Stderr)
	if err := set.Parse(args); err != nil {
		return Config{}, err
	}
	return cfg, cfg.validate()
}

func (cfg Config) validate() error {
	positive := map[string]time.Duration{
		"STREAM_DUPLICATE_WINDOW": cfg.Stream.DuplicateWindow, "PUBLISH_TIMEOUT": cfg.PublishTimeout,
		"POLL_INTERVAL": cfg.PollInterval, "IDLE_AFTER": cfg.IdleAfter, "SAFETY_POLL_INTERVAL": cfg.SafetyPollInterval,
		"LISTENER_PING_INTERVAL": cfg.PingInterval, "LEADER_RETRY_INTERVAL": cfg.LeaderRetry,
		"CHANGE_RETENTION": cfg.Retention, "PRUNE_INTERVAL": cfg.PruneInterval,
		"RATE_WINDOW": cfg.RateWindow,
	}
	for name, d := range positive {
		if d <= 0 {
			return fmt.Errorf("%s must be positive, not %v", name, d)
		}
	}
	switch {
	case cfg.DatabaseURL == "":
		return errors.New("DATABASE_URL is empty")
	case cfg.NATSURL == "" && cfg.NATSStoreDir == "":
		return errors.New("NATS_STORE_DIR is empty: the embedded nats-server needs a directory")
	case cfg.NATSURL == "" && (cfg.NATSAuth.User == broker.GatewayUser || cfg.NATSAuth.User == broker.DebugUser):
		return fmt.Errorf("NATS_USER=%s: with the embedded nats-server the bridge's user is %q (or any name but gateway and debug)", cfg.NATSAuth.User, broker.BridgeUser)
	case cfg.NATSURL != "" && (cfg.NATSEmbedAuth.Gateway != "" || cfg.NATSEmbedAuth.Debug != ""):
		return errors.New("NATS_EMBED_GATEWAY_PASSWORD and NATS_EMBED_DEBUG_PASSWORD are for the embedded nats-server, which does not run when NATS_URL is set")
	case cfg.BatchSize < 1 || cfg.MaxInFlight < 1 || cfg.PruneBatch < 1:
		return errors.New("BATCH_SIZE, PUBLISH_MAX_IN_FLIGHT and PRUNE_BATCH must be at least 1")
	case cfg.Stream.History < 1 || cfg.Stream.Replicas < 1:
		return errors.New("STREAM_HISTORY and STREAM_REPLICAS must be at least 1")
	case !(cfg.WakeupResumeRate >= 0) || !(cfg.WakeupMaxRate >= cfg.WakeupResumeRate):
		return fmt.Errorf("WAKEUP_RESUME_RATE (%v) must be at least 0 and at most WAKEUP_MAX_RATE (%v)", cfg.WakeupResumeRate, cfg.WakeupMaxRate)
	case cfg.WakeupMaxWaiters < 0:
		return errors.New("WAKEUP_MAX_WAITERS must not be negative (0 turns the check off)")
	case cfg.Stream.MaxAge < 0:
		return errors.New("STREAM_MAX_AGE must not be negative (0 keeps changes forever)")
	}
	return nil
}

// relayConfig is the relay's part of the configuration.
func (cfg Config) relayConfig() relayConfig {
	return relayConfig{batchSize: cfg.BatchSize, pollInterval: cfg.PollInterval,
		idleAfter: cfg.IdleAfter, safetyPollInterval: cfg.SafetyPollInterval, rateWindow: cfg.RateWindow,
		policy: wakeupPolicy{maxRate: cfg.WakeupMaxRate, resumeRate: cfg.WakeupResumeRate}, maxNotifyWaiters: cfg.WakeupMaxWaiters}
}
