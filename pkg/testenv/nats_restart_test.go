package testenv

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
)

// TestNATSRestart restarts the embedded server under a connected client: the
// client sees the outage, reconnects to the same URL, and finds the stream
// and its message again.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	ns := NATS(t)
	if ns.Server == nil {
		t.Skip("NATS_URL is an external server, which a test cannot restart")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	nc, js := ConnectJS(t, ns.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RESTART", Subjects: []string{"restart.*"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "restart.1", []byte("before")); err != nil {
		t.Fatal(err)
	}
	old := ns.Server

	sawOutage := false
	ns.RestartWith(t, func() {
		deadline := time.Now().Add(10 * time.Second)
		for nc.IsConnected() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		sawOutage = !nc.IsConnected()
	})
	if !sawOutage {
		t.Error("the client stayed connected while the server was down")
	}
	if ns.Server == old || !ns.Server.Running() {
		t.Fatal("Restart did not replace the server with a running one")
	}
	if _, err := js.Publish(ctx, "restart.1", []byte("after")); err != nil {
		t.Fatalf("publish after the restart: %v", err)
	}
	for seq, want := range map[uint64]string{1: "before", 2: "after"} {
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil || string(msg.Data) != want {
			t.Errorf("message %d = %v, %v; want %q", seq, msg, err, want)
		}
	}

	ns.Restart(t) // a second restart, without a pause, also works
	if _, err := js.Publish(ctx, "restart.1", []byte("again")); err != nil {
		t.Fatalf("publish after the second restart: %v", err)
	}
}

// TestNATSUsers: NATS gives the test its users; anonymous clients act as the
// harness on NATS and are refused on NATSLocked; a restarted server keeps
// the users.
func TestNATSUsers(t *testing.T) {
	t.Parallel()
	ns := NATSLocked(t)
	if ns.Server == nil {
		t.Skip("NATS_URL is an external server, whose users testenv does not make")
	}
	if nc, err := nats.Connect(ns.URL); err == nil {
		nc.Close()
		t.Error("NATSLocked let an anonymous client in")
	}
	for _, creds := range []broker.Credentials{ns.Bridge, ns.Gateway, ns.Debug, ns.Harness} {
		if creds.User == "" || len(creds.Password) < 16 {
			t.Errorf("credentials %q: no user or a short password", creds.User)
		}
		ns.Connect(t, creds).Close()
	}
	ns.Restart(t)
	ns.Connect(t, ns.Gateway).Close()

	open := NATS(t)
	nc := open.Connect(t, broker.Credentials{}) // anonymous: the harness
	if err := nc.Publish("product.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil || nc.LastError() != nil {
		t.Errorf("the harness could not publish: %v %v", err, nc.LastError())
	}
}

// TestFreeAddr: the address is on loopback, below the ephemeral range when
// there is one, and can be listened on.
func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t)
	host, portText, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr = %q, %v", addr, err)
	}
	port, _ := strconv.Atoi(portText)
	if low, ok := ephemeralLow(); ok && low > 10000 && (port < 10000 || port >= low) {
		t.Errorf("port %d is not below the ephemeral range starting at %d", port, low)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	ln.Close()
}
