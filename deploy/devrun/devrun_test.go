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
	return testenv.FreeAddr(t)
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
	// The nats CLI the banner's line runs, when `make tools` has installed
	// it into the repository's bin/ (bridge/natscli_test.go installs it too).
	cliInstalled := false
	if repoCLI, err := filepath.Abs("../../bin/nats"); err == nil {
		if out, err := exec.Command(repoCLI, "--version").Output(); err == nil && strings.TrimSpace(string(out)) == natsCLIVersion {
			if err := os.Symlink(repoCLI, filepath.Join(binDir, "nats")); err != nil {
				t.Fatal(err)
			}
			cliInstalled = true
		}
	}
	gatewayAddr := freePort(t)
	stateDir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "devrun"), "-bin", binDir)
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+pg.DSN,
		"LISTEN_ADDR="+gatewayAddr,
		"METRICS_ADDR="+freePort(t),
		"DEVRUN_STATE_DIR="+stateDir,
		"NATS_URL=", "API_TOKEN=", "NATS_USER=", "NATS_PASSWORD=",
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

	// Read the banner, to its last line.
	banner := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if sc.Text() == "productwatch is ready." {
				banner <- b.String()
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var text string
	select {
	case text = <-banner:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("no banner within 2 minutes; logs:\n%s", <-logs)
	}
	match := regexp.MustCompile(`curl -k -X POST (\S+)/products -H 'Authorization: Bearer ([0-9a-f]+)'`).FindStringSubmatch(text)
	natsLine := regexp.MustCompile(`(?m)^  (.+) sub 'product\.>'$`).FindStringSubmatch(text)
	if match == nil || natsLine == nil {
		t.Fatalf("the banner lacks the curl or the nats line:\n%s", text)
	}
	gatewayURL, token := match[1], match[2]
	if !strings.HasSuffix(gatewayURL, portSuffix(gatewayAddr)) {
		t.Errorf("banner names %s, want port of %s", gatewayURL, gatewayAddr)
	}
	if strings.Contains(text, "not installed") == cliInstalled {
		t.Errorf("the banner's install hint does not match the CLI being installed (%v):\n%s", cliInstalled, text)
	}
	// The NATS credentials are kept private, like the API token.
	for _, name := range []string{"api-token", natsCredentialsFile, natsContextFile} {
		info, err := os.Stat(filepath.Join(stateDir, name))
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want mode 0600", name, err, info.Mode().Perm())
		}
	}

	// The banner's nats sub line, pasted into a shell, shows the change
	// made with its curl line.
	var sub *exec.Cmd
	var subOut testenv.LockedBuffer
	if cliInstalled {
		sub = exec.Command("sh", "-c", natsLine[1]+" sub 'product.>' --count 1")
		sub.Env = append(os.Environ(), "HOME="+t.TempDir(), "NATS_CONTEXT=")
		sub.Stdout, sub.Stderr = &subOut, &subOut
		if err := sub.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Process.Kill() })
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(subOut.String(), "Subscribing on product.>") {
			if time.Now().After(deadline) {
				t.Fatalf("%s sub did not subscribe within 30s:\n%s", natsLine[1], subOut.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	} else {
		t.Logf("bin/nats %s is not installed (make tools): the banner's nats line is not run", natsCLIVersion)
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
	if sub != nil {
		waited := make(chan error, 1)
		go func() { waited <- sub.Wait() }()
		select {
		case err := <-waited:
			if err != nil || !strings.Contains(subOut.String(), `Received on "product.`) || !strings.Contains(subOut.String(), `"action":"INSERT"`) {
				t.Errorf("the banner's nats sub line (%v) did not show the new product:\n%s", err, subOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the banner's nats sub line printed no change within 30s:\n%s", subOut.String())
		}
	}

	// Ctrl-C stops everything, and the launcher exits cleanly.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// Read the log to its end before Wait, which closes the pipe (os/exec):
	// waiting first lost the last lines now and then.
	waited := make(chan error, 1)
	go func() {
		out := <-logs
		logs <- out
		waited <- cmd.Wait()
	}()
	select {
	case err := <-waited:
		out := <-logs
		if err != nil {
			t.Errorf("devrun exited with %v; logs:\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if last := lines[len(lines)-1]; !strings.Contains(last, "everything stopped") {
			t.Errorf("the log's last line is %q, want one saying everything stopped", last)
		}
		if strings.Contains(out, "Server is ready") {
			t.Error("nats-server's own \"Server is ready\" reached the log: the banner is the only ready line")
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

// TestNATSCredentialsAreKept: generated once, kept with mode 0600 (made so
// again if loosened), regenerated when the file is unusable.
func TestNATSCredentialsAreKept(t *testing.T) {
	dir := t.TempDir()
	first, err := loadNATSCredentials(dir)
	if err != nil || len(first.Bridge) < 16 || len(first.Gateway) < 16 || len(first.Debug) < 16 ||
		first.Bridge == first.Gateway || first.Gateway == first.Debug {
		t.Fatalf("loadNATSCredentials = %+v, %v", first, err)
	}
	path := filepath.Join(dir, natsCredentialsFile)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := loadNATSCredentials(dir)
	if err != nil || second != first {
		t.Errorf("second load = %+v, %v; want the kept %+v", second, err, first)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("mode after loading: %v, %v; want 0600", info.Mode().Perm(), err)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	third, err := loadNATSCredentials(dir)
	if err != nil || third == first || len(third.Debug) < 16 {
		t.Errorf("after a broken file: %+v, %v; want new credentials", third, err)
	}
}
