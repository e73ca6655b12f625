package broker

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// logFile is where a test's server logs: writes to an *os.File are safe
// from the server's goroutines, and String reads what has been written.
type logFile struct{ f *os.File }

func newLogFile(t *testing.T) logFile {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "nats-*.log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return logFile{f}
}

func (l logFile) String() string {
	b, _ := os.ReadFile(l.f.Name())
	return string(b)
}

// takePort listens on a random loopback port for the duration of the test
// and returns its address.
func takePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// shutdownOnCleanup stops srv when the test ends.
func shutdownOnCleanup(t *testing.T, srv *server.Server) {
	t.Helper()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
}

// harness is the user the tests of this package connect as when they are
// not testing permissions: allowed everything.
var harness = Credentials{User: "harness", Password: "harness-password"}

// testUsers returns the users of a test server: the harness and
// productwatch's roles, each role's password its user name followed by
// "-password".
func testUsers() []EmbeddedUser {
	users := []EmbeddedUser{{Credentials: harness}}
	for _, r := range Roles() {
		users = append(users, r.WithPassword(r.User+"-password"))
	}
	return users
}

// roleCredentials returns the credentials testUsers gives user.
func roleCredentials(user string) Credentials {
	return Credentials{User: user, Password: user + "-password"}
}

// checkJetStream connects to srv as the harness and runs a JetStream round
// trip on it.
func checkJetStream(t *testing.T, srv *server.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(harness.User, harness.Password))
	if err != nil {
		t.Fatalf("connect to %s: %v", srv.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PING", Subjects: []string{"ping.>"}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	ack, err := js.Publish(ctx, "ping.1", []byte("pong"))
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	msg, err := stream.GetMsg(ctx, ack.Sequence)
	if err != nil || string(msg.Data) != "pong" {
		t.Fatalf("get message %d: %v, %q", ack.Sequence, err, msg.Data)
	}
}

func TestStartEmbeddedFallsBackWhenPortTaken(t *testing.T) {
	t.Parallel()
	taken := takePort(t)
	logs := newLogFile(t)
	srv, err := StartEmbedded(EmbeddedOptions{
		Listen:             taken,
		StoreDir:           t.TempDir(),
		Logger:             slog.New(slog.NewTextHandler(logs.f, &slog.HandlerOptions{Level: slog.LevelDebug})),
		FallbackToFreePort: true,
		Users:              testUsers(),
	})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	shutdownOnCleanup(t, srv)

	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		t.Fatalf("Addr() = %v", srv.Addr())
	}
	_, takenPort, _ := net.SplitHostPort(taken)
	if strconv.Itoa(addr.Port) == takenPort || !addr.IP.IsLoopback() {
		t.Errorf("listening on %v, want 127.0.0.1 and another port than %s", addr, takenPort)
	}
	if !srv.JetStreamEnabled() {
		t.Error("JetStream not enabled")
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, srv.ClientURL()) {
		t.Errorf("no warning naming %s in the log:\n%s", srv.ClientURL(), out)
	}
	if out := logs.String(); !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "component=nats-server") {
		t.Errorf("server notices not routed at Debug:\n%s", out)
	}
	if out := logs.String(); strings.Contains(out, "level=INFO") || strings.Contains(out, "Plaintext passwords") {
		t.Errorf("the server logged at Info (its notices belong at Debug) or warned about plain passwords:\n%s", out)
	}
	checkJetStream(t, srv)
}

func TestStartEmbeddedPortTakenWithoutFallback(t *testing.T) {
	t.Parallel()
	began := time.Now()
	srv, err := StartEmbedded(EmbeddedOptions{Listen: takePort(t), StoreDir: t.TempDir(), Users: testUsers()})
	if err == nil {
		shutdownOnCleanup(t, srv)
		t.Fatal("StartEmbedded on a taken port without fallback: nil error")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("err = %v, want it to wrap EADDRINUSE", err)
	}
	if elapsed := time.Since(began); elapsed > 2*time.Second {
		t.Errorf("failing took %v; a taken port should fail at once", elapsed)
	}
}

func TestStartEmbeddedRandomPort(t *testing.T) {
	t.Parallel()
	for _, listen := range []string{"127.0.0.1:-1", "127.0.0.1:0"} {
		t.Run(listen, func(t *testing.T) {
			t.Parallel()
			srv, err := StartEmbedded(EmbeddedOptions{Listen: listen, StoreDir: t.TempDir(), Users: testUsers()})
			if err != nil {
				t.Fatalf("StartEmbedded: %v", err)
			}
			shutdownOnCleanup(t, srv)
			if port := srv.Addr().(*net.TCPAddr).Port; port == 0 || port == server.DEFAULT_PORT {
				t.Errorf("port = %d, want a random one", port)
			}
			checkJetStream(t, srv)
		})
	}
}

func TestStartEmbeddedBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts EmbeddedOptions
	}{
		{name: "no store dir", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", Users: testUsers()}},
		{name: "no port", opts: EmbeddedOptions{Listen: "127.0.0.1", StoreDir: t.TempDir(), Users: testUsers()}},
		{name: "port out of range", opts: EmbeddedOptions{Listen: "127.0.0.1:70000", StoreDir: t.TempDir(), Users: testUsers()}},
		{name: "store dir is a file", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: "/dev/null", Users: testUsers()}},
		{name: "no users", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir()}},
		{name: "user without password", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(),
			Users: []EmbeddedUser{{Credentials: Credentials{User: "gateway"}}}}},
		{name: "user without name", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(),
			Users: []EmbeddedUser{{Credentials: Credentials{Password: "x"}}}}},
		{name: "user twice", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(),
			Users: append(testUsers(), EmbeddedUser{Credentials: harness})}},
		{name: "unknown no-auth user", opts: EmbeddedOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(),
			Users: testUsers(), NoAuthUser: "nobody"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, err := StartEmbedded(tt.opts)
			if err == nil {
				shutdownOnCleanup(t, srv)
				t.Fatal("nil error")
			}
			t.Logf("error as expected: %v", err)
		})
	}
}

// TestServerLoggerLevels checks the level each server.Logger method logs at,
// and that debug and trace output is dropped unless the logger wants it.
func TestServerLoggerLevels(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		minLevel  slog.Level
		call      func(l server.Logger)
		wantLevel string // "" when nothing may be logged
	}{
		{"notice hidden", slog.LevelInfo, func(l server.Logger) { l.Noticef("n %d", 1) }, ""},
		{"notice at debug", slog.LevelDebug, func(l server.Logger) { l.Noticef("n %d", 1) }, "level=DEBUG msg=\"n 1\""},
		{"warn", slog.LevelInfo, func(l server.Logger) { l.Warnf("w") }, "level=WARN"},
		{"error", slog.LevelInfo, func(l server.Logger) { l.Errorf("e") }, "level=ERROR"},
		{"fatal", slog.LevelInfo, func(l server.Logger) { l.Fatalf("f") }, "level=ERROR msg=f fatal=true"},
		{"debug hidden", slog.LevelInfo, func(l server.Logger) { l.Debugf("d") }, ""},
		{"debug shown", slog.LevelDebug, func(l server.Logger) { l.Debugf("d") }, "level=DEBUG"},
		{"trace hidden at debug", slog.LevelDebug, func(l server.Logger) { l.Tracef("t") }, ""},
		{"trace shown", levelTrace, func(l server.Logger) { l.Tracef("t") }, "level=DEBUG-4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			logger := &serverLogger{logger: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: tt.minLevel}))}
			tt.call(logger)
			switch {
			case tt.wantLevel == "" && out.Len() != 0:
				t.Errorf("logged %q, want nothing", out.String())
			case tt.wantLevel != "" && !strings.Contains(out.String(), tt.wantLevel):
				t.Errorf("logged %q, want %q", out.String(), tt.wantLevel)
			}
		})
	}
}

// TestStartEmbeddedNoAuthUser: with NoAuthUser (test harnesses only), a
// client without credentials acts as that user, and the server does not
// warn about its plain password.
func TestStartEmbeddedNoAuthUser(t *testing.T) {
	t.Parallel()
	logs := newLogFile(t)
	srv, err := StartEmbedded(EmbeddedOptions{
		Listen:     "127.0.0.1:-1",
		StoreDir:   t.TempDir(),
		Logger:     slog.New(slog.NewTextHandler(logs.f, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Users:      testUsers(),
		NoAuthUser: harness.User,
	})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	shutdownOnCleanup(t, srv)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("anonymous connect with a no-auth user: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish("product.1", []byte("x")); err != nil || nc.Flush() != nil || nc.LastError() != nil {
		t.Errorf("the harness could not publish: %v %v", err, nc.LastError())
	}
	if out := logs.String(); strings.Contains(out, "Plaintext") {
		t.Errorf("warned about the no-auth user's plain password:\n%s", out)
	}
}
