package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/productwatch/productwatch/pkg/secretfile"
)

// relative shows path relative to the working directory when it is below
// it, so the printed commands are short and work from the repository root.
func relative(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if rel, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return path
}

// debugEnvFile writes StateDir/nats-debug.env (mode 0600): the nats CLI's
// NATS_URL, NATS_USER and NATS_PASSWORD for the read-only debug user, to
// source in a shell.
func (c *cluster) debugEnvFile() (string, error) {
	path := filepath.Join(c.st.Spec.StateDir, "nats-debug.env")
	text := fmt.Sprintf("export NATS_URL=%s\nexport NATS_USER=%s\nexport NATS_PASSWORD=%s\n",
		natsURL(c.st.Spec.Ports), userDebug, c.creds.Debug)
	return path, secretfile.Write(path, []byte(text))
}

// debugEnv is the environment the nats CLI needs to connect as debug.
func (c *cluster) debugEnv() []string {
	return []string{"NATS_URL=" + natsURL(c.st.Spec.Ports), "NATS_USER=" + userDebug, "NATS_PASSWORD=" + c.creds.Debug}
}

func printBanner(w io.Writer, c *cluster) {
	spec := c.st.Spec
	envFile, err := c.debugEnvFile()
	if err != nil {
		fmt.Fprintf(w, "(could not write the nats CLI environment file: %v)\n", err)
	}
	base := "https://" + strings.Replace(spec.Ports.HTTPSAddr, "127.0.0.1", "localhost", 1)
	ca := relative(filepath.Join(spec.StateDir, "tls", "ca.pem"))
	body := `{"manufacturer":"Apple","productName":"MacBook Pro","pricePerUnit":"500EUR","unitsAvailable":6}`
	fmt.Fprintf(w, "\nproductwatch cluster is running (make cluster-down stops it; make cluster-scale GATEWAYS=5 scales).\n\n")
	fmt.Fprintf(w, "  load balancer  %s  and wss://%s/websocket  (haproxy; certificate %s)\n", base, spec.Ports.HTTPSAddr, ca)
	fmt.Fprintf(w, "  haproxy stats  http://%s/\n", spec.Ports.StatsAddr)
	printStatus(context.Background(), w, c)
	fmt.Fprintf(w, "  API token      %s\n", c.creds.APIToken)
	fmt.Fprintf(w, "  credentials    %s (mode 0600), logs in %s\n\n",
		relative(filepath.Join(spec.StateDir, "credentials.json")), relative(filepath.Join(spec.StateDir, "logs")))
	fmt.Fprintf(w, "Create a product through the load balancer, then list them:\n\n")
	fmt.Fprintf(w, "  curl --cacert %s -X POST %s/products -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '%s'\n",
		ca, base, c.creds.APIToken, body)
	fmt.Fprintf(w, "  curl --cacert %s %s/products\n\n", ca, base)
	fmt.Fprintf(w, "Watch the changes with the nats CLI as the read-only debug user (make tools installs bin/nats):\n\n")
	// The password stays in the 0600 file: not on a command line, where ps
	// and the shell's history would show it.
	fmt.Fprintf(w, "  (. %s && bin/nats sub 'product.>')\n\n", relative(envFile))
	fmt.Fprintf(w, "or set NATS_URL, NATS_USER and NATS_PASSWORD once per shell:\n\n")
	fmt.Fprintf(w, "  . %s\n  bin/nats stream info PRODUCTS\n\n", relative(envFile))
}

// printStatus lists every process with its PID, address and whether it runs.
func printStatus(ctx context.Context, w io.Writer, c *cluster) {
	p := c.st.Spec.Ports
	state := func(pr Proc) string {
		if pr.Alive() {
			return fmt.Sprintf("pid %d", pr.PID)
		}
		return "NOT RUNNING"
	}
	fmt.Fprintf(w, "  PostgreSQL     %s\n", redactDSN(c.st.DatabaseURL))
	for _, n := range c.st.NATS {
		fmt.Fprintf(w, "  nats n%d        nats://%s  monitor http://%s  %s\n", n.Index,
			loopback(p.NATSClient+n.Index-1), loopback(p.NATSMonitor+n.Index-1), state(n.Proc))
	}
	leader := c.leaderBridge(ctx)
	for _, b := range c.st.Bridges {
		role := "standby"
		if b.Index == leader {
			role = "leader"
		}
		fmt.Fprintf(w, "  bridge %d       http://%s/metrics  %s  %s\n", b.Index, loopback(p.BridgeMetrics+b.Index-1), role, state(b.Proc))
	}
	status, _ := serverStatus(ctx, c.st.Spec.StateDir)
	for _, g := range c.st.Gateways {
		lb := status[gatewayServerName(g.Index)]
		if lb == "" {
			lb = "?"
		}
		fmt.Fprintf(w, "  gateway %d      http://%s  metrics http://%s  haproxy %s  %s\n", g.Index,
			loopback(p.Gateway+g.Index-1), loopback(p.GatewayMetrics+g.Index-1), lb, state(g.Proc))
	}
	if c.st.HAProxy != nil {
		fmt.Fprintf(w, "  haproxy        https://%s  %s\n", p.HTTPSAddr, state(*c.st.HAProxy))
	}
}

// redactDSN hides a password in a URL-form DSN.
func redactDSN(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return dsn
	}
	userinfo := dsn[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return dsn[:scheme+3] + user + ":xxx" + dsn[at:]
	}
	return dsn
}
