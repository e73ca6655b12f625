package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/schema"
	"github.com/productwatch/productwatch/pkg/secretfile"
)

const databaseName = "productwatch"

func run(ctx context.Context, opts options, logger *slog.Logger) error {
	stateDir, err := filepath.Abs(opts.stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	dsn, cluster, err := resolveDatabase(ctx, stateDir, logger)
	if err != nil {
		return err
	}
	if cluster != nil {
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := cluster.Stop(stopCtx); err != nil {
				logger.Warn("stopping the private PostgreSQL cluster", "err", err)
			}
		}()
	}
	if opts.migrateOnly {
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			return err
		}
		defer db.Close()
		version, err := schema.Migrate(ctx, db, logger)
		if err != nil {
			return err
		}
		logger.Info("migrations applied", "version", version)
		return nil
	}

	token, err := apiToken(stateDir)
	if err != nil {
		return err
	}
	natsURL, embedListen := os.Getenv("NATS_URL"), ""
	var creds natsCredentials
	if natsURL == "" {
		if embedListen, err = freeAddr("127.0.0.1:4222"); err != nil {
			return err
		}
		natsURL = "nats://" + embedListen
		if creds, err = loadNATSCredentials(stateDir); err != nil {
			return err
		}
	}
	cli := natsCLILine(opts.binDir, stateDir, natsURL, creds)
	if creds.Debug != "" {
		if err := writeNATSContext(cli.contextFile, natsURL, creds); err != nil {
			return err
		}
	}
	metricsAddr, err := freeAddr(opts.metricsAddr)
	if err != nil {
		return err
	}

	var procs sync.WaitGroup
	defer procs.Wait() // every child has exited before run returns (runs after cancel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exited := make(chan error, 2)

	bridgeEnv := []string{"DATABASE_URL=" + dsn, "METRICS_ADDR=" + metricsAddr, "LOG_FORMAT=text",
		"NATS_STORE_DIR=" + filepath.Join(stateDir, "nats")}
	if embedListen != "" {
		bridgeEnv = append(bridgeEnv, "NATS_EMBED_LISTEN="+embedListen, "NATS_URL=",
			"NATS_USER="+broker.BridgeUser, "NATS_PASSWORD="+creds.Bridge,
			"NATS_EMBED_GATEWAY_PASSWORD="+creds.Gateway, "NATS_EMBED_DEBUG_PASSWORD="+creds.Debug)
	} else {
		// An external NATS: both programs take NATS_USER and NATS_PASSWORD
		// from this environment, as the operator set them.
		bridgeEnv = append(bridgeEnv, "NATS_URL="+natsURL)
	}
	if err := start(ctx, &procs, exited, filepath.Join(opts.binDir, "bridge"), "bridge", bridgeEnv); err != nil {
		return err
	}
	if err := waitReady(ctx, exited, "http://"+metricsAddr+"/readyz"); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}

	gatewayMetrics, err := freeAddr("127.0.0.1:9092")
	if err != nil {
		return err
	}
	gatewayEnv := []string{"DATABASE_URL=" + dsn, "LISTEN_ADDR=" + opts.gatewayAddr, "API_TOKEN=" + token,
		"NATS_URL=" + natsURL, "LOG_FORMAT=text", "METRICS_ADDR=" + gatewayMetrics}
	if embedListen != "" {
		gatewayEnv = append(gatewayEnv, "NATS_USER="+broker.GatewayUser, "NATS_PASSWORD="+creds.Gateway)
	}
	if err := start(ctx, &procs, exited, filepath.Join(opts.binDir, "gateway"), "gateway", gatewayEnv); err != nil {
		return err
	}
	gatewayURL := "https://localhost" + portOf(opts.gatewayAddr)
	if os.Getenv("INSECURE_HTTP") == "true" {
		gatewayURL = "http://localhost" + portOf(opts.gatewayAddr)
	}
	if err := waitReady(ctx, exited, gatewayURL+"/readyz"); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	printBanner(os.Stdout, gatewayURL, token, natsURL, metricsAddr, gatewayMetrics, cli)

	select {
	case <-ctx.Done():
		logger.Info("stopping")
		return nil
	case err := <-exited:
		cancel()
		return err
	}
}

// resolveDatabase returns the DSN of the productwatch database: DATABASE_URL
// as given, or the productwatch database (created when missing) on the local
// server or on a private cluster in stateDir/pgdata.
func resolveDatabase(ctx context.Context, stateDir string, logger *slog.Logger) (string, *pgserver.Cluster, error) {
	if dsn := os.Getenv("DATABASE_URL"); dsn != "" {
		logger.Info("using DATABASE_URL")
		return dsn, nil, nil
	}
	dsn, cluster, err := pgserver.ResolveDatabase(ctx, filepath.Join(stateDir, "pgdata"), databaseName, logger)
	if err != nil {
		return "", nil, err
	}
	// Resolve logged the server (its postgres database); the data goes to
	// this one.
	logger.Info("using database "+databaseName, "dsn", redactDSN(dsn))
	return dsn, cluster, nil
}

// redactDSN hides the password of a URL-form DSN (pgserver.WithDatabase
// returns that form for the servers devrun finds).
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return "(not shown)"
	}
	return u.Redacted()
}

// apiToken returns API_TOKEN, or the token kept in stateDir/api-token,
// generating it on first use so that it stays the same across runs.
func apiToken(stateDir string) (string, error) {
	if token := os.Getenv("API_TOKEN"); token != "" {
		return token, nil
	}
	path := filepath.Join(stateDir, "api-token")
	if data, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(data))) >= 16 {
		return strings.TrimSpace(string(data)), nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	token := hex.EncodeToString(raw)
	if err := secretfile.Write(path, []byte(token+"\n")); err != nil {
		return "", fmt.Errorf("keep the API token: %w", err)
	}
	return token, nil
}

// freeAddr returns addr when it can be listened on, else a free port on the
// same host (the machine may run its own NATS on 4222, say).
func freeAddr(addr string) (string, error) {
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		return addr, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "443" {
		return ""
	}
	return ":" + port
}

// start runs a program with env added to ours, its output prefixed with its
// name. It is sent SIGTERM when ctx ends; its exit is reported on exited.
func start(ctx context.Context, procs *sync.WaitGroup, exited chan<- error, path, name string, env []string) error {
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s (did `make build` run?): %w", name, err)
	}
	procs.Add(3)
	copied := make(chan struct{})
	go func() {
		defer procs.Done()
		defer close(copied)
		prefix(os.Stderr, out, name)
	}()
	done := make(chan struct{})
	go func() {
		defer procs.Done()
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case <-done:
		}
	}()
	go func() {
		defer procs.Done()
		// Wait closes the pipe: only once its output is read to the end
		// (os/exec), or the program's last lines would be lost.
		<-copied
		err := cmd.Wait()
		close(done)
		if ctx.Err() == nil {
			exited <- fmt.Errorf("%s exited: %v", name, err)
		}
	}()
	return nil
}

func prefix(w io.Writer, r io.Reader, name string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fmt.Fprintf(w, "%-8s| %s\n", name, sc.Text())
	}
}

// waitReady polls url until it answers 200, a child exits, or a minute passes.
func waitReady(ctx context.Context, exited <-chan error, url string) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // our own development certificate
	}}
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after a minute", url)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exited:
			return err
		case <-tick.C:
		}
	}
}

func printBanner(w io.Writer, gatewayURL, token, natsURL, metricsAddr, gatewayMetrics string, cli natsCLI) {
	body := `{"manufacturer":"Apple","productName":"MacBook Pro","pricePerUnit":"500EUR","unitsAvailable":6}`
	fmt.Fprintf(w, `
productwatch is running. Ctrl-C stops it.

  gateway     %[1]s   (self-signed development certificate: curl -k; the browser will warn once)
  API token   %[2]s
  NATS        %[3]s
  metrics     bridge http://%[4]s/metrics, gateway http://%[9]s/metrics (and /readyz with details)

Create a product, then list them:

  curl -k -X POST %[1]s/products -H 'Authorization: Bearer %[2]s' -H 'Content-Type: application/json' -d '%[5]s'
  curl -k %[1]s/products

Watch the changes arrive in JetStream (%[6]s):

  %[7]s sub 'product.>'
  %[7]s stream info PRODUCTS
%[8]s
productwatch is ready.
`, gatewayURL, token, natsURL, metricsAddr, body, cli.note, cli.command, cli.missing, gatewayMetrics)
}
