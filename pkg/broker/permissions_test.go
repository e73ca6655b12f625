package broker

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var update = flag.Bool("update", false, "rewrite deploy/nats/permissions.conf from Roles")

// permissionsConfPath is the snippet other nats-server configurations include.
const permissionsConfPath = "../../deploy/nats/permissions.conf"

// startLocked starts an embedded server with the test users and no anonymous
// access, as the bridge runs it.
func startLocked(t *testing.T) *server.Server {
	t.Helper()
	srv, err := StartEmbedded(EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Users: testUsers()})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	shutdownOnCleanup(t, srv)
	return srv
}

// asyncErrors collects the errors the server sends a connection
// asynchronously (permission violations among them).
type asyncErrors struct {
	mu   sync.Mutex
	errs []error
}

func (a *asyncErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.errs = append(a.errs, err)
}

// waitFor waits up to five seconds for an error containing text.
func (a *asyncErrors) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		for _, err := range a.errs {
			if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(text)) {
				a.mu.Unlock()
				return
			}
		}
		got := slices.Clone(a.errs)
		a.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no asynchronous error containing %q within 5s; got %v", text, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connectAs connects to srv as creds, collecting its asynchronous errors.
func connectAs(t *testing.T, srv *server.Server, creds Credentials) (*nats.Conn, *asyncErrors) {
	t.Helper()
	errs := &asyncErrors{}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(creds.User, creds.Password), nats.ErrorHandler(errs.handler))
	if err != nil {
		t.Fatalf("connect as %s: %v", creds.User, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// TestAnonymousRefused: the server the bridge embeds accepts no client
// without credentials, nor with a wrong password.
func TestAnonymousRefused(t *testing.T) {
	t.Parallel()
	srv := startLocked(t)
	tests := []struct {
		name string
		opts []nats.Option
	}{
		{"no credentials", nil},
		{"wrong password", []nats.Option{nats.UserInfo(GatewayUser, "wrong")}},
		{"unknown user", []nats.Option{nats.UserInfo("nobody", "nobody-password")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(srv.ClientURL(), tt.opts...)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("err = %v, want an authorization violation", err)
			}
		})
	}
}

// TestConnectRefusedCredentials: broker.Connect fails at once, naming the
// settings to check, when the server refuses the credentials; the right
// ones connect.
func TestConnectRefusedCredentials(t *testing.T) {
	t.Parallel()
	srv := startLocked(t)
	logger := slog.New(slog.DiscardHandler)
	began := time.Now()
	nc, err := Connect(srv.ClientURL(), "test", Credentials{User: GatewayUser, Password: "wrong"}, logger, Hooks{})
	if err == nil {
		nc.Close()
		t.Fatal("Connect with a wrong password: nil error")
	}
	if !strings.Contains(err.Error(), "NATS_USER") || !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("err = %v, want an authorization error naming NATS_USER", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("refusal took %v; it should not be retried", d)
	}
	nc, err = Connect(srv.ClientURL(), "test", roleCredentials(GatewayUser), logger, Hooks{})
	if err != nil {
		t.Fatalf("Connect with the gateway's credentials: %v", err)
	}
	defer nc.Close()
	if !nc.IsConnected() {
		t.Errorf("status %v", nc.Status())
	}
}

// setUpStream creates PRODUCTS as the bridge does and publishes one change
// on product.1.
func setUpStream(t *testing.T, srv *server.Server) jetstream.JetStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nc, errs := connectAs(t, srv, roleCredentials(BridgeUser))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := EnsureStream(ctx, js, DefaultStreamOptions())
	if err != nil {
		t.Fatalf("bridge: %v (async errors %v)", err, errs.errs)
	}
	// Again: the second start updates the existing stream.
	if _, err := EnsureStream(ctx, js, DefaultStreamOptions()); err != nil {
		t.Fatalf("bridge, second EnsureStream: %v", err)
	}
	msg := &nats.Msg{Subject: "product.1", Data: []byte(`{"seq":1}`), Header: nats.Header{jetstream.MsgIDHeader: []string{"1"}}}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("bridge publish: %v", err)
	}
	got, err := stream.GetLastMsgForSubject(ctx, "product.1")
	if err != nil || string(got.Data) != `{"seq":1}` {
		t.Fatalf("bridge reads the last message of product.1: %v", err)
	}
	if _, err := stream.GetMsg(ctx, 1); err != nil {
		t.Fatalf("bridge reads message 1: %v", err)
	}
	return js
}

// TestBridgePermissions: the bridge publishes and manages PRODUCTS, and
// nothing else.
func TestBridgePermissions(t *testing.T) {
	t.Parallel()
	srv := startLocked(t)
	js := setUpStream(t, srv)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	nc, errs := connectAs(t, srv, roleCredentials(BridgeUser))
	if _, err := nc.SubscribeSync("product.>"); err != nil {
		t.Fatal(err)
	}
	errs.waitFor(t, `permissions violation for subscription to "product.>"`)

	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if err := js.DeleteStream(short, StreamName); err == nil {
		t.Error("the bridge deleted the stream")
	}
	if _, err := js.CreateStream(short, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.>"}}); err == nil {
		t.Error("the bridge created another stream")
	}
}

// TestGatewayPermissions: the gateway receives product changes but cannot
// publish one (the forged-event attack of issue 9), nor use JetStream.
func TestGatewayPermissions(t *testing.T) {
	t.Parallel()
	srv := startLocked(t)
	setUpStream(t, srv)

	gw, errs := connectAs(t, srv, roleCredentials(GatewayUser))
	sub, err := gw.SubscribeSync("product.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Flush(); err != nil {
		t.Fatalf("gateway flush: %v", err)
	}

	// The forged event: rejected by the server, seen by nobody.
	if err := gw.Publish("product.1", []byte(`{"seq":999999,"version":999999}`)); err != nil {
		t.Fatal(err)
	}
	errs.waitFor(t, `permissions violation for publish to "product.1"`)

	// A real change published by the bridge reaches the gateway, and is
	// the first message it gets.
	bridge, _ := connectAs(t, srv, roleCredentials(BridgeUser))
	if err := bridge.Publish("product.2", []byte("real")); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil || msg.Subject != "product.2" || string(msg.Data) != "real" {
		t.Fatalf("gateway got %v, %v; want the bridge's product.2 and not the forged product.1", msg, err)
	}

	// No JetStream API either: the purge request is refused.
	js, err := jetstream.New(gw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := js.Stream(ctx, StreamName); err == nil {
		t.Error("the gateway read the stream's info")
	}
	errs.waitFor(t, `permissions violation for publish to "$JS.API.STREAM.INFO.PRODUCTS"`)
}

// TestDebugPermissions: the debug user watches (sub, stream info, get, a
// consumer like `nats stream view`'s) but cannot change the stream.
func TestDebugPermissions(t *testing.T) {
	t.Parallel()
	srv := startLocked(t)
	setUpStream(t, srv)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	nc, errs := connectAs(t, srv, roleCredentials(DebugUser))
	sub, err := nc.SubscribeSync("product.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatalf("debug: stream info: %v", err)
	}
	if n := stream.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("stream info: %d messages, want 1", n)
	}
	if m, err := stream.GetMsg(ctx, 1); err != nil || string(m.Data) != `{"seq":1}` {
		t.Errorf("debug: get message 1: %v", err)
	}
	if m, err := stream.GetLastMsgForSubject(ctx, "product.1"); err != nil || string(m.Data) != `{"seq":1}` {
		t.Errorf("debug: last message of product.1: %v", err)
	}
	// An ordered consumer, as a viewer of the stream would create.
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("debug: ordered consumer: %v", err)
	}
	if m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || string(m.Data()) != `{"seq":1}` {
		t.Errorf("debug: read through the ordered consumer: %v", err)
	}

	// Changes: each refused, the stream unchanged.
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if err := stream.Purge(short()); err == nil {
		t.Error("the debug user purged the stream")
	}
	errs.waitFor(t, `permissions violation for publish to "$JS.API.STREAM.PURGE.PRODUCTS"`)
	if err := js.DeleteStream(short(), StreamName); err == nil {
		t.Error("the debug user deleted the stream")
	}
	errs.waitFor(t, `permissions violation for publish to "$JS.API.STREAM.DELETE.PRODUCTS"`)
	if err := stream.DeleteMsg(short(), 1); err == nil {
		t.Error("the debug user deleted a message")
	}
	errs.waitFor(t, `permissions violation for publish to "$JS.API.STREAM.MSG.DELETE.PRODUCTS"`)
	if _, err := js.UpdateStream(short(), StreamConfig(StreamOptions{DuplicateWindow: time.Second, MaxAge: time.Second, History: 1, Replicas: 1})); err == nil {
		t.Error("the debug user updated the stream")
	}
	errs.waitFor(t, `permissions violation for publish to "$JS.API.STREAM.UPDATE.PRODUCTS"`)
	if err := nc.Publish("product.1", []byte("forged")); err != nil {
		t.Fatal(err)
	}
	errs.waitFor(t, `permissions violation for publish to "product.1"`)

	info, err := stream.Info(ctx)
	if err != nil || info.State.Msgs != 1 || info.Config.MaxAge != DefaultStreamOptions().MaxAge {
		t.Errorf("the stream changed: %v, %+v", err, info)
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a message reached product.> although no one may publish but the bridge: %s %q", m.Subject, m.Data)
	}
}

// TestPermissionsConf: deploy/nats/permissions.conf is PermissionsConf(),
// and a nats-server configuration that includes deploy/nats/auth.conf (which
// includes it) defines exactly the users and permissions of Roles, with the
// passwords from the environment.
func TestPermissionsConf(t *testing.T) {
	if *update {
		if err := os.WriteFile(permissionsConfPath, []byte(PermissionsConf()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(permissionsConfPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != PermissionsConf() {
		t.Fatalf("%s disagrees with Roles in permissions.go; run go test ./pkg/broker -run TestPermissionsConf -update", permissionsConfPath)
	}

	for _, r := range Roles() {
		t.Setenv("NATS_"+strings.ToUpper(r.User)+"_PASSWORD", r.User+"-from-env")
	}
	// nats-server includes relative to the including file: the two files
	// next to a server configuration, as a deployment has them.
	dir := t.TempDir()
	for _, name := range []string{"auth.conf", "permissions.conf"} {
		data, err := os.ReadFile(filepath.Join("../../deploy/nats", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(conf, []byte("port: -1\ninclude \"auth.conf\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server cannot load auth.conf: %v", err)
	}
	if opts.NoAuthUser != "" {
		t.Errorf("no_auth_user = %q: anonymous clients would be let in", opts.NoAuthUser)
	}
	if len(opts.Users) != len(Roles()) {
		t.Fatalf("auth.conf defines %d users, want %d", len(opts.Users), len(Roles()))
	}
	for _, u := range opts.Users {
		r, ok := RoleOf(u.Username)
		if !ok {
			t.Errorf("auth.conf defines user %q, which is no productwatch role", u.Username)
			continue
		}
		if u.Password != r.User+"-from-env" {
			t.Errorf("user %s: password not taken from NATS_%s_PASSWORD", u.Username, strings.ToUpper(r.User))
		}
		want := r.Permissions.serverPermissions()
		if !sameSubjects(u.Permissions.Publish, want.Publish) || !sameSubjects(u.Permissions.Subscribe, want.Subscribe) {
			t.Errorf("user %s: auth.conf gives publish %+v subscribe %+v, Roles says %+v %+v", u.Username,
				u.Permissions.Publish, u.Permissions.Subscribe, want.Publish, want.Subscribe)
		}
	}
}

// sameSubjects compares two subject permissions, nil meaning none.
func sameSubjects(a, b *server.SubjectPermission) bool {
	if a == nil || b == nil {
		return (a == nil || len(a.Allow)+len(a.Deny) == 0) && (b == nil || len(b.Allow)+len(b.Deny) == 0)
	}
	return slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Deny, b.Deny)
}

// TestRoles: user names and configuration variables are distinct, and
// every role allows something explicitly (an empty allow list would allow
// everything not denied).
func TestRoles(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Roles() {
		if seen[r.User] || seen[r.ConfVar] {
			t.Errorf("role %s: name or variable %s repeated", r.User, r.ConfVar)
		}
		seen[r.User], seen[r.ConfVar] = true, true
		p := r.Permissions
		if len(p.PublishAllow) == 0 && !slices.Contains(p.PublishDeny, ">") {
			t.Errorf("role %s may publish anything not denied", r.User)
		}
		if len(p.SubscribeAllow) == 0 && !slices.Contains(p.SubscribeDeny, ">") {
			t.Errorf("role %s may subscribe to anything not denied", r.User)
		}
		if got, ok := RoleOf(r.User); !ok || got.ConfVar != r.ConfVar {
			t.Errorf("RoleOf(%s) = %+v, %v", r.User, got, ok)
		}
	}
	if _, ok := RoleOf("admin"); ok {
		t.Error("RoleOf(admin) found a role")
	}
}
