package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestQuickStart is `make run` as a user meets it: build the programs, start
// the launcher, wait for the banner, paste its curl line (in Go), stop with
// Ctrl-C. The database is a fresh test database given as DATABASE_URL.
func TestQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the programs")
	}
	pg := testenv.Postgres(t)
	binDir := t.TempDir()
	for _, prog := range []string{"bridge", "gateway", "deploy/devrun"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, filepath.Base(prog)), "./"+prog)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", prog, err, out)
		}
	}
	gatewayAddr := freePort(t)
	cmd := exec.Command(filepath.Join(binDir, "devrun"), "-bin", binDir)
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+pg.DSN,
		"LISTEN_ADDR="+gatewayAddr,
		"METRICS_ADDR="+freePort(t),
		"DEVRUN_STATE_DIR="+t.TempDir(),
		"NATS_URL=", "API_TOKEN=",
	)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := make(chan string, 1)
	go func() {
		data, _ := io.ReadAll(stderr)
		logs <- string(data)
	}()

	// Read the banner up to the curl line.
	curlLine := regexp.MustCompile(`curl -k -X POST (\S+)/products -H 'Authorization: Bearer ([0-9a-f]+)'`)
	banner := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := curlLine.FindStringSubmatch(sc.Text()); m != nil {
				banner <- m
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var match []string
	select {
	case match = <-banner:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("no banner within 2 minutes; logs:\n%s", <-logs)
	}
	gatewayURL, token := match[1], match[2]
	if !strings.HasSuffix(gatewayURL, portSuffix(gatewayAddr)) {
		t.Errorf("banner names %s, want port of %s", gatewayURL, gatewayAddr)
	}

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the development certificate, as curl -k
		ForceAttemptHTTP2: true,
	}}
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/products",
		strings.NewReader(`{"manufacturer":"Apple","productName":"MacBook Pro","pricePerUnit":"500EUR","unitsAvailable":6}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.ProtoMajor != 2 {
		t.Fatalf("POST via the banner's curl line = %s %d %s", resp.Proto, resp.StatusCode, body)
	}

	// Ctrl-C stops everything, and the launcher exits cleanly.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("devrun exited with %v; logs:\n%s", err, <-logs)
		}
	case <-time.After(time.Minute):
		t.Fatal("devrun did not stop within a minute of SIGINT")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := (&net.Dialer{}).DialContext(ctx, "tcp", gatewayAddr); err == nil {
		t.Error("the gateway still listens after devrun stopped")
	}
}

func portSuffix(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return ":" + port
}

func TestAPITokenIsKept(t *testing.T) {
	t.Setenv("API_TOKEN", "")
	dir := t.TempDir()
	first, err := apiToken(dir)
	if err != nil || len(first) < 32 {
		t.Fatalf("apiToken = %q, %v", first, err)
	}
	second, err := apiToken(dir)
	if err != nil || second != first {
		t.Errorf("second apiToken = %q, %v; want the kept %q", second, err, first)
	}
	t.Setenv("API_TOKEN", "given")
	if got, _ := apiToken(dir); got != "given" {
		t.Errorf("API_TOKEN not honoured: %q", got)
	}
}

func TestFreeAddrFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got, err := freeAddr(ln.Addr().String())
	if err != nil || got == ln.Addr().String() || !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("freeAddr(taken) = %q, %v", got, err)
	}
}
