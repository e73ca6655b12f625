package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/envflag"
	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/logging"
)

// Config is everything the gateway can be told, from flags or environment
// variables (the README's configuration table lists them all).
type Config struct {
	DatabaseURL     string             // DATABASE_URL
	ListenAddr      string             // LISTEN_ADDR, default :8443
	TLSCert, TLSKey string             // TLS_CERT, TLS_KEY: PEM files; unset: self-signed
	InsecureHTTP    bool               // INSECURE_HTTP: plain HTTP (and h2c) behind a TLS-terminating proxy
	APIToken        string             // API_TOKEN: bearer token for writes; unset: writes refused
	MaxBodyBytes    int64              // MAX_BODY_BYTES: request body limit, default 64 KiB
	ShutdownTimeout time.Duration      // SHUTDOWN_TIMEOUT: how long in-flight requests get on SIGTERM
	NATSURL         string             // NATS_URL: needed by /websocket; empty: /websocket answers 503
	NATSAuth        broker.Credentials // NATS_USER, NATS_PASSWORD: the gateway's NATS user
	AllowedOrigins  string             // ALLOWED_ORIGINS: comma-separated host patterns besides same-origin
	DrainWindow     time.Duration      // DRAIN_WINDOW: closing sockets with 1001 is spread over this
	DebugAddr       string             // DEBUG_ADDR: net/http/pprof on this address (loopback only advised); unset: off
	HSTSMaxAge      int                // HSTS_MAX_AGE: Strict-Transport-Security max-age in seconds on HTTPS pages; 0: off
	Log             logging.Options    // LOG_LEVEL, LOG_FORMAT

	MetricsAddr        string        // METRICS_ADDR: /metrics and the detailed /readyz, default 127.0.0.1:9092
	TrustedProxies     string        // TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed
	RequestTimeout     time.Duration // REQUEST_TIMEOUT: deadline of a REST request's database work
	BodyReadTimeout    time.Duration // BODY_READ_TIMEOUT: a request body must arrive within this
	HeaderReadTimeout  time.Duration // HEADER_READ_TIMEOUT: request headers must arrive within this (slowloris)
	ReadyTimeout       time.Duration // READY_TIMEOUT: each readiness probe's deadline
	DBStatementTimeout time.Duration // DB_STATEMENT_TIMEOUT: statement_timeout of the pool's sessions; 0: the server's
	DBLockTimeout      time.Duration // DB_LOCK_TIMEOUT: lock_timeout of the pool's sessions; 0: the server's
	DBMaxConns         int           // DB_MAX_CONNS: PostgreSQL connections of the gateway's pool at most

	WSReadLimit          int64         // WS_READ_LIMIT: largest frame a client may send
	WSMaxIDsPerCommand   int           // WS_MAX_IDS_PER_COMMAND
	WSMaxSubscriptions   int           // WS_MAX_SUBSCRIPTIONS: products one connection may watch
	WSCommandRate        float64       // WS_COMMAND_RATE: commands per second per connection
	WSCommandBurst       int           // WS_COMMAND_BURST
	WSMaxConnections     int           // WS_MAX_CONNECTIONS per gateway
	WSWriteTimeout       time.Duration // WS_WRITE_TIMEOUT: a write or ping slower than this drops the client
	WSPingInterval       time.Duration // WS_PING_INTERVAL
	WSSlowClientAfter    time.Duration // WS_SLOW_CLIENT_AFTER: a change waiting longer than this drops the client
	WSWriteCoalesce      time.Duration // WS_WRITE_COALESCE: a connection's writes at least this far apart; 0: at once
	WSWriteCoalesceAbove float64       // WS_WRITE_COALESCE_ABOVE: only while the gateway sends this many messages a second; 0: always

	WSCatchUpTimeout          time.Duration // WS_CATCHUP_TIMEOUT: deadline of a snapshot/resume or re-sync read
	WSMaxConnectionsPerAddr   int           // WS_MAX_CONNECTIONS_PER_ADDR: sockets of one client address
	WSMaxSubscriptionsPerAddr int           // WS_MAX_SUBSCRIPTIONS_PER_ADDR: subscriptions of all sockets of one client address
	WSMaxTotalSubscriptions   int           // WS_MAX_TOTAL_SUBSCRIPTIONS: subscriptions of all sockets of this gateway
	WSMaxNATSInterests        int           // WS_MAX_NATS_INTERESTS: products this gateway holds a NATS subscription for
	WSConflateAfter           time.Duration // WS_CONFLATE_AFTER: a client whose oldest waiting change is older is conflated
	WSConflateMaxEvents       int           // WS_CONFLATE_MAX_EVENTS: ... or with more changes than this waiting
	WSConflateMaxBytes        int           // WS_CONFLATE_MAX_BYTES: ... or with more bytes of changes than this waiting
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
	set.Secret(&cfg.APIToken, "api-token", "API_TOKEN", "bearer token required by POST/PUT/PATCH/DELETE; unset: writes answer 401")
	set.Int64(&cfg.MaxBodyBytes, "max-body-bytes", "MAX_BODY_BYTES", 64<<10, "largest accepted request body in bytes")
	set.Duration(&cfg.ShutdownTimeout, "shutdown-timeout", "SHUTDOWN_TIMEOUT", 15*time.Second, "how long in-flight requests may take to finish on shutdown")
	set.String(&cfg.NATSURL, "nats-url", "NATS_URL", "", "NATS servers for /websocket (comma-separated); unset: /websocket answers 503")
	set.String(&cfg.AllowedOrigins, "allowed-origins", "ALLOWED_ORIGINS", "", "WebSocket Origin host patterns allowed besides same-origin, comma-separated (e.g. shop.example.com,*.example.org)")
	set.Int(&cfg.HSTSMaxAge, "hsts-max-age", "HSTS_MAX_AGE", 0, "Strict-Transport-Security max-age (seconds) sent with every HTTPS response; 0: off (a development certificate should not be pinned by browsers)")
	set.String(&cfg.DebugAddr, "debug-addr", "DEBUG_ADDR", "", "serve Go's pprof profiles on this address (e.g. 127.0.0.1:6060); unset: off")
	set.Duration(&cfg.DrainWindow, "drain-window", "DRAIN_WINDOW", 10*time.Second, "on shutdown, closing WebSockets with 1001 is spread over this window")
	set.Int64(&cfg.WSReadLimit, "ws-read-limit", "WS_READ_LIMIT", 32<<10, "largest WebSocket frame a client may send, in bytes (larger: close 1009)")
	set.Int(&cfg.WSMaxIDsPerCommand, "ws-max-ids-per-command", "WS_MAX_IDS_PER_COMMAND", 500, "product ids in one command at most")
	set.Int(&cfg.WSMaxSubscriptions, "ws-max-subscriptions", "WS_MAX_SUBSCRIPTIONS", 2000, "products one connection may watch at most")
	set.Float64(&cfg.WSCommandRate, "ws-command-rate", "WS_COMMAND_RATE", 20, "commands per second a connection may send (token bucket)")
	set.Int(&cfg.WSCommandBurst, "ws-command-burst", "WS_COMMAND_BURST", 40, "burst of the command rate limit")
	set.Int(&cfg.WSMaxConnections, "ws-max-connections", "WS_MAX_CONNECTIONS", 20000, "WebSocket connections per gateway at most (more: 503)")
	set.Duration(&cfg.WSWriteTimeout, "ws-write-timeout", "WS_WRITE_TIMEOUT", 10*time.Second, "a socket write or ping slower than this drops the client")
	set.Duration(&cfg.WSPingInterval, "ws-ping-interval", "WS_PING_INTERVAL", 30*time.Second, "ping idle clients this often")
	set.Duration(&cfg.WSSlowClientAfter, "ws-slow-client-after", "WS_SLOW_CLIENT_AFTER", 15*time.Second, "a change waiting in a client's queue longer than this drops the client (close 4008)")
	set.Duration(&cfg.WSWriteCoalesce, "ws-write-coalesce", "WS_WRITE_COALESCE", 20*time.Millisecond, "a connection writes at most once per this: what comes sooner after a write waits and goes with the next (one system call; one message with batched framing); 0: write as soon as anything waits")
	set.Float64(&cfg.WSWriteCoalesceAbove, "ws-write-coalesce-above", "WS_WRITE_COALESCE_ABOVE", 50000, "coalesce writes (WS_WRITE_COALESCE) only while the gateway sends at least this many WebSocket messages a second (until the rate falls below half of it); 0: always")
	set.String(&cfg.MetricsAddr, "metrics-addr", "METRICS_ADDR", "127.0.0.1:9092", "serve /metrics and the detailed /readyz (and /healthz) on this address; keep it private")
	set.String(&cfg.TrustedProxies, "trusted-proxies", "TRUSTED_PROXIES", "", "comma-separated CIDRs of load balancers whose X-Forwarded-For is believed (the client address is its rightmost untrusted entry); unset: the socket's address")
	set.Duration(&cfg.RequestTimeout, "request-timeout", "REQUEST_TIMEOUT", 10*time.Second, "a REST request's database work gets this long, then answers 503 unavailable")
	set.Duration(&cfg.BodyReadTimeout, "body-read-timeout", "BODY_READ_TIMEOUT", 5*time.Second, "a request body must arrive within this (else 400)")
	set.Duration(&cfg.HeaderReadTimeout, "header-read-timeout", "HEADER_READ_TIMEOUT", 10*time.Second, "a request's headers must arrive within this, else the connection is closed (slowloris)")
	set.Duration(&cfg.ReadyTimeout, "ready-timeout", "READY_TIMEOUT", 2*time.Second, "each readiness probe (database, migrations, NATS) must answer within this")
	set.Int(&cfg.DBMaxConns, "db-max-conns", "DB_MAX_CONNS", defaultDBMaxConns, "PostgreSQL connections the gateway's pool opens at most (gateways x this + bridges x 8 must stay under the server's max_connections)")
	set.Duration(&cfg.DBStatementTimeout, "db-statement-timeout", "DB_STATEMENT_TIMEOUT", 15*time.Second, "PostgreSQL statement_timeout of the gateway's sessions; 0: the server's setting")
	set.Duration(&cfg.DBLockTimeout, "db-lock-timeout", "DB_LOCK_TIMEOUT", 5*time.Second, "PostgreSQL lock_timeout of the gateway's sessions; 0: the server's setting")
	set.Duration(&cfg.WSCatchUpTimeout, "ws-catchup-timeout", "WS_CATCHUP_TIMEOUT", 5*time.Second, "a snapshot or resume read gets this long, then the client gets an unavailable error (it stays connected)")
	set.Int(&cfg.WSMaxConnectionsPerAddr, "ws-max-connections-per-addr", "WS_MAX_CONNECTIONS_PER_ADDR", 100, "WebSocket connections of one client address at most (more: 429)")
	set.Int(&cfg.WSMaxSubscriptionsPerAddr, "ws-max-subscriptions-per-addr", "WS_MAX_SUBSCRIPTIONS_PER_ADDR", 20000, "subscriptions of all connections of one client address at most")
	set.Int(&cfg.WSMaxTotalSubscriptions, "ws-max-total-subscriptions", "WS_MAX_TOTAL_SUBSCRIPTIONS", 1000000, "subscriptions of all connections of this gateway at most")
	set.Int(&cfg.WSMaxNATSInterests, "ws-max-nats-interests", "WS_MAX_NATS_INTERESTS", 100000, "distinct products this gateway subscribes to on NATS at most")
	set.Duration(&cfg.WSConflateAfter, "ws-conflate-after", "WS_CONFLATE_AFTER", hub.DefaultConflateAfter, "a client whose oldest waiting change is older than this has its waiting changes conflated per product (latest version) until it catches up")
	set.Int(&cfg.WSConflateMaxEvents, "ws-conflate-max-events", "WS_CONFLATE_MAX_EVENTS", hub.DefaultConflateMaxEvents, "a client with more changes than this waiting has them conflated per product until it catches up (see -ws-conflate-after)")
	set.Int(&cfg.WSConflateMaxBytes, "ws-conflate-max-bytes", "WS_CONFLATE_MAX_BYTES", hub.DefaultConflateMaxBytes, "a client with more bytes of changes than this waiting has them conflated per product until it catches up (see -ws-conflate-after)")
	cfg.NATSAuth.Register(set)
	cfg.Log.Register(set)
	fs.SetOutput(os.Stderr)
	if err := set.Parse(args); err != nil {
		return Config{}, err
	}
	return cfg, cfg.validate()
}

// originPatterns splits ALLOWED_ORIGINS.
func (cfg Config) originPatterns() []string {
	var out []string
	for _, p := range strings.Split(cfg.AllowedOrigins, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// wsConfig returns the WebSocket endpoint's limits.
func (cfg Config) wsConfig() wsConfig {
	return wsConfig{
		originPatterns:   cfg.originPatterns(),
		readLimit:        cfg.WSReadLimit,
		maxIDsPerCommand: cfg.WSMaxIDsPerCommand,
		maxSubscriptions: cfg.WSMaxSubscriptions,
		commandRate:      rate.Limit(cfg.WSCommandRate),
		commandBurst:     cfg.WSCommandBurst,
		maxConnections:   cfg.WSMaxConnections,
		writeTimeout:     cfg.WSWriteTimeout,
		pingInterval:     cfg.WSPingInterval,
		slowAfter:        cfg.WSSlowClientAfter,
		writeCoalesce:    cfg.WSWriteCoalesce,
		coalesceAbove:    cfg.WSWriteCoalesceAbove,
		maxUnreadAnswers: 64,
		catchUpTimeout:   cfg.WSCatchUpTimeout,
		maxConnsPerAddr:  cfg.WSMaxConnectionsPerAddr,
		maxSubsPerAddr:   cfg.WSMaxSubscriptionsPerAddr,
		maxSubsTotal:     cfg.WSMaxTotalSubscriptions,
		conflation:       hub.Conflation{After: cfg.WSConflateAfter, MaxEvents: cfg.WSConflateMaxEvents, MaxBytes: cfg.WSConflateMaxBytes},
	}
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
	case cfg.DrainWindow < 0:
		return fmt.Errorf("DRAIN_WINDOW %v must not be negative", cfg.DrainWindow)
	case cfg.WSReadLimit < 256 || cfg.WSMaxIDsPerCommand < 1 || cfg.WSMaxSubscriptions < 1 || cfg.WSMaxConnections < 1:
		return errors.New("WS_READ_LIMIT (>= 256), WS_MAX_IDS_PER_COMMAND, WS_MAX_SUBSCRIPTIONS and WS_MAX_CONNECTIONS must be positive")
	case cfg.WSCommandRate <= 0 || cfg.WSCommandBurst < 1:
		return errors.New("WS_COMMAND_RATE and WS_COMMAND_BURST must be positive")
	case cfg.WSWriteTimeout <= 0 || cfg.WSPingInterval <= 0 || cfg.WSSlowClientAfter <= 0:
		return errors.New("WS_WRITE_TIMEOUT, WS_PING_INTERVAL and WS_SLOW_CLIENT_AFTER must be positive")
	case cfg.WSWriteCoalesce < 0 || cfg.WSWriteCoalesce > time.Second:
		return fmt.Errorf("WS_WRITE_COALESCE %v must be between 0 (write at once) and 1s", cfg.WSWriteCoalesce)
	case !(cfg.WSWriteCoalesceAbove >= 0):
		return fmt.Errorf("WS_WRITE_COALESCE_ABOVE %v must be at least 0 (0: always coalesce)", cfg.WSWriteCoalesceAbove)
	case cfg.RequestTimeout <= 0 || cfg.BodyReadTimeout <= 0 || cfg.HeaderReadTimeout <= 0 || cfg.ReadyTimeout <= 0 || cfg.WSCatchUpTimeout <= 0:
		return errors.New("REQUEST_TIMEOUT, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, READY_TIMEOUT and WS_CATCHUP_TIMEOUT must be positive")
	case cfg.DBMaxConns < 1:
		return fmt.Errorf("DB_MAX_CONNS %d must be at least 1", cfg.DBMaxConns)
	case cfg.DBStatementTimeout < 0 || cfg.DBLockTimeout < 0:
		return errors.New("DB_STATEMENT_TIMEOUT and DB_LOCK_TIMEOUT must not be negative (0: the server's setting)")
	case cfg.WSMaxConnectionsPerAddr < 1 || cfg.WSMaxSubscriptionsPerAddr < 1 || cfg.WSMaxTotalSubscriptions < 1 || cfg.WSMaxNATSInterests < 1:
		return errors.New("WS_MAX_CONNECTIONS_PER_ADDR, WS_MAX_SUBSCRIPTIONS_PER_ADDR, WS_MAX_TOTAL_SUBSCRIPTIONS and WS_MAX_NATS_INTERESTS must be positive")
	case cfg.APIToken != "" && len(cfg.APIToken) < minAPITokenBytes:
		return fmt.Errorf("API_TOKEN is %d bytes: use at least %d random bytes (e.g. openssl rand -hex 32), or leave it unset to turn writes off", len(cfg.APIToken), minAPITokenBytes)
	case cfg.WSConflateAfter <= 0 || cfg.WSConflateMaxEvents < 1 || cfg.WSConflateMaxBytes < 1:
		return errors.New("WS_CONFLATE_AFTER, WS_CONFLATE_MAX_EVENTS and WS_CONFLATE_MAX_BYTES must be positive")
	}
	for _, p := range cfg.originPatterns() {
		if err := checkOriginPattern(p); err != nil {
			return fmt.Errorf("ALLOWED_ORIGINS: %w", err)
		}
	}
	if _, err := parseTrustedProxies(cfg.TrustedProxies); err != nil {
		return fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	return nil
}

// minAPITokenBytes is the shortest API_TOKEN accepted: a bearer token is
// guessed by trying, so it must be long and random.
const minAPITokenBytes = 16

// checkOriginPattern refuses an ALLOWED_ORIGINS pattern that would let any
// site (or any site under a public suffix) open sockets with the users'
// cookies. coder/websocket matches patterns with path.Match against the
// Origin's host[:port], so "*", "**", "*.*", "*:*" and "?*" all match every
// host. The rule: the pattern must be valid, and its host's last two labels
// (the last one for a single-label host such as localhost) must be literal.
func checkOriginPattern(pattern string) error {
	refuse := func(why string) error {
		return fmt.Errorf("origin pattern %q %s: name the hosts, e.g. shop.example.com or *.example.com (a wildcard origin lets any site use your users' sessions)", pattern, why)
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return refuse("is not a valid pattern")
	}
	host := pattern
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	labels := strings.Split(host, ".")
	literal := labels[len(labels)-1:]
	if len(labels) >= 2 {
		literal = labels[len(labels)-2:]
	}
	for _, l := range literal {
		if l == "" || strings.ContainsAny(l, `*?[]\`) {
			return refuse("has a wildcard in its domain")
		}
	}
	// Belt and braces: a pattern that matches made-up hosts is a wildcard
	// whatever its spelling.
	for _, probe := range []string{"attacker.invalid", "attacker.invalid:443", "a.b.c.attacker.invalid"} {
		if ok, _ := path.Match(strings.ToLower(pattern), probe); ok {
			return refuse("matches any host")
		}
	}
	return nil
}
