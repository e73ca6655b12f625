package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"

	"github.com/productwatch/productwatch/pkg/envflag"
	"github.com/productwatch/productwatch/pkg/logging"
)

// Config is everything the bridge can be told, from flags or environment
// variables (the README's configuration table lists them all).
type Config struct {
	DatabaseURL     string          // DATABASE_URL
	NATSURL         string          // NATS_URL; empty: run an embedded nats-server
	NATSEmbedListen string          // NATS_EMBED_LISTEN, default 127.0.0.1:4222 (a free port when taken)
	NATSStoreDir    string          // NATS_STORE_DIR: JetStream storage of the embedded server
	MetricsAddr     string          // METRICS_ADDR: /healthz, /readyz, /metrics
	Log             logging.Options // LOG_LEVEL, LOG_FORMAT
}

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/productwatch?sslmode=disable"

func loadConfig(args []string) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	set := envflag.New(fs)
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", defaultDatabaseURL, "PostgreSQL connection string")
	set.String(&cfg.NATSURL, "nats-url", "NATS_URL", "", "NATS server URLs (comma-separated); unset: start an embedded nats-server with JetStream")
	set.String(&cfg.NATSEmbedListen, "nats-embed-listen", "NATS_EMBED_LISTEN", "127.0.0.1:4222", "listen address of the embedded nats-server (a free port is used when this one is taken)")
	set.String(&cfg.NATSStoreDir, "nats-store-dir", "NATS_STORE_DIR", filepath.Join(os.TempDir(), "productwatch-nats"), "JetStream storage directory of the embedded nats-server")
	set.String(&cfg.MetricsAddr, "metrics-addr", "METRICS_ADDR", "127.0.0.1:9091", "address of the bridge's /healthz, /readyz and /metrics")
	cfg.Log.Register(set)
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if err := set.Err(); err != nil {
		return Config{}, err
	}
	if cfg.DatabaseURL == "" {
		return Config{}, errors.New("DATABASE_URL is empty")
	}
	if cfg.NATSURL == "" && cfg.NATSStoreDir == "" {
		return Config{}, errors.New("NATS_STORE_DIR is empty: the embedded nats-server needs a directory")
	}
	return cfg, nil
}
