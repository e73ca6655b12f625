package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) {
	code := testenv.Main(m)
	removeBridgeBuild() // the bridge binary of the end-to-end tests (harness_test.go)
	os.Exit(code)
}

// TestRunEmbedded runs the bridge as `make run` does: NATS embedded, the
// database migrated at start, probes answering, a clean stop on cancel.
func TestRunEmbedded(t *testing.T) {
	pg := testenv.Postgres(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL = pg.DSN, ""
	cfg.NATSEmbedListen, cfg.NATSStoreDir, cfg.MetricsAddr = "127.0.0.1:0", t.TempDir(), metricsAddr
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
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %v", err)
	}
	resp.Body.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
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
