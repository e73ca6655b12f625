package deploy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"maps"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
)

// composeSecrets are the variables docker-compose.yml must refuse to run
// without, with the distinct values the tests give them.
var composeSecrets = map[string]string{
	"POSTGRES_PASSWORD":     "test-postgres-password",
	"API_TOKEN":             "test-api-token",
	"NATS_BRIDGE_PASSWORD":  "test-bridge-password",
	"NATS_GATEWAY_PASSWORD": "test-gateway-password",
	"NATS_DEBUG_PASSWORD":   "test-debug-password",
	"TLS_PEM_FILE":          "/etc/productwatch/tls.pem",
}

// loadCompose loads docker-compose.yml the way `docker compose` does, with
// env as the only environment (no .env file, not the test's own).
func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(list), cli.WithInterpolation(true))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, composeSecrets)
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func TestComposeRefusesMissingSecrets(t *testing.T) {
	for name := range composeSecrets {
		for _, how := range []string{"unset", "empty"} {
			t.Run(name+" "+how, func(t *testing.T) {
				env := maps.Clone(composeSecrets)
				if how == "unset" {
					delete(env, name)
				} else {
					env[name] = ""
				}
				_, err := loadCompose(t, env)
				if err == nil {
					t.Fatalf("docker-compose.yml loads with %s %s", name, how)
				}
				if !strings.Contains(err.Error(), name) {
					t.Errorf("the error does not name %s: %v", name, err)
				}
			})
		}
	}
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q (has %v)", name, slices.Sorted(maps.Keys(p.Services)))
	}
	return s
}

func env(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

func replicas(s types.ServiceConfig) int {
	if s.Deploy != nil && s.Deploy.Replicas != nil {
		return *s.Deploy.Replicas
	}
	return 1
}

// portOf returns the port of a listen address such as ":8080" or
// "0.0.0.0:9092".
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return n
}

// probeURL returns the URL a healthcheck GETs with the image's probe (or
// wget, in the third-party images).
func probeURL(t *testing.T, s types.ServiceConfig) *url.URL {
	t.Helper()
	if s.HealthCheck == nil || len(s.HealthCheck.Test) < 2 || s.HealthCheck.Test[0] != "CMD" {
		t.Fatalf("service %s: healthcheck %v, want an exec-form CMD", s.Name, s.HealthCheck)
	}
	target := s.HealthCheck.Test[len(s.HealthCheck.Test)-1]
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		t.Fatalf("service %s: healthcheck %v does not end in a URL", s.Name, s.HealthCheck.Test)
	}
	return u
}

func urlPort(t *testing.T, u *url.URL) int {
	t.Helper()
	n, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("URL %s has no port", u)
	}
	return n
}

func TestComposeServices(t *testing.T) {
	p := mustLoadCompose(t)
	image := checkDockerfile(readFile(t, "deploy/Dockerfile"))

	if got := replicas(service(t, p, "bridge")); got != 2 {
		t.Errorf("bridge replicas %d, want 2 (one leads, one stands by)", got)
	}
	if got := replicas(service(t, p, "gateway")); got != 3 {
		t.Errorf("gateway replicas %d, want 3", got)
	}
	for _, name := range []string{"bridge", "gateway"} {
		s := service(t, p, name)
		t.Run(name, func(t *testing.T) {
			if unknown := unknownEnv(t, name, slices.Sorted(maps.Keys(s.Environment))); len(unknown) > 0 {
				t.Errorf("sets %v, which %s does not read (see its -h)", unknown, name)
			}
			if len(s.Command) == 0 || !slices.Contains(image.files, s.Command[0]) {
				t.Errorf("command %v is not a program the image holds (%v)", s.Command, image.files)
			}
			if s.HealthCheck == nil || !slices.Contains(image.files, s.HealthCheck.Test[1]) {
				t.Errorf("healthcheck %v does not run a program the image holds", s.HealthCheck)
			}
			if s.Build == nil || s.Build.Dockerfile != "deploy/Dockerfile" {
				t.Errorf("build %+v, want deploy/Dockerfile", s.Build)
			}
			if env(s, "NATS_USER") != name {
				t.Errorf("NATS_USER %q, want %q", env(s, "NATS_USER"), name)
			}
			if want := composeSecrets["NATS_"+strings.ToUpper(name)+"_PASSWORD"]; env(s, "NATS_PASSWORD") != want {
				t.Errorf("NATS_PASSWORD is not NATS_%s_PASSWORD", strings.ToUpper(name))
			}
			db, err := url.Parse(env(s, "DATABASE_URL"))
			if err != nil {
				t.Fatalf("DATABASE_URL: %v", err)
			}
			if pw, _ := db.User.Password(); pw != composeSecrets["POSTGRES_PASSWORD"] || db.Hostname() != "postgres" {
				t.Errorf("DATABASE_URL %s does not reach the postgres service with POSTGRES_PASSWORD", db.Redacted())
			}
			checkNATSURL(t, p, env(s, "NATS_URL"))
			checkDependsOnHealthy(t, p, s, "postgres", "nats-1", "nats-2", "nats-3")
		})
	}

	bridge := service(t, p, "bridge")
	if env(bridge, "STREAM_REPLICAS") != "3" {
		t.Errorf("bridge STREAM_REPLICAS %q, want 3", env(bridge, "STREAM_REPLICAS"))
	}
	if u := probeURL(t, bridge); u.Path != "/readyz" || urlPort(t, u) != portOf(t, env(bridge, "METRICS_ADDR")) {
		t.Errorf("bridge healthcheck %s is not /readyz on METRICS_ADDR %s", u, env(bridge, "METRICS_ADDR"))
	}

	gw := service(t, p, "gateway")
	listen := portOf(t, env(gw, "LISTEN_ADDR"))
	if u := probeURL(t, gw); u.Path != "/readyz" || urlPort(t, u) != listen {
		t.Errorf("gateway healthcheck %s is not /readyz on LISTEN_ADDR %s", u, env(gw, "LISTEN_ADDR"))
	}
	if env(gw, "INSECURE_HTTP") != "true" {
		t.Error("gateway INSECURE_HTTP is not true: haproxy terminates TLS")
	}
	if env(gw, "METRICS_ADDR") != "0.0.0.0:9092" {
		t.Errorf("gateway METRICS_ADDR %q, want 0.0.0.0:9092", env(gw, "METRICS_ADDR"))
	}
	if env(gw, "API_TOKEN") != composeSecrets["API_TOKEN"] {
		t.Error("gateway API_TOKEN is not API_TOKEN")
	}
	if nw, ok := p.Networks["default"]; !ok || len(nw.Ipam.Config) != 1 || env(gw, "TRUSTED_PROXIES") != nw.Ipam.Config[0].Subnet {
		t.Errorf("gateway TRUSTED_PROXIES %q is not the compose network's subnet, where haproxy is", env(gw, "TRUSTED_PROXIES"))
	}
	if len(gw.Ports) > 0 {
		t.Errorf("gateway publishes %v: only haproxy should be reachable from outside", gw.Ports)
	}
	for _, port := range []int{listen, portOf(t, env(gw, "METRICS_ADDR")), portOf(t, env(bridge, "METRICS_ADDR"))} {
		if !slices.Contains(image.expose, port) {
			t.Errorf("port %d is not EXPOSEd by deploy/Dockerfile (%v)", port, image.expose)
		}
	}
	drain := durationEnv(t, gw, "DRAIN_WINDOW") + durationEnv(t, gw, "SHUTDOWN_TIMEOUT")
	if gw.StopGracePeriod == nil || time.Duration(*gw.StopGracePeriod) <= drain {
		t.Errorf("gateway stop_grace_period %v is not longer than DRAIN_WINDOW + SHUTDOWN_TIMEOUT (%v)", gw.StopGracePeriod, drain)
	}

	pg := service(t, p, "postgres")
	if pg.HealthCheck == nil || !slices.Contains(pg.HealthCheck.Test, "pg_isready") {
		t.Errorf("postgres healthcheck %v does not use pg_isready", pg.HealthCheck)
	}
	if env(pg, "POSTGRES_PASSWORD") != composeSecrets["POSTGRES_PASSWORD"] {
		t.Error("postgres POSTGRES_PASSWORD is not POSTGRES_PASSWORD")
	}
}

func durationEnv(t *testing.T, s types.ServiceConfig, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(env(s, name))
	if err != nil {
		t.Fatalf("%s %s: %v", s.Name, name, err)
	}
	return d
}

// checkNATSURL checks that a NATS_URL names all three NATS nodes at their
// client port.
func checkNATSURL(t *testing.T, p *types.Project, natsURL string) {
	t.Helper()
	var hosts []string
	for _, raw := range strings.Split(natsURL, ",") {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "nats" {
			t.Errorf("NATS_URL %q: %q is not a nats:// URL", natsURL, raw)
			continue
		}
		if u.User != nil {
			t.Errorf("NATS_URL %q carries credentials: use NATS_USER and NATS_PASSWORD", natsURL)
		}
		node := natsNode(t, p, u.Hostname())
		if urlPort(t, u) != node.Port {
			t.Errorf("NATS_URL %q: %s listens on %d", natsURL, u.Hostname(), node.Port)
		}
		hosts = append(hosts, u.Hostname())
	}
	if slices.Sort(hosts); !slices.Equal(hosts, []string{"nats-1", "nats-2", "nats-3"}) {
		t.Errorf("NATS_URL %q names %v, want the three nodes", natsURL, hosts)
	}
}

func checkDependsOnHealthy(t *testing.T, p *types.Project, s types.ServiceConfig, deps ...string) {
	t.Helper()
	for _, dep := range deps {
		d, ok := s.DependsOn[dep]
		if !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s does not wait for %s to be healthy (depends_on %+v)", s.Name, dep, d)
			continue
		}
		if hc := service(t, p, dep).HealthCheck; hc == nil || hc.Disable {
			t.Errorf("%s waits for %s to be healthy, which has no healthcheck", s.Name, dep)
		}
	}
}

// natsNode reads the configuration a NATS service of docker-compose.yml runs
// with, through nats-server's own configuration parser, with the service's
// environment (its passwords) in the process environment meanwhile.
func natsNode(t *testing.T, p *types.Project, name string) *server.Options {
	t.Helper()
	s := service(t, p, name)
	i := slices.Index(s.Command, "--config")
	if i < 0 || i+1 >= len(s.Command) {
		t.Fatalf("%s: command %v has no --config", name, s.Command)
	}
	confPath := s.Command[i+1]
	host := ""
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && strings.HasPrefix(confPath, v.Target+"/") {
			host = filepath.Join(v.Source, strings.TrimPrefix(confPath, v.Target+"/"))
		}
	}
	if host == "" {
		t.Fatalf("%s: no bind mount provides %s", name, confPath)
	}
	for k, v := range s.Environment {
		if v != nil {
			t.Setenv(k, *v)
		}
	}
	opts, err := server.ProcessConfigFile(host)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return opts
}

func TestComposeNATSCluster(t *testing.T) {
	p := mustLoadCompose(t)
	names := []string{"nats-1", "nats-2", "nats-3"}
	var servers []string
	for _, name := range names {
		opts := natsNode(t, p, name)
		servers = append(servers, opts.ServerName)
		if !opts.JetStream || opts.StoreDir == "" {
			t.Errorf("%s: JetStream %v, store %q: want JetStream on a volume", name, opts.JetStream, opts.StoreDir)
		}
		if data := slices.IndexFunc(service(t, p, name).Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && v.Target == opts.StoreDir
		}); data < 0 {
			t.Errorf("%s: JetStream's store %s is not on a named volume", name, opts.StoreDir)
		}
		if opts.Cluster.Name == "" || opts.Cluster.Port == 0 {
			t.Errorf("%s: no cluster", name)
		}
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.Host)
		}
		var want []string
		for _, other := range names {
			want = append(want, net.JoinHostPort(other, strconv.Itoa(opts.Cluster.Port)))
		}
		if slices.Sort(routes); !slices.Equal(routes, want) {
			t.Errorf("%s: routes %v, want %v", name, routes, want)
		}
		if u := probeURL(t, service(t, p, name)); urlPort(t, u) != opts.HTTPPort || u.Path != "/healthz" {
			t.Errorf("%s: healthcheck %s is not the monitoring port %d /healthz", name, u, opts.HTTPPort)
		}
		if opts.NoAuthUser != "" || len(opts.Users) == 0 || opts.Authorization != "" {
			t.Errorf("%s: anonymous clients are not refused (no_auth_user %q, %d users)", name, opts.NoAuthUser, len(opts.Users))
		}
		for _, u := range opts.Users {
			if want := composeSecrets["NATS_"+strings.ToUpper(u.Username)+"_PASSWORD"]; u.Password != want || want == "" {
				t.Errorf("%s: user %s's password is not NATS_%s_PASSWORD", name, u.Username, strings.ToUpper(u.Username))
			}
		}
		if got := userPermissions(opts); !slices.Equal(slices.Sorted(maps.Keys(got)), []string{"bridge", "debug", "gateway"}) {
			t.Errorf("%s: users %v, want bridge, debug, gateway", name, slices.Sorted(maps.Keys(got)))
		}
	}
	if slices.Sort(servers); !slices.Equal(servers, names) {
		t.Errorf("server names %v, want %v", servers, names)
	}
}

// permissions is one user's NATS permissions as sorted subject lists.
type permissions struct{ PubAllow, PubDeny, SubAllow, SubDeny []string }

func userPermissions(opts *server.Options) map[string]permissions {
	out := map[string]permissions{}
	sorted := func(s []string) []string { return slices.Sorted(slices.Values(s)) }
	for _, u := range opts.Users {
		var p permissions
		if perm := u.Permissions; perm != nil {
			if perm.Publish != nil {
				p.PubAllow, p.PubDeny = sorted(perm.Publish.Allow), sorted(perm.Publish.Deny)
			}
			if perm.Subscribe != nil {
				p.SubAllow, p.SubDeny = sorted(perm.Subscribe.Allow), sorted(perm.Subscribe.Deny)
			}
		}
		out[u.Username] = p
	}
	return out
}

// haproxyConfig is the part of haproxy.cfg the tests look at: each section
// ("frontend public", "backend gateways") with its lines.
type haproxyConfig map[string][]string

func parseHAProxy(src string) haproxyConfig {
	cfg := haproxyConfig{}
	section := ""
	for _, line := range strings.Split(src, "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			section = strings.Join(strings.Fields(line), " ")
			cfg[section] = nil
			continue
		}
		cfg[section] = append(cfg[section], strings.Join(strings.Fields(line), " "))
	}
	return cfg
}

// directive returns the lines of section that start with name.
func (c haproxyConfig) directive(section, name string) []string {
	var out []string
	for _, l := range c[section] {
		if l == name || strings.HasPrefix(l, name+" ") {
			out = append(out, l)
		}
	}
	return out
}

func TestComposeHAProxy(t *testing.T) {
	p := mustLoadCompose(t)
	hap := service(t, p, "haproxy")
	checkDependsOnHealthy(t, p, hap, "gateway")
	src := readFile(t, "deploy/haproxy/haproxy.cfg")
	cfg := parseHAProxy(src)

	mounted := false
	for _, v := range hap.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == "/usr/local/etc/haproxy/haproxy.cfg" &&
			filepath.ToSlash(v.Source) == filepath.ToSlash(mustAbs(t, filepath.Join(repoRoot, "deploy/haproxy/haproxy.cfg"))) {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("haproxy does not mount deploy/haproxy/haproxy.cfg at the image's config path: %+v", hap.Volumes)
	}

	// TLS: the certificate is the compose secret, HTTP/2 by ALPN.
	if len(hap.Secrets) != 1 {
		t.Fatalf("haproxy secrets %+v, want the TLS certificate", hap.Secrets)
	}
	certPath := path.Join("/run/secrets", hap.Secrets[0].Target)
	if secret := p.Secrets[hap.Secrets[0].Source]; secret.File != composeSecrets["TLS_PEM_FILE"] {
		t.Errorf("secret %s is file %q, want TLS_PEM_FILE", hap.Secrets[0].Source, secret.File)
	}
	tlsPort := 0
	for _, bind := range cfg.directive("frontend public", "bind") {
		if strings.Contains(bind, " ssl crt "+certPath) {
			if !strings.Contains(bind, "alpn h2,http/1.1") {
				t.Errorf("%q: no HTTP/2 by ALPN", bind)
			}
			tlsPort = portOf(t, strings.Fields(bind)[1])
		}
	}
	if tlsPort == 0 {
		t.Fatalf("frontend public has no bind with ssl crt %s: %v", certPath, cfg["frontend public"])
	}
	if !slices.ContainsFunc(hap.Ports, func(pc types.ServicePortConfig) bool { return int(pc.Target) == tlsPort }) {
		t.Errorf("haproxy's TLS port %d is not published (%+v)", tlsPort, hap.Ports)
	}
	if u := probeURL(t, hap); !slices.ContainsFunc(cfg.directive("frontend health", "bind"), func(b string) bool {
		return strings.HasSuffix(b, ":"+u.Port())
	}) || cfg.directive("frontend health", "monitor-uri "+u.Path) == nil {
		t.Errorf("haproxy healthcheck %s does not match frontend health %v", u, cfg["frontend health"])
	}

	backend := "backend " + strings.TrimPrefix(cfg.directive("frontend public", "default_backend")[0], "default_backend ")
	for _, want := range []string{"balance leastconn", "option httpchk", "http-check send meth GET uri /readyz", "http-check expect status 200"} {
		if cfg.directive(backend, want) == nil {
			t.Errorf("%s lacks %q", backend, want)
		}
	}
	if cfg.directive("defaults", "timeout tunnel") == nil {
		t.Error("no timeout tunnel: WebSockets would be cut by timeout client/server")
	}
	gw := service(t, p, "gateway")
	listen := portOf(t, env(gw, "LISTEN_ADDR"))
	slots := 0
	for _, l := range append(cfg.directive(backend, "server"), cfg.directive(backend, "server-template")...) {
		f := strings.Fields(l)
		addr := f[2]
		if f[0] == "server-template" {
			n, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			slots += n
			addr = f[3]
		} else {
			slots++
		}
		host, port, _ := net.SplitHostPort(addr)
		if _, ok := p.Services[host]; !ok || host != "gateway" || port != strconv.Itoa(listen) {
			t.Errorf("%q does not point at the gateway service's LISTEN_ADDR port %d", l, listen)
		}
	}
	if slots < replicas(gw) {
		t.Errorf("%d server slots for %d gateways", slots, replicas(gw))
	}

	// haproxy's own check of the file, where haproxy is installed (make
	// cluster installs it), with a throw-away certificate in place of the
	// secret.
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed: its own configuration check skipped")
	}
	dir := t.TempDir()
	pemFile := filepath.Join(dir, "tls.pem")
	writeTestPEM(t, pemFile)
	cfgFile := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgFile, []byte(strings.ReplaceAll(src, certPath, pemFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", cfgFile).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// writeTestPEM writes a self-signed certificate and its key in one PEM file,
// the form haproxy's crt takes.
func writeTestPEM(t *testing.T, file string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	if err := os.WriteFile(file, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestComposeNoEmptySecret checks every service's environment: nothing that
// names a credential is empty, and no credential is written into the file.
func TestComposeNoEmptySecret(t *testing.T) {
	p := mustLoadCompose(t)
	secretValues := map[string]bool{}
	for k, v := range composeSecrets {
		if k != "TLS_PEM_FILE" {
			secretValues[v] = true
		}
	}
	for _, s := range p.Services {
		for k, v := range s.Environment {
			if !secretName.MatchString(k) {
				continue
			}
			if v == nil || *v == "" {
				t.Errorf("%s: %s is empty", s.Name, k)
			} else if !secretValues[*v] {
				t.Errorf("%s: %s is not one of the secrets given to compose: a credential written into the file?", s.Name, k)
			}
		}
	}
	raw := readFile(t, "docker-compose.yml")
	for k := range composeSecrets {
		if !strings.Contains(raw, "${"+k+":?") {
			t.Errorf("docker-compose.yml does not require %s with ${%s:?…}", k, k)
		}
	}
}
