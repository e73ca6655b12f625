package main

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestRunLeavesNoGoroutines runs the whole gateway (Run) with a subscribed
// WebSocket client and the pprof listener, cancels it, and checks that Run
// returned only after everything it started had stopped: the socket's
// goroutines, the drain's closing handshakes, the hub, the re-syncer and
// the debug server. Not parallel: it counts the process's goroutines.
func TestRunLeavesNoGoroutines(t *testing.T) {
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL = pg.DSN, n.URL
	cfg.NATSAuth = broker.Credentials{User: n.Gateway.User, Password: n.Gateway.Password}
	cfg.ListenAddr, cfg.MetricsAddr, cfg.DebugAddr = testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	cfg.InsecureHTTP, cfg.APIToken = true, testToken
	cfg.DrainWindow, cfg.ShutdownTimeout = 100*time.Millisecond, 5*time.Second

	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testenv.Logger(t)) }()
	testenv.WaitUntil(t, 30*time.Second, "the gateway to be ready", func() bool {
		resp, err := http.Get("http://" + cfg.MetricsAddr + "/readyz")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if resp, err := http.Get("http://" + cfg.DebugAddr + "/debug/pprof/"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pprof index: %v", err)
	} else {
		resp.Body.Close()
	}

	dialCtx, stopDial := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopDial()
	ws, _, err := websocket.Dial(dialCtx, "ws://"+cfg.ListenAddr+"/websocket", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(dialCtx, websocket.MessageText, []byte(`{"command":"subscribe","productIDs":[1,2],"snapshot":true}`)); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(dialCtx); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("first answer: %s", msg)
	}

	cancel()
	// The drain closes the socket with 1001; the client answers the close.
	if _, _, err := ws.Read(dialCtx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("read after shutdown = %v, want close 1001", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	testenv.WaitGoroutines(t, before, 10*time.Second)
}
