package deploy

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
)

// startComposeNATS runs one real nats-server with the configuration of
// compose's nats-1 (users, permissions, JetStream), on a random loopback
// port, without the cluster and the monitoring port.
func startComposeNATS(t *testing.T) string {
	t.Helper()
	opts := natsNode(t, mustLoadCompose(t), "nats-1")
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	return srv.ClientURL()
}

// connectAs connects as user, collecting the asynchronous errors the server
// sends (permission violations) in errs.
func connectAs(t *testing.T, url, user string, errs chan<- error) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo(user, composeSecrets["NATS_"+upper(user)+"_PASSWORD"]),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// waitPermissionViolation waits up to 5 s for the server to refuse
// something.
func waitPermissionViolation(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s: got %v, want a permissions violation", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: allowed", what)
	}
}

// deniedCtx bounds a JetStream request the server is expected to refuse:
// the refusal arrives as an asynchronous error, and the request itself just
// gets no answer.
func deniedCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestComposeNATSPermissions runs compose's NATS users against a real
// nats-server: what the bridge, the gateways and the debug user must be able
// to do works, and what they must not do is refused.
func TestComposeNATSPermissions(t *testing.T) {
	url := startComposeNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Error("anonymous client connected")
	}
	if nc, err := nats.Connect(url, nats.UserInfo("bridge", "wrong")); err == nil {
		nc.Close()
		t.Error("bridge connected with a wrong password")
	}

	// The bridge: the stream as the bridge makes it, publishes with
	// Nats-Msg-Id, reads the last message of a subject.
	bridgeErrs := make(chan error, 8)
	bridgeNC := connectAs(t, url, "bridge", bridgeErrs)
	bridgeJS, err := jetstream.New(bridgeNC)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := broker.EnsureStream(ctx, bridgeJS, broker.DefaultStreamOptions())
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if _, err := broker.EnsureStream(ctx, bridgeJS, broker.DefaultStreamOptions()); err != nil {
		t.Fatalf("bridge, updating the stream: %v", err)
	}

	gatewayErrs := make(chan error, 8)
	gatewayNC := connectAs(t, url, "gateway", gatewayErrs)
	sub, err := gatewayNC.SubscribeSync("product.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := gatewayNC.Flush(); err != nil {
		t.Fatal(err)
	}

	publish := func(seq int) {
		t.Helper()
		msg := &nats.Msg{Subject: "product.1", Data: []byte(`{"seq":` + strconv.Itoa(seq) + `}`),
			Header: nats.Header{jetstream.MsgIDHeader: []string{strconv.Itoa(seq)}}}
		if _, err := bridgeJS.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("bridge publishes: %v", err)
		}
	}
	publish(1)
	if _, err := stream.GetLastMsgForSubject(ctx, "product.1"); err != nil {
		t.Errorf("bridge reads the last message of product.1: %v", err)
	}
	if err := stream.Purge(deniedCtx(t)); err == nil {
		t.Error("bridge purged the stream")
	}
	waitPermissionViolation(t, bridgeErrs, "bridge purging the stream")

	// The gateway receives, and cannot publish a change.
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != `{"seq":1}` {
		t.Fatalf("gateway receives product.1: %v", err)
	}
	if err := gatewayNC.Publish("product.1", []byte(`{"seq":999999}`)); err != nil {
		t.Fatal(err)
	}
	waitPermissionViolation(t, gatewayErrs, "gateway publishing product.1")
	if _, err := gatewayNC.SubscribeSync("$JS.API.>"); err != nil {
		t.Fatal(err)
	}
	waitPermissionViolation(t, gatewayErrs, "gateway subscribing to the JetStream API")

	// The debug user reads, and can neither publish nor purge nor delete.
	debugErrs := make(chan error, 8)
	debugNC := connectAs(t, url, "debug", debugErrs)
	debugJS, err := jetstream.New(debugNC)
	if err != nil {
		t.Fatal(err)
	}
	debugStream, err := debugJS.Stream(ctx, broker.StreamName)
	if err != nil {
		t.Fatalf("debug: stream info: %v", err)
	}
	if msg, err := debugStream.GetMsg(ctx, 1); err != nil || msg.Subject != "product.1" {
		t.Errorf("debug: stream get 1: %v", err)
	}
	if _, err := debugStream.GetLastMsgForSubject(ctx, "product.1"); err != nil {
		t.Errorf("debug: stream get --last-for product.1: %v", err)
	}
	cons, err := debugStream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("debug: stream view (ordered consumer): %v", err)
	}
	if m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || string(m.Data()) != `{"seq":1}` {
		t.Errorf("debug: stream view reads the first change: %v", err)
	}
	if err := debugStream.Purge(deniedCtx(t)); err == nil {
		t.Error("debug purged the stream")
	}
	waitPermissionViolation(t, debugErrs, "debug purging the stream")
	if err := debugStream.DeleteMsg(deniedCtx(t), 1); err == nil {
		t.Error("debug deleted a message")
	}
	waitPermissionViolation(t, debugErrs, "debug deleting a message")
	if err := debugJS.DeleteStream(deniedCtx(t), broker.StreamName); err == nil {
		t.Error("debug deleted the stream")
	}
	waitPermissionViolation(t, debugErrs, "debug deleting the stream")
	if err := debugNC.Publish("product.1", []byte(`{"seq":999999}`)); err != nil {
		t.Fatal(err)
	}
	waitPermissionViolation(t, debugErrs, "debug publishing product.1")
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("the stream holds %d messages, want only the bridge's one", info.State.Msgs)
	}
}
