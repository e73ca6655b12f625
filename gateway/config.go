package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/productwatch/productwatch/pkg/envflag"
	"github.com/productwatch/productwatch/pkg/logging"
)

// Config is everything the gateway can be told, from flags or environment
// variables (the README's configuration table lists them all).
type Config struct {
	DatabaseURL     string          // DATABASE_URL
	ListenAddr      string          // LISTEN_ADDR, default :8443
	TLSCert, TLSKey string          // TLS_CERT, TLS_KEY: PEM files; unset: self-signed
	InsecureHTTP    bool            // INSECURE_HTTP: plain HTTP (and h2c) behind a TLS-terminating proxy
	APIToken        string          // API_TOKEN: bearer token for writes; unset: writes refused
	MaxBodyBytes    int64           // MAX_BODY_BYTES: request body limit, default 64 KiB
	ShutdownTimeout time.Duration   // SHUTDOWN_TIMEOUT: how long in-flight requests get on SIGTERM
	Log             logging.Options // LOG_LEVEL, LOG_FORMAT
}

// defaultDatabaseURL is the local PostgreSQL service of a development machine.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/productwatch?sslmode=disable"

func loadConfig(args []string) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	set := envflag.New(fs)
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", defaultDatabaseURL, "PostgreSQL connection string")
	set.String(&cfg.ListenAddr, "listen-addr", "LISTEN_ADDR", ":8443", "address to serve HTTPS (or HTTP with -insecure-http) on")
	set.String(&cfg.TLSCert, "tls-cert", "TLS_CERT", "", "PEM certificate file; unset: a self-signed development certificate")
	set.String(&cfg.TLSKey, "tls-key", "TLS_KEY", "", "PEM private key file for -tls-cert")
	set.Bool(&cfg.InsecureHTTP, "insecure-http", "INSECURE_HTTP", false, "serve plain HTTP (HTTP/1.1 and h2c), for use behind a TLS-terminating load balancer")
	set.String(&cfg.APIToken, "api-token", "API_TOKEN", "", "bearer token required by POST/PUT/PATCH/DELETE; unset: writes answer 401")
	set.Int64(&cfg.MaxBodyBytes, "max-body-bytes", "MAX_BODY_BYTES", 64<<10, "largest accepted request body in bytes")
	set.Duration(&cfg.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 15*time.Second, "how long in-flight requests may take to finish on shutdown")
	cfg.Log.Register(set)
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if err := set.Err(); err != nil {
		return Config{}, err
	}
	return cfg, cfg.validate()
}

func (cfg Config) validate() error {
	switch {
	case cfg.DatabaseURL == "":
		return errors.New("DATABASE_URL is empty")
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return errors.New("TLS_CERT and TLS_KEY go together: set both or neither")
	case cfg.InsecureHTTP && cfg.TLSCert != "":
		return errors.New("INSECURE_HTTP=true and TLS_CERT contradict each other")
	case cfg.MaxBodyBytes < 1024:
		return fmt.Errorf("MAX_BODY_BYTES %d is below 1024", cfg.MaxBodyBytes)
	case cfg.ShutdownTimeout <= 0:
		return fmt.Errorf("SHUTDOWN_TIMEOUT %v must be positive", cfg.ShutdownTimeout)
	}
	return nil
}
