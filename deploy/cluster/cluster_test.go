package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/procstat"
	"github.com/productwatch/productwatch/pkg/secretfile"

	"github.com/nats-io/nats-server/v2/server"
)

func testCreds() Credentials {
	return Credentials{Bridge: "bridge-secret-123456", Gateway: "gateway-secret-123456", Debug: "debug-secret-123456",
		Route: "route-secret-123456", APIToken: "token-123456789012345"}
}

// TestNodeConfig loads the generated configuration, with the repository's
// deploy/nats/auth.conf included as up copies it, with nats-server's own
// parser: the three users with the passwords from the environment, no
// anonymous user, routes to the two other nodes with the route password,
// JetStream on. (pkg/broker's tests check the permissions themselves.)
func TestNodeConfig(t *testing.T) {
	creds := testCreds()
	for _, kv := range authEnv(creds) {
		name, value, _ := strings.Cut(kv, "=")
		t.Setenv(name, value)
	}
	dir := t.TempDir()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{st: &State{Spec: Spec{StateDir: dir, NATSAuthDir: filepath.Join(root, "deploy", "nats"), Ports: DefaultPorts()}}, creds: creds}
	include, err := c.copyAuthConf()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "n2.conf")
	store := filepath.Join(dir, "store")
	if err := os.WriteFile(path, []byte(nodeConfig(c.st.Spec, 2, store, creds, include)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects the generated configuration: %v", err)
	}
	if opts.ServerName != "n2" || opts.Port != 14223 || opts.Host != "127.0.0.1" || opts.HTTPPort != 18223 {
		t.Errorf("name %q, listen %s:%d, monitor %d", opts.ServerName, opts.Host, opts.Port, opts.HTTPPort)
	}
	if !opts.JetStream || opts.StoreDir != store {
		t.Errorf("JetStream %v, store %q", opts.JetStream, opts.StoreDir)
	}
	if opts.NoAuthUser != "" || opts.Username != "" || opts.Authorization != "" {
		t.Errorf("anonymous access: no_auth_user %q, user %q, token %q", opts.NoAuthUser, opts.Username, opts.Authorization)
	}
	if opts.Cluster.Name != "productwatch" || opts.Cluster.Port != 16223 || opts.Cluster.Username != userRoute || opts.Cluster.Password != creds.Route {
		t.Errorf("cluster %+v", opts.Cluster)
	}
	var routes []string
	for _, r := range opts.Routes {
		routes = append(routes, r.Host)
		if p, _ := r.User.Password(); r.User.Username() != userRoute || p != creds.Route {
			t.Errorf("route %s without the route password", r.Host)
		}
	}
	slices.Sort(routes)
	if !slices.Equal(routes, []string{"127.0.0.1:16222", "127.0.0.1:16224"}) {
		t.Errorf("routes %v, want the two other nodes", routes)
	}
	passwords := map[string]string{userBridge: creds.Bridge, userGateway: creds.Gateway, userDebug: creds.Debug}
	if len(opts.Users) != len(passwords) {
		t.Fatalf("%d users, want bridge, gateway, debug", len(opts.Users))
	}
	for _, u := range opts.Users {
		if passwords[u.Username] == "" || u.Password != passwords[u.Username] {
			t.Errorf("user %q: password not the generated one", u.Username)
		}
		if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
			t.Errorf("user %q without permissions", u.Username)
		}
	}
	for _, name := range []string{"auth.conf", "permissions.conf"} {
		if info, err := os.Stat(filepath.Join(dir, "nats-auth", name)); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("copied %s: %v", name, err)
		}
	}
	c.st.Spec.NATSAuthDir = t.TempDir()
	if _, err := c.copyAuthConf(); err == nil {
		t.Error("a directory without auth.conf was accepted")
	}
}

// TestHAProxyConfig checks the generated configuration with haproxy -c.
func TestHAProxyConfig(t *testing.T) {
	haproxy, err := findHAProxy()
	if err != nil {
		t.Skipf("%v (make cluster-tools installs it)", err)
	}
	dir := t.TempDir()
	if err := ensureCertificate(dir); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Ports: DefaultPorts()}
	text := haproxyConfig(spec, dir, []int{1, 2, 5})
	for _, want := range []string{"server gw1 127.0.0.1:18081 check", "server gw5 127.0.0.1:18085 check",
		"option httpchk GET /readyz", "timeout tunnel 1h", "bind 127.0.0.1:9443 ssl crt " + filepath.Join(dir, "tls", "haproxy.pem")} {
		if !strings.Contains(text, want) {
			t.Errorf("configuration lacks %q", want)
		}
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkHAProxyConfig(t.Context(), haproxy, path); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, "tls", "haproxy.pem"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("haproxy.pem: %v, mode %v; want 0600", err, info.Mode().Perm())
	}
	if _, err := clientTLS(dir); err != nil {
		t.Errorf("ca.pem: %v", err)
	}
}

func TestCredentialsGeneratedOnce(t *testing.T) {
	dir := t.TempDir()
	first, err := loadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"bridge": first.Bridge, "gateway": first.Gateway, "debug": first.Debug, "route": first.Route, "token": first.APIToken} {
		if len(v) < secretfile.MinLength {
			t.Errorf("%s secret %q is too short", name, v)
		}
	}
	if first.Bridge == first.Gateway || first.Gateway == first.Debug {
		t.Error("users share a password")
	}
	again, err := loadCredentials(dir)
	if err != nil || again != first {
		t.Errorf("second load: %+v, %v; want the same credentials", again, err)
	}
	info, err := os.Stat(filepath.Join(dir, "credentials.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("credentials.json: %v, mode %v; want 0600", err, info.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, "credentials.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadCredentials(dir); err == nil {
		t.Error("a corrupt credentials file was accepted (and would be overwritten)")
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadState(dir); err != errNoCluster {
		t.Fatalf("empty directory: %v, want errNoCluster", err)
	}
	st := &State{Spec: Spec{StateDir: dir, Ports: PortsFrom(30000), Gateways: 2, DrainWindow: 3 * time.Second},
		Gateways: []Member{{Proc: Proc{Name: "gateway1", PID: 12, StartTime: 34}, Index: 1}}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Ports != st.Spec.Ports || got.Spec.DrainWindow != st.Spec.DrainWindow || got.Gateways[0] != st.Gateways[0] {
		t.Errorf("round trip: %+v, want %+v", got, st)
	}
}

// TestProcByPID: a started process is alive, Stop ends it with SIGTERM; a
// record whose start time does not match (the PID was reused) is never
// signalled; Kill of a gone process is not an error.
func TestProcByPID(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	dir := t.TempDir()
	p, err := startProc("sleeper", sleep, []string{"60"}, nil, filepath.Join(dir, "sleeper.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatal("just started, not alive")
	}
	impostor := p
	impostor.StartTime++
	if impostor.Alive() {
		t.Error("a record with another start time counts as alive")
	}
	if err := impostor.Stop(t.Context(), time.Second); err != nil {
		t.Errorf("stopping a reused PID: %v", err)
	}
	if !p.Alive() {
		t.Fatal("the impostor record's Stop signalled the real process")
	}
	if err := p.Stop(t.Context(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Fatal("alive after Stop")
	}
	if err := p.Kill(); err != nil {
		t.Errorf("Kill of a gone process: %v", err)
	}
	if _, err := startProc("missing", filepath.Join(dir, "no-such-program"), nil, nil, filepath.Join(dir, "m.log")); err == nil {
		t.Error("starting a missing program succeeded")
	}
}

func TestCheckPortsFree(t *testing.T) {
	spec := Spec{Gateways: 3, Bridges: 2}
	// Below the kernel's ephemeral range, where outgoing connections would
	// make ports look taken.
	for base := 20000; base < 32000; base += 100 {
		spec.Ports = PortsFrom(base)
		if checkPortsFree(spec) == nil {
			break
		}
	}
	taken := loopback(spec.Ports.Gateway + 1) // the second gateway's
	ln, err := net.Listen("tcp", taken)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = checkPortsFree(spec)
	if err == nil || !strings.Contains(err.Error(), taken) {
		t.Errorf("taken port: %v, want an error naming %s", err, taken)
	}
}

func TestParseCookbook(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []cookbookCommand
		wantErr   bool
	}{
		{"commands and markers", "# Guide\n## nats CLI cookbook\ntext\n```sh\n. env\nnats stream info PRODUCTS   # the stream\nnats stream purge PRODUCTS -f # denied\n```\n## Next\n```sh\nnats not this\n```\n",
			[]cookbookCommand{{line: "nats stream info PRODUCTS"}, {line: "nats stream purge PRODUCTS -f", denied: true}}, false},
		{"quoted subject", "## nats CLI cookbook\n```sh\nnats sub 'product.>' --count 3\n```\n",
			[]cookbookCommand{{line: "nats sub 'product.>' --count 3"}}, false},
		{"no section", "## Other\n```sh\nnats rtt\n```\n", nil, true},
		{"other languages ignored", "## nats CLI cookbook\n```json\nnats x\n```\n", nil, true},
		{"a console block closes", "## nats CLI cookbook\n```console\n. env\n```\ntext\nnats --server x stream info\n```sh\nnats rtt\n```\n",
			[]cookbookCommand{{line: "nats rtt"}}, false},
		{"a heading inside a block is text", "## nats CLI cookbook\n```sh\nnats rtt\n```\n```text\n## not a heading\n```\n```sh\nnats stream ls\n```\n",
			[]cookbookCommand{{line: "nats rtt"}, {line: "nats stream ls"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCookbook(strings.NewReader(tc.doc))
			if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
				t.Errorf("got %+v, %v; want %+v (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestCookbookInReadme: the cookbook the checker runs exists and every
// `nats sub` in it ends by itself.
func TestCookbookInReadme(t *testing.T) {
	f, err := os.Open(defaultCookbook(filepath.Join("..", "..")))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmds, err := parseCookbook(f)
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, c := range cmds {
		if strings.HasPrefix(c.line, "nats sub") && !strings.Contains(c.line, "--count") {
			t.Errorf("%q never ends: give it --count", c.line)
		}
		if c.denied {
			denied++
		}
	}
	if denied == 0 {
		t.Error("the cookbook shows nothing the debug user is refused")
	}
}

func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db": "postgres://u:xxx@h:5432/db",
		"postgres://u@h/db":             "postgres://u@h/db",
		"host=h user=u":                 "host=h user=u",
	} {
		if got := redactDSN(in); got != want {
			t.Errorf("redactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	t.Setenv("GATEWAYS", "")
	o, err := parseFlags("scale", []string{"-gateways", "5", "-state-dir", t.TempDir()})
	if err != nil || o.spec.Gateways != 5 || !o.gatewaysSet {
		t.Errorf("scale -gateways 5: %+v, %v", o.spec, err)
	}
	o, err = parseFlags("scale", nil)
	if err != nil || o.gatewaysSet {
		t.Errorf("scale without a count: gatewaysSet %v, %v", o.gatewaysSet, err)
	}
	for _, args := range [][]string{{"-gateways", "0"}, {"-gateways", "31"}, {"-bridges", "0"}, {"-drain-window", "-1s"}} {
		if _, err := parseFlags("up", args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	ctx := context.Background()
	if err := run(ctx, "scale", []string{"-state-dir", t.TempDir(), "-gateways", "2"}, os.Stdout, nil); err != errNoCluster {
		t.Errorf("scale without a cluster: %v, want errNoCluster", err)
	}
}

// TestUpRefusesARunningCluster: a state whose processes still run (here,
// this test process) is not overwritten by a second up.
func TestUpRefusesARunningCluster(t *testing.T) {
	dir := t.TempDir()
	self, err := procstat.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	st := &State{Spec: Spec{StateDir: dir}, Gateways: []Member{{Proc: Proc{Name: "gateway1", PID: os.Getpid(), StartTime: self.StartTime}, Index: 1}}}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	_, err = up(t.Context(), Spec{StateDir: dir, BinDir: t.TempDir(), Ports: DefaultPorts(), Gateways: 1, Bridges: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "already running") || !strings.Contains(err.Error(), "gateway1") {
		t.Errorf("up over a running cluster: %v", err)
	}
	// The same state with a PID the kernel has since given to another
	// program (another start time) is stale: up goes on (and fails here
	// for want of the programs, naming them).
	st.Gateways[0].StartTime++
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	_, err = up(t.Context(), Spec{StateDir: dir, BinDir: t.TempDir(), Ports: DefaultPorts(), Gateways: 1, Bridges: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "bridge missing") {
		t.Errorf("up over a stale state without programs: %v", err)
	}
}
