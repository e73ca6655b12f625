package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestJSClient runs the JS client's tests (gateway/jstest, node's built-in
// test runner) against the real programs: PostgreSQL and NATS from
// testenv, the real bridge, and the real gateway binary, which the node
// tests start, stop and restart themselves. Node 20+ is needed; the one npm
// dependency (ws, a WebSocket for Node 20, pinned by package-lock.json) is
// installed with `npm ci` when missing.
func TestJSClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the JS client's tests need Node.js 20 or later")
	}
	dir, err := filepath.Abs("jstest")
	if err != nil {
		t.Fatal(err)
	}
	installJSDeps(t, dir)
	gatewayBin := testenv.Program(t, "gateway")
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	startBridge(t, pg, n)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "productwatch.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PW_GATEWAY_BIN="+gatewayBin, "DATABASE_URL="+pg.DSN, "NATS_URL="+n.URL, "PW_TOKEN="+testToken,
		"NATS_USER="+n.Gateway.User, "NATS_PASSWORD="+n.Gateway.Password) // the gateways the JS tests start
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("node --test:\n%s", out.String())
	if err != nil {
		t.Fatalf("the JS client's tests failed: %v", err)
	}
}

// installJSDeps runs `npm ci` in dir when its node_modules is missing.
func installJSDeps(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws", "package.json")); err == nil {
		return
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found: it installs the JS tests' one dependency (ws)")
	}
	t.Logf("installing the JS tests' dependencies: npm ci in %s", dir)
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
}
