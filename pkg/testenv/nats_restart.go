package testenv

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/broker"
)

// restartBindTimeout bounds how long Restart retries binding the old port
// while the kernel still holds it.
const restartBindTimeout = 10 * time.Second

// Restart shuts the embedded NATS server down (clients are disconnected,
// JetStream flushes its store) and starts a new one on the same host:port
// with the same JetStream directory and users, so that clients reconnect to the same
// URL and find their streams again. It returns once the new server accepts
// clients, and fails the test if it cannot start. It must not be called
// concurrently with itself or with readers of n.Server.
//
// When NATS_URL names an external server there is nothing the test process
// can restart: Restart skips the test then, which is the only case in which
// it skips. Tests that need a restart should check n.Server == nil and skip
// before they start any work.
func (n *NATSServer) Restart(t testing.TB) {
	t.Helper()
	n.RestartWith(t, nil)
}

// RestartWith is [NATSServer.Restart] with whileDown, when not nil, called
// after the old server has shut down and before the new one starts: the
// outage lasts as long as whileDown runs (a test can wait there until the
// code under test has noticed it, and write meanwhile).
func (n *NATSServer) RestartWith(t testing.TB, whileDown func()) {
	t.Helper()
	if n.Server == nil {
		// NATS_URL names an external server: the test process cannot
		// restart it, so the test cannot run here.
		t.Skip("testenv: NATS_URL is an external server, which tests cannot restart")
	}
	addr, ok := n.Server.Addr().(*net.TCPAddr)
	if !ok || addr == nil {
		t.Fatalf("testenv: restart nats: the server at %s has no TCP listener", n.URL)
	}
	listen := addr.String()
	n.Server.Shutdown()
	n.Server.WaitForShutdown()
	if whileDown != nil {
		whileDown()
	}

	deadline := time.Now().Add(restartBindTimeout)
	for {
		opts := n.opts
		opts.Listen = listen
		srv, err := broker.StartEmbedded(opts)
		if err == nil {
			n.Server = srv
			if got := srv.ClientURL(); got != n.URL {
				t.Fatalf("testenv: restart nats: new server's URL is %s, want %s", got, n.URL)
			}
			return
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			t.Fatalf("testenv: restart nats on %s: %v", listen, err)
		}
		time.Sleep(50 * time.Millisecond) // the port is still held: try again
	}
}
