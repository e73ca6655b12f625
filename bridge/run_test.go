package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestRunEmbedded runs the bridge as `make run` does: NATS embedded and
// locked down (the gateway's and debug's passwords given, the bridge's own
// left to chance), the database migrated at start, probes answering, a
// change published, a clean stop on cancel that leaves no goroutine behind.
func TestRunEmbedded(t *testing.T) {
	pg := testenv.Postgres(t)
	metricsAddr, natsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL = pg.DSN, ""
	cfg.NATSEmbedListen, cfg.NATSStoreDir, cfg.MetricsAddr = natsAddr, t.TempDir(), metricsAddr
	cfg.NATSAuth = broker.Credentials{}
	cfg.NATSEmbedAuth = broker.EmbeddedPasswords{Gateway: "gateway-secret-0123456789", Debug: "debug-secret-0123456789"}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testenv.Logger(t)) }()

	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = json.Unmarshal(body, &ready)
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge not ready after 30s: %+v %v", ready, err)
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for _, name := range []string{"database", "migrations", "nats"} {
		if ready.Checks[name] != "ok" {
			t.Errorf("check %s = %q", name, ready.Checks[name])
		}
	}
	// A change goes through: the listener, the relay and the publisher run.
	testenv.SeedProducts(t, pg.DB, 1)
	testenv.WaitFor(t, 30*time.Second, "the change published", func() (bool, string) {
		m, err := testenv.ScrapeMetrics("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		n := m.Sum("productwatch_bridge_changes_published_total")
		return n >= 1, fmt.Sprintf("published %v", n)
	})

	// Who may connect to the embedded server.
	url := "nats://" + natsAddr
	for _, tc := range []struct {
		name  string
		opts  []nats.Option
		admit bool
	}{
		{"anonymous", nil, false},
		{"bridge without its random password", []nats.Option{nats.UserInfo(broker.BridgeUser, "")}, false},
		{"gateway", []nats.Option{nats.UserInfo(broker.GatewayUser, cfg.NATSEmbedAuth.Gateway)}, true},
		{"debug", []nats.Option{nats.UserInfo(broker.DebugUser, cfg.NATSEmbedAuth.Debug)}, true},
		{"debug, wrong password", []nats.Option{nats.UserInfo(broker.DebugUser, cfg.NATSEmbedAuth.Gateway)}, false},
	} {
		nc, err := nats.Connect(url, tc.opts...)
		if err == nil {
			nc.Close()
		}
		if (err == nil) != tc.admit {
			t.Errorf("%s: connect = %v, want admitted %v", tc.name, err, tc.admit)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	testenv.WaitGoroutines(t, before, 10*time.Second)
}

// TestConfigNATSAuth: the NATS credentials settings, and the combinations
// that make no sense.
func TestConfigNATSAuth(t *testing.T) {
	t.Setenv("NATS_USER", "bridge")
	t.Setenv("NATS_PASSWORD", "from-env")
	cfg, err := loadConfig(nil)
	if err != nil || cfg.NATSAuth != (broker.Credentials{User: "bridge", Password: "from-env"}) {
		t.Errorf("loadConfig = %+v, %v", cfg.NATSAuth, err)
	}
	for _, args := range [][]string{
		{"-nats-url", "", "-nats-user", "gateway"},
		{"-nats-url", "", "-nats-user", "debug"},
		{"-nats-url", "nats://127.0.0.1:4222", "-nats-embed-gateway-password", "x"},
		{"-nats-url", "nats://127.0.0.1:4222", "-nats-embed-debug-password", "x"},
	} {
		if _, err := loadConfig(args); err == nil {
			t.Errorf("loadConfig(%q) accepted", args)
		}
	}
}

func TestConfig(t *testing.T) {
	t.Setenv("NATS_URL", "nats://127.0.0.1:4222")
	cfg, err := loadConfig([]string{"-metrics-addr", "127.0.0.1:1"})
	if err != nil || cfg.NATSURL != "nats://127.0.0.1:4222" || cfg.MetricsAddr != "127.0.0.1:1" {
		t.Errorf("loadConfig = %+v, %v", cfg, err)
	}
	if _, err := loadConfig([]string{"-database-url", ""}); err == nil {
		t.Error("empty DATABASE_URL accepted")
	}
}
