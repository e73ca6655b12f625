package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/secretfile"
)

// startTimeout bounds the wait for one process to become ready.
const startTimeout = 90 * time.Second

// cluster is an open cluster: its state (written back after every change)
// and its credentials. Its methods run under the state directory's lock.
type cluster struct {
	st     *State
	creds  Credentials
	logger *slog.Logger
}

// binary returns the path of a program in the spec's bin directory.
func (c *cluster) binary(name string) string { return filepath.Join(c.st.Spec.BinDir, name) }

func (c *cluster) logPath(name string) string {
	return filepath.Join(c.st.Spec.StateDir, "logs", name+".log")
}

// up starts everything the spec asks for, saving the state after each
// process so that down can stop what a failed up left running.
func up(ctx context.Context, spec Spec, logger *slog.Logger) (*cluster, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(spec.StateDir, "logs"), 0o700); err != nil {
		return nil, err
	}
	if old, err := loadState(spec.StateDir); err == nil {
		if running := old.running(); len(running) > 0 {
			return nil, fmt.Errorf("a cluster is already running from %s (%s): make cluster-down first",
				spec.StateDir, strings.Join(running, ", "))
		}
	} else if !errors.Is(err, errNoCluster) {
		return nil, err
	}
	creds, err := loadCredentials(spec.StateDir)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"bridge", "gateway", "nats-server"} {
		if _, err := os.Stat(filepath.Join(spec.BinDir, name)); err != nil {
			return nil, fmt.Errorf("%s missing in %s (make cluster builds it): %w", name, spec.BinDir, err)
		}
	}
	if _, err := findHAProxy(); err != nil {
		return nil, err
	}
	if err := ensureCertificate(spec.StateDir); err != nil {
		return nil, fmt.Errorf("haproxy certificate: %w", err)
	}
	if err := checkPortsFree(spec); err != nil {
		return nil, err
	}

	c := &cluster{st: &State{Spec: spec}, creds: creds, logger: logger}
	if err := c.resolveDatabase(ctx); err != nil {
		return nil, err
	}
	if err := c.st.save(); err != nil {
		return nil, err
	}
	if err := c.startAll(ctx); err != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if downErr := c.down(stopCtx); downErr != nil {
			logger.Warn("cleaning up after a failed start", "err", downErr)
		}
		return nil, err
	}
	return c, nil
}

func (c *cluster) startAll(ctx context.Context) error {
	for i := 1; i <= natsNodes; i++ {
		if err := c.startNode(ctx, i); err != nil {
			return err
		}
	}
	for i := 1; i <= natsNodes; i++ {
		if err := c.waitNode(ctx, i); err != nil {
			return err
		}
	}
	if err := c.waitMetaLeader(ctx); err != nil {
		return err
	}
	for i := 1; i <= c.st.Spec.Bridges; i++ {
		if err := c.startBridge(ctx, i); err != nil {
			return err
		}
	}
	for i := 1; i <= c.st.Spec.Gateways; i++ {
		if err := c.startGateway(ctx, i); err != nil {
			return err
		}
	}
	return c.startHAProxy(ctx)
}

// resolveDatabase finds PostgreSQL as make run does (DATABASE_URL, the
// local server, else a private cluster in .run/pgdata beside the state
// directory) and creates the cluster's own database there, so that a
// `make run` on the same server does not share its change log (its bridge
// would compete for the leader lock and publish to its own NATS).
func (c *cluster) resolveDatabase(ctx context.Context) error {
	spec := c.st.Spec
	if spec.DatabaseURL != "" {
		c.st.DatabaseURL = spec.DatabaseURL
		return nil
	}
	pgdata := filepath.Join(filepath.Dir(spec.StateDir), "pgdata")
	dsn, private, err := pgserver.ResolveDatabase(ctx, pgdata, spec.Database, c.logger)
	if err != nil {
		return err
	}
	if private != nil && !private.Reused() {
		c.st.PrivatePG = private.Dir()
	}
	c.st.DatabaseURL = dsn
	return nil
}

// checkPortsFree fails with the first port of the spec something else
// listens on, before anything starts.
func checkPortsFree(spec Spec) error {
	p := spec.Ports
	var addrs []string
	for i := range natsNodes {
		addrs = append(addrs, loopback(p.NATSClient+i), loopback(p.NATSCluster+i), loopback(p.NATSMonitor+i))
	}
	for i := range spec.Bridges {
		addrs = append(addrs, loopback(p.BridgeMetrics+i))
	}
	for i := range spec.Gateways {
		addrs = append(addrs, loopback(p.Gateway+i), loopback(p.GatewayMetrics+i))
	}
	addrs = append(addrs, p.HTTPSAddr, p.StatsAddr)
	for _, addr := range addrs {
		if err := addrFree(addr); err != nil {
			return err
		}
	}
	return nil
}

func addrFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("port %s is taken (another make cluster, or choose other ports): %w", addr, err)
	}
	return ln.Close()
}

// nodeStoreDir is node i's JetStream store, kept across up and down.
func (c *cluster) nodeStoreDir(i int) string {
	return filepath.Join(c.st.Spec.StateDir, "nats", fmt.Sprintf("n%d", i))
}

func (c *cluster) startNode(_ context.Context, i int) error {
	store := c.nodeStoreDir(i)
	if err := os.MkdirAll(store, 0o700); err != nil {
		return err
	}
	include, err := c.copyAuthConf()
	if err != nil {
		return err
	}
	env := authEnv(c.creds)
	conf := filepath.Join(c.st.Spec.StateDir, fmt.Sprintf("nats-n%d.conf", i))
	if err := secretfile.Write(conf, []byte(nodeConfig(c.st.Spec, i, store, c.creds, include))); err != nil {
		return err
	}
	name := fmt.Sprintf("nats-n%d", i)
	p, err := startProc(name, c.binary("nats-server"), []string{"-c", conf}, env, c.logPath(name))
	if err != nil {
		return err
	}
	c.st.NATS = append(c.st.NATS, Node{Proc: p, Index: i})
	return c.st.save()
}

// copyAuthConf copies the repository's NATS users and permissions
// (auth.conf and permissions.conf in Spec.NATSAuthDir, the ones compose
// uses) beside the node configurations and returns the path to include,
// relative to them.
func (c *cluster) copyAuthConf() (string, error) {
	var files [][]byte
	for _, name := range []string{"auth.conf", "permissions.conf"} {
		data, err := os.ReadFile(filepath.Join(c.st.Spec.NATSAuthDir, name))
		if err != nil {
			return "", fmt.Errorf("the NATS users (-nats-auth-dir, run make cluster from the repository): %w", err)
		}
		files = append(files, data)
	}
	dir := filepath.Join(c.st.Spec.StateDir, "nats-auth")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	// Replaced atomically: a node started just before may still be reading
	// them (a truncating write made one fail now and then with "variable
	// reference for 'PRODUCTWATCH_BRIDGE' … can not be found").
	for i, name := range []string{"auth.conf", "permissions.conf"} {
		if err := secretfile.Write(filepath.Join(dir, name), files[i]); err != nil {
			return "", err
		}
	}
	return filepath.Join("nats-auth", "auth.conf"), nil
}

// waitNode waits until node i answers /healthz with JetStream ready; the
// JetStream check passes only once the node has joined the meta group, so
// the cluster has formed.
func (c *cluster) waitNode(ctx context.Context, i int) error {
	node := c.node(i)
	if node == nil {
		return fmt.Errorf("no node n%d", i)
	}
	url := "http://" + loopback(c.st.Spec.Ports.NATSMonitor+i-1) + "/healthz"
	return waitOK(ctx, node.Proc, url, nil)
}

// waitMetaLeader waits until the nodes have elected JetStream's meta
// leader (they can create and place streams only then; /healthz passes
// before) and, when the store already holds the PRODUCTS stream (a cluster
// started again), the stream's leader, as every node sees them: a bridge
// that asks for the stream before then waits out its timeout and gives up
// the lead.
func (c *cluster) waitMetaLeader(ctx context.Context) error {
	return poll(ctx, startTimeout, func() (bool, error) {
		for _, n := range c.st.NATS {
			body, err := httpGet(ctx, "http://"+loopback(c.st.Spec.Ports.NATSMonitor+n.Index-1)+"/jsz?streams=true", nil)
			if err != nil {
				return false, nil
			}
			var jsz struct {
				Meta *struct {
					Leader string `json:"leader"`
				} `json:"meta_cluster"`
				Accounts []struct {
					Streams []struct {
						Name    string `json:"name"`
						Cluster *struct {
							Leader string `json:"leader"`
						} `json:"cluster"`
					} `json:"stream_detail"`
				} `json:"account_details"`
			}
			if err := json.Unmarshal([]byte(body), &jsz); err != nil || jsz.Meta == nil || jsz.Meta.Leader == "" {
				return false, nil
			}
			for _, a := range jsz.Accounts {
				for _, s := range a.Streams {
					if s.Name == "PRODUCTS" && (s.Cluster == nil || s.Cluster.Leader == "") {
						return false, nil
					}
				}
			}
		}
		return true, nil
	}, "the NATS nodes to elect a JetStream meta leader (and the PRODUCTS stream's leader)")
}

func (c *cluster) node(i int) *Node {
	for k := range c.st.NATS {
		if c.st.NATS[k].Index == i {
			return &c.st.NATS[k]
		}
	}
	return nil
}

// bridgeEnv is the environment of bridge i.
func (c *cluster) bridgeEnv(i int) []string {
	p := c.st.Spec.Ports
	env := []string{
		"DATABASE_URL=" + c.st.DatabaseURL,
		"NATS_URL=" + natsURL(p),
		"NATS_USER=" + userBridge, "NATS_PASSWORD=" + c.creds.Bridge,
		"METRICS_ADDR=" + loopback(p.BridgeMetrics+i-1),
		"STREAM_REPLICAS=3",
		"LOG_FORMAT=text",
	}
	return append(env, c.st.Spec.BridgeEnv...)
}

func (c *cluster) startBridge(ctx context.Context, i int) error {
	name := fmt.Sprintf("bridge%d", i)
	p, err := startProc(name, c.binary("bridge"), nil, c.bridgeEnv(i), c.logPath(name))
	if err != nil {
		return err
	}
	c.st.Bridges = append(c.st.Bridges, Member{Proc: p, Index: i})
	if err := c.st.save(); err != nil {
		return err
	}
	return waitOK(ctx, p, "http://"+loopback(c.st.Spec.Ports.BridgeMetrics+i-1)+"/readyz", nil)
}

// gatewayEnv is the environment of gateway i: plain HTTP on its loopback
// port behind haproxy, its own metrics address.
func (c *cluster) gatewayEnv(i int) []string {
	p := c.st.Spec.Ports
	env := []string{
		"DATABASE_URL=" + c.st.DatabaseURL,
		"NATS_URL=" + natsURL(p),
		"NATS_USER=" + userGateway, "NATS_PASSWORD=" + c.creds.Gateway,
		"LISTEN_ADDR=" + loopback(p.Gateway+i-1),
		"METRICS_ADDR=" + loopback(p.GatewayMetrics+i-1),
		"INSECURE_HTTP=true",
		// haproxy connects from loopback and names the client in
		// X-Forwarded-For: the per-address limits count the real clients.
		"TRUSTED_PROXIES=127.0.0.1/32",
		"API_TOKEN=" + c.creds.APIToken,
		"DRAIN_WINDOW=" + c.st.Spec.DrainWindow.String(),
		// Up to 5 gateways (cluster-scale) and 2 bridges share the local
		// server's connections (max_connections 100 on Debian) with
		// whatever else runs there: 12 each leaves room. With 32, a
		// reconnect storm after scaling down ran out ("too many clients")
		// and catch-ups answered unavailable.
		"DB_MAX_CONNS=12",
		"LOG_FORMAT=text",
	}
	return append(env, c.st.Spec.GatewayEnv...)
}

func (c *cluster) gatewayURL(i int) string {
	return "http://" + loopback(c.st.Spec.Ports.Gateway+i-1)
}

func (c *cluster) startGateway(ctx context.Context, i int) error {
	name := fmt.Sprintf("gateway%d", i)
	p, err := startProc(name, c.binary("gateway"), nil, c.gatewayEnv(i), c.logPath(name))
	if err != nil {
		return err
	}
	c.st.Gateways = append(c.st.Gateways, Member{Proc: p, Index: i})
	slices.SortFunc(c.st.Gateways, func(a, b Member) int { return a.Index - b.Index })
	if err := c.st.save(); err != nil {
		return err
	}
	return waitOK(ctx, p, c.gatewayURL(i)+"/readyz", nil)
}

func (c *cluster) gateway(i int) *Member {
	for k := range c.st.Gateways {
		if c.st.Gateways[k].Index == i {
			return &c.st.Gateways[k]
		}
	}
	return nil
}

func (c *cluster) gatewayIndexes() []int {
	var out []int
	for _, g := range c.st.Gateways {
		out = append(out, g.Index)
	}
	return out
}

// writeHAProxyConfig writes haproxy.cfg for the current gateways and
// checks it with haproxy -c.
func (c *cluster) writeHAProxyConfig(ctx context.Context) (string, error) {
	haproxy, err := findHAProxy()
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.st.Spec.StateDir, "haproxy.cfg")
	text := haproxyConfig(c.st.Spec, c.st.Spec.StateDir, c.gatewayIndexes())
	if err := os.WriteFile(path+".new", []byte(text), 0o600); err != nil {
		return "", err
	}
	if err := checkHAProxyConfig(ctx, haproxy, path+".new"); err != nil {
		return "", err
	}
	return path, os.Rename(path+".new", path)
}

func (c *cluster) startHAProxy(ctx context.Context) error {
	haproxy, err := findHAProxy()
	if err != nil {
		return err
	}
	path, err := c.writeHAProxyConfig(ctx)
	if err != nil {
		return err
	}
	// -db: stay in the foreground (this is the process whose PID we keep),
	// logging to stderr, which goes to the log file.
	p, err := startProc("haproxy", haproxy, []string{"-db", "-f", path}, nil, c.logPath("haproxy"))
	if err != nil {
		return err
	}
	c.st.HAProxy = &p
	if err := c.st.save(); err != nil {
		return err
	}
	return waitOK(ctx, p, "https://"+c.st.Spec.Ports.HTTPSAddr+"/readyz", c.tlsConfig())
}

// tlsConfig trusts the cluster's own certificate.
func (c *cluster) tlsConfig() *tls.Config {
	cfg, err := clientTLS(c.st.Spec.StateDir)
	if err != nil {
		return &tls.Config{InsecureSkipVerify: true} // only for probing our own proxy; the certificate is ours
	}
	return cfg
}

// down stops every process of the state by PID: haproxy first (no new
// clients), then the gateways (they drain), the bridges, the NATS nodes,
// and a PostgreSQL this cluster started. Errors are collected, not fatal:
// down stops everything it can.
func (c *cluster) down(ctx context.Context) error {
	var errs []error
	if c.st.HAProxy != nil {
		errs = append(errs, c.st.HAProxy.Stop(ctx, 10*time.Second))
	}
	// The gateways drain in parallel: each closes its sockets over the
	// drain window.
	done := make(chan error, len(c.st.Gateways))
	for _, g := range c.st.Gateways {
		go func() { done <- g.Stop(ctx, c.st.Spec.DrainWindow+20*time.Second) }()
	}
	for range c.st.Gateways {
		errs = append(errs, <-done)
	}
	for _, b := range c.st.Bridges {
		errs = append(errs, b.Stop(ctx, 20*time.Second))
	}
	for _, n := range c.st.NATS {
		errs = append(errs, n.Stop(ctx, 20*time.Second))
	}
	if c.st.PrivatePG != "" {
		pg, err := pgserver.StartPrivate(ctx, pgserver.Options{Dir: c.st.PrivatePG, Logger: c.logger})
		if err == nil {
			err = pg.Stop(ctx)
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(statePath(c.st.Spec.StateDir))
}

// running lists the processes of the state that still run.
func (st *State) running() []string {
	var out []string
	add := func(p Proc) {
		if p.Alive() {
			out = append(out, fmt.Sprintf("%s pid %d", p.Name, p.PID))
		}
	}
	for _, n := range st.NATS {
		add(n.Proc)
	}
	for _, b := range st.Bridges {
		add(b.Proc)
	}
	for _, g := range st.Gateways {
		add(g.Proc)
	}
	if st.HAProxy != nil {
		add(*st.HAProxy)
	}
	return out
}

// scale starts or stops gateways until n run. New ones get the lowest free
// indexes; the highest are stopped first. haproxy learns of each change
// through its runtime API (no reload, so no connection is cut) and its
// configuration file is rewritten to match.
func (c *cluster) scale(ctx context.Context, n int) error {
	if n < 1 || n > maxGateways {
		return fmt.Errorf("GATEWAYS=%d: between 1 and %d", n, maxGateways)
	}
	for len(c.st.Gateways) < n {
		i := 1
		for c.gateway(i) != nil {
			i++
		}
		if err := addrFree(loopback(c.st.Spec.Ports.Gateway + i - 1)); err != nil {
			return err
		}
		if err := c.startGateway(ctx, i); err != nil {
			return err
		}
		if err := c.haproxyAddServer(ctx, i); err != nil {
			return err
		}
		c.logger.Info("gateway started", "gateway", i, "addr", loopback(c.st.Spec.Ports.Gateway+i-1))
	}
	for len(c.st.Gateways) > n {
		last := c.st.Gateways[len(c.st.Gateways)-1]
		if err := c.stopGateway(ctx, last.Index); err != nil {
			return err
		}
		if err := c.haproxyDelServer(ctx, last.Index); err != nil {
			return err
		}
		c.logger.Info("gateway stopped", "gateway", last.Index)
	}
	c.st.Spec.Gateways = n
	if err := c.st.save(); err != nil {
		return err
	}
	_, err := c.writeHAProxyConfig(ctx)
	return err
}

// stopGateway drains gateway i: haproxy sends it no new connection, then
// SIGTERM makes the gateway close its WebSockets with 1001 over its drain
// window (the clients reconnect through haproxy to the others) and exit.
func (c *cluster) stopGateway(ctx context.Context, i int) error {
	g := c.gateway(i)
	if g == nil {
		return fmt.Errorf("no gateway %d", i)
	}
	if c.st.HAProxy != nil {
		if _, err := haproxyCommand(ctx, c.st.Spec.StateDir, fmt.Sprintf("set server %s/%s state drain", haproxyBackend, gatewayServerName(i))); err != nil {
			return err
		}
	}
	if err := g.Stop(ctx, c.st.Spec.DrainWindow+20*time.Second); err != nil {
		return err
	}
	c.st.Gateways = slices.DeleteFunc(c.st.Gateways, func(m Member) bool { return m.Index == i })
	return c.st.save()
}

// restartGateway drains and stops gateway i, starts it again, and waits
// until haproxy sends it traffic again.
func (c *cluster) restartGateway(ctx context.Context, i int) error {
	if err := c.stopGateway(ctx, i); err != nil {
		return err
	}
	if err := c.startGateway(ctx, i); err != nil {
		return err
	}
	if c.st.HAProxy == nil {
		return nil
	}
	if _, err := haproxyCommand(ctx, c.st.Spec.StateDir, fmt.Sprintf("set server %s/%s state ready", haproxyBackend, gatewayServerName(i))); err != nil {
		return err
	}
	return c.waitServerUp(ctx, i)
}

// waitServerUp waits until haproxy's health checks see gateway i UP.
func (c *cluster) waitServerUp(ctx context.Context, i int) error {
	name := gatewayServerName(i)
	return poll(ctx, startTimeout, func() (bool, error) {
		status, err := serverStatus(ctx, c.st.Spec.StateDir)
		if err != nil {
			return false, err
		}
		return status[name] == "UP", nil
	}, "haproxy to see "+name+" up")
}

// haproxyAddServer registers gateway i with the running haproxy, with the
// health check every configured server has (dynamic servers do not take
// default-server settings, so they are spelled out), and waits until it is UP.
func (c *cluster) haproxyAddServer(ctx context.Context, i int) error {
	if c.st.HAProxy == nil {
		return nil
	}
	srv := haproxyBackend + "/" + gatewayServerName(i)
	for _, cmd := range []string{
		fmt.Sprintf("add server %s %s check inter 1s fastinter 500ms downinter 1s fall 2 rise 2", srv, loopback(c.st.Spec.Ports.Gateway+i-1)),
		"enable health " + srv,
		"enable server " + srv,
	} {
		if _, err := haproxyCommand(ctx, c.st.Spec.StateDir, cmd); err != nil {
			return err
		}
	}
	return c.waitServerUp(ctx, i)
}

// haproxyDelServer removes gateway i from the running haproxy (it must be
// in maintenance and hold no session to be deleted).
func (c *cluster) haproxyDelServer(ctx context.Context, i int) error {
	if c.st.HAProxy == nil {
		return nil
	}
	srv := haproxyBackend + "/" + gatewayServerName(i)
	for _, cmd := range []string{"set server " + srv + " state maint", "shutdown sessions server " + srv} {
		if _, err := haproxyCommand(ctx, c.st.Spec.StateDir, cmd); err != nil {
			return err
		}
	}
	return poll(ctx, 30*time.Second, func() (bool, error) {
		_, err := haproxyCommand(ctx, c.st.Spec.StateDir, "del server "+srv)
		return err == nil, nil // "Server still has connections attached to it" while they close
	}, "haproxy to delete "+srv)
}

// leaderBridge returns the index of the bridge whose metrics say it leads,
// or 0 when none does (yet).
func (c *cluster) leaderBridge(ctx context.Context) int {
	for _, b := range c.st.Bridges {
		if !b.Alive() {
			continue
		}
		body, err := httpGet(ctx, "http://"+loopback(c.st.Spec.Ports.BridgeMetrics+b.Index-1)+"/metrics", nil)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(body, "\n") {
			if v, ok := strings.CutPrefix(line, "productwatch_bridge_leader "); ok {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f == 1 {
					return b.Index
				}
			}
		}
	}
	return 0
}

// waitOK polls url until it answers 200, failing early with the end of the
// process's log when the process exits.
func waitOK(ctx context.Context, p Proc, url string, tlsCfg *tls.Config) error {
	return poll(ctx, startTimeout, func() (bool, error) {
		if !p.Alive() {
			return false, fmt.Errorf("%s exited; the end of %s:\n%s", p.Name, p.Log, tail(p.Log, 20))
		}
		_, err := httpGet(ctx, url, tlsCfg)
		return err == nil, nil
	}, p.Name+" at "+url)
}

// httpGet returns the body of url when it answers 200.
func httpGet(ctx context.Context, url string, tlsCfg *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(body), nil
}

// poll calls check every 100 ms until it reports done, returns an error, or
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, check func() (bool, error), what string) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %v for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
