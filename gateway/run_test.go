package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestProbesAndMetrics(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	if r := g.do(t, request{Method: http.MethodGet, Path: "/healthz"}); r.Status != http.StatusOK {
		t.Fatalf("/healthz = %d %s", r.Status, r.Body)
	}
	if r := g.do(t, request{Method: http.MethodGet, Path: "/readyz"}); r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"status":"ready"}` {
		t.Fatalf("public /readyz = %d %s", r.Status, r.Body)
	}
	r := g.opsGet(t, "/readyz")
	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(r.Body, &ready); err != nil || r.Status != http.StatusOK || ready.Checks["database"] != "ok" || ready.Checks["migrations"] != "ok" {
		t.Fatalf("/readyz = %d %s", r.Status, r.Body)
	}
	g.do(t, request{Method: http.MethodGet, Path: "/products/12345"})
	g.do(t, request{Method: http.MethodGet, Path: "/no/such/route"})
	m := g.opsGet(t, "/metrics")
	for _, want := range []string{
		`productwatch_http_requests_total{method="GET",route="/products/:id",status="404"} 1`,
		`productwatch_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`productwatch_http_request_duration_seconds_bucket{method="GET",route="/readyz",status="200",le="+Inf"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if r := g.do(t, request{Method: http.MethodGet, Path: "/metrics", NoAuth: true}); r.Status != http.StatusNotFound {
		t.Errorf("public /metrics = %d, want 404 (metrics are on METRICS_ADDR)", r.Status)
	}
}

// TestDatabaseDown: with the database unreachable the gateway is alive but
// not ready, and requests get 503 with a JSON error, not a hang or a 500.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	deadAddr := testenv.FreeAddr(t) // nothing listens there
	g := newTestGateway(t, nil)
	db, err := openDB("postgres://postgres@"+deadAddr+"/x?sslmode=disable&connect_timeout=2", 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg := Config{APIToken: testToken, MaxBodyBytes: 64 << 10}
	down, err := newGateway(cfg, db, nil, newResyncQueue(), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	g.srv.Config.Handler = down.handler // same validator and client, dead database

	if r := g.do(t, request{Method: http.MethodGet, Path: "/healthz"}); r.Status != http.StatusOK {
		t.Errorf("/healthz = %d", r.Status)
	}
	if r := g.do(t, request{Method: http.MethodGet, Path: "/readyz"}); r.Status != http.StatusServiceUnavailable || strings.TrimSpace(string(r.Body)) != `{"status":"not ready"}` {
		t.Errorf("/readyz = %d %s, want 503 without details", r.Status, r.Body)
	}
	for _, req := range []request{
		{Method: http.MethodGet, Path: "/products/1"},
		{Method: http.MethodGet, Path: "/products"},
		{Method: http.MethodPost, Path: "/products", Body: macbook},
	} {
		if r := g.do(t, req); r.Status != http.StatusServiceUnavailable || r.errorCode() != codeUnavailable {
			t.Errorf("%s %s = %d %s", req.Method, req.Path, r.Status, r.Body)
		}
	}
}

// TestServeTLS runs the real server: HTTPS with a self-signed certificate,
// HTTP/2 by ALPN, migrations applied at start, graceful stop on cancel.
func TestServeTLS(t *testing.T) {
	t.Parallel()
	base, stop := servePage(t)
	client := h2Client()
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /readyz over %s = %d %s, want HTTP/2 and 200", resp.Proto, resp.StatusCode, body)
	}
	if len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].VerifyHostname("localhost") != nil {
		t.Error("development certificate does not name localhost")
	}

	returned := make(chan error, 1)
	go func() { returned <- stop() }()
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := client.Get(base + "/healthz"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{name: "cert without key", args: []string{"-tls-cert", "c.pem"}},
		{name: "insecure with cert", args: []string{"-insecure-http", "-tls-cert", "c.pem", "-tls-key", "k.pem"}},
		{name: "tiny body limit", args: []string{"-max-body-bytes", "10"}},
		{name: "bad env bool", env: map[string]string{"INSECURE_HTTP": "maybe"}},
		{name: "unknown flag", args: []string{"-nope"}},
		{name: "conflate after zero", env: map[string]string{"WS_CONFLATE_AFTER": "0s"}},
		{name: "conflate max events zero", args: []string{"-ws-conflate-max-events", "0"}},
		{name: "conflate max bytes negative", env: map[string]string{"WS_CONFLATE_MAX_BYTES": "-1"}},
		{name: "no database connections", env: map[string]string{"DB_MAX_CONNS": "0"}},
		{name: "negative write coalescing", env: map[string]string{"WS_WRITE_COALESCE": "-1ms"}},
		{name: "write coalescing over a second", args: []string{"-ws-write-coalesce", "2s"}},
		{name: "negative coalescing rate", env: map[string]string{"WS_WRITE_COALESCE_ABOVE": "-5"}},
		{name: "coalescing rate not a number", env: map[string]string{"WS_WRITE_COALESCE_ABOVE": "NaN"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if _, err := loadConfig(tc.args); err == nil {
				t.Error("accepted")
			}
		})
	}
}
