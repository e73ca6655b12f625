package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestReadyHandler(t *testing.T) {
	tests := []struct {
		name       string
		checks     map[string]Check
		draining   bool
		wantStatus int
		wantChecks map[string]string
	}{
		{name: "no checks", wantStatus: 200, wantChecks: map[string]string{}},
		{name: "all ok", checks: map[string]Check{"database": func(context.Context) error { return nil }},
			wantStatus: 200, wantChecks: map[string]string{"database": "ok"}},
		{name: "one failing", checks: map[string]Check{
			"database": func(context.Context) error { return nil },
			"nats":     func(context.Context) error { return errors.New("disconnected") },
		}, wantStatus: 503, wantChecks: map[string]string{"database": "ok", "nats": "disconnected"}},
		{name: "slow check times out", checks: map[string]Check{"slow": func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}}, wantStatus: 503, wantChecks: map[string]string{"slow": "context deadline exceeded"}},
		{name: "draining", draining: true, wantStatus: 503, wantChecks: map[string]string{"shutdown": "shutting down"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := New(50 * time.Millisecond)
			for name, check := range tc.checks {
				p.Add(name, check)
			}
			if tc.draining {
				p.SetDraining()
			}
			rec := httptest.NewRecorder()
			p.ReadyHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			var res Result
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.wantStatus || len(res.Checks) != len(tc.wantChecks) {
				t.Fatalf("= %d %s", rec.Code, rec.Body)
			}
			for k, v := range tc.wantChecks {
				if res.Checks[k] != v {
					t.Errorf("check %s = %q, want %q", k, res.Checks[k], v)
				}
			}
			if (res.Status == "ready") != (tc.wantStatus == 200) {
				t.Errorf("status %q with code %d", res.Status, rec.Code)
			}
		})
	}
}

func TestLiveAndMetrics(t *testing.T) {
	p := New(0)
	p.SetDraining() // liveness does not depend on readiness
	rec := httptest.NewRecorder()
	p.LiveHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"ok"`) {
		t.Errorf("/healthz = %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	MetricsHandler(NewRegistry()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "process_resident_memory_bytes") {
		t.Errorf("/metrics = %d", rec.Code)
	}
}

// TestTerseReadyHandler: the public answer says ready or not, never why.
func TestTerseReadyHandler(t *testing.T) {
	p := New(50 * time.Millisecond)
	p.Add("database", func(context.Context) error { return errors.New("dial tcp 10.1.2.3:5432: connection refused") })
	rec := httptest.NewRecorder()
	p.TerseReadyHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != 503 || strings.TrimSpace(rec.Body.String()) != `{"status":"not ready"}` {
		t.Errorf("= %d %s", rec.Code, rec.Body)
	}
	p = New(50 * time.Millisecond)
	rec = httptest.NewRecorder()
	p.TerseReadyHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"status":"ready"}` {
		t.Errorf("= %d %s", rec.Code, rec.Body)
	}
}
