// Package broker holds productwatch's NATS helpers: the embedded server,
// the connection, and the JetStream stream configuration.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// DefaultListen is where [StartEmbedded] listens when EmbeddedOptions.Listen
// is empty: NATS's standard client port, on the loopback interface only.
const DefaultListen = "127.0.0.1:4222"

// embeddedReadyTimeout bounds how long StartEmbedded waits for the server to
// accept clients.
const embeddedReadyTimeout = 10 * time.Second

// levelTrace is the slog level of nats-server's trace output (every protocol
// message), one step below Debug so that a debug logger does not get it.
const levelTrace = slog.LevelDebug - 4

// EmbeddedOptions configures [StartEmbedded].
type EmbeddedOptions struct {
	// Listen is the host:port clients connect to. Empty means
	// [DefaultListen]; port 0 or -1 means a random free port.
	Listen string

	// StoreDir is the directory JetStream keeps its streams in. Required.
	StoreDir string

	// Logger receives the server's log: notices at Debug (its "Server is
	// ready" is not the program's readiness, which the program logs
	// itself), warnings at Warn,
	// errors and fatal errors at Error, debug output at Debug and protocol
	// traces one level below Debug, each only if the logger enables that
	// level. nil discards everything.
	Logger *slog.Logger

	// FallbackToFreePort makes StartEmbedded listen on a random free port of
	// the same host, and log a warning with the URL, when Listen's port is
	// taken (by the machine's own NATS service, say). Without it a taken
	// port is an error.
	FallbackToFreePort bool

	// Users are the only clients the server accepts, each with its
	// password and permissions (usually [Role.WithPassword] of [Roles]).
	// Required: StartEmbedded refuses to run a server anyone can use.
	Users []EmbeddedUser

	// NoAuthUser names the user of Users that clients connecting without
	// credentials act as. Empty (the default, and what the bridge uses):
	// such clients are refused. Only test harnesses set it.
	NoAuthUser string
}

// EmbeddedUser is a user of the embedded server.
type EmbeddedUser struct {
	Credentials
	// Permissions of the user; nil allows every subject, which only a test
	// harness's own user should have.
	Permissions *Permissions
}

// WithPassword returns r's user with password, for [EmbeddedOptions].Users.
func (r Role) WithPassword(password string) EmbeddedUser {
	p := r.Permissions
	return EmbeddedUser{Credentials: Credentials{User: r.User, Password: password}, Permissions: &p}
}

// serverUsers checks users and converts them to nats-server's form.
func serverUsers(users []EmbeddedUser, noAuthUser string) ([]*server.User, error) {
	if len(users) == 0 {
		return nil, errors.New("no users: the server would accept anyone (give EmbeddedOptions.Users)")
	}
	out := make([]*server.User, 0, len(users))
	seen := make(map[string]bool, len(users))
	for _, u := range users {
		switch {
		case u.User == "":
			return nil, errors.New("a user without a name")
		case u.Password == "":
			return nil, fmt.Errorf("user %q has no password", u.User)
		case seen[u.User]:
			return nil, fmt.Errorf("user %q given twice", u.User)
		}
		seen[u.User] = true
		// The server compares bcrypt hashes as well as plain passwords,
		// and warns about plain ones. The hash never leaves this process,
		// so its cost buys nothing: the cheapest keeps connects fast. The
		// no-auth user keeps its plain password: the server logs such
		// clients in by comparing the stored password with itself.
		password := u.Password
		if u.User != noAuthUser {
			hash, err := bcrypt.GenerateFromPassword([]byte(u.Password), bcrypt.MinCost)
			if err != nil {
				return nil, fmt.Errorf("user %q: %w", u.User, err)
			}
			password = string(hash)
		}
		su := &server.User{Username: u.User, Password: password}
		if u.Permissions != nil {
			su.Permissions = u.Permissions.serverPermissions()
		}
		out = append(out, su)
	}
	if noAuthUser != "" && !seen[noAuthUser] {
		return nil, fmt.Errorf("NoAuthUser %q is not one of the users", noAuthUser)
	}
	return out, nil
}

// StartEmbedded runs a NATS server with JetStream inside this process and
// returns it once it accepts client connections (within ten seconds, else it
// is shut down and an error returned). The server ignores signals: shutting it
// down is the caller's job, with Shutdown followed by WaitForShutdown. Its
// URL is srv.ClientURL().
//
// A taken port is detected by binding it before the server starts, so the
// error wraps syscall.EADDRINUSE; a process grabbing the port between that
// check and the server's own bind makes the start fail instead of falling
// back.
func StartEmbedded(opts EmbeddedOptions) (*server.Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("start embedded nats: StoreDir is required for JetStream")
	}
	listen := opts.Listen
	if listen == "" {
		listen = DefaultListen
	}
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("start embedded nats: listen address %q: bad port", listen)
	}
	users, err := serverUsers(opts.Users, opts.NoAuthUser)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	fellBack := false
	if port <= 0 {
		// nats-server reads 0 as its default port 4222; -1 is random.
		port = server.RANDOM_PORT
	} else if err := probeListen(listen); err != nil {
		if !opts.FallbackToFreePort || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("start embedded nats: %w", err)
		}
		port = server.RANDOM_PORT
		fellBack = true
	}

	adapter := &serverLogger{logger: logger.With("component", "nats-server")}
	if opts.NoAuthUser != "" {
		// Only the no-auth user's password is plain (see serverUsers):
		// known, and not worth a warning on every start.
		adapter.demote = plainPasswordsWarning
	}
	debug := logger.Enabled(context.Background(), slog.LevelDebug)
	trace := logger.Enabled(context.Background(), levelTrace)
	srv, err := server.NewServer(&server.Options{
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		Debug:      debug,
		Trace:      trace,
		Users:      users,
		NoAuthUser: opts.NoAuthUser,
	})
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: %w", err)
	}
	srv.SetLoggerV2(adapter, debug, trace, false)
	srv.Start()

	if err := waitReady(srv, adapter, embeddedReadyTimeout); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("start embedded nats on %s: %w", listen, err)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("start embedded nats on %s: JetStream is not enabled", listen)
	}
	if fellBack {
		logger.Warn("nats: port taken, embedded server listens on a free port instead",
			"requested", listen, "url", srv.ClientURL())
	}
	return srv, nil
}

// probeListen binds addr and releases it, to learn whether it is free.
func probeListen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}

// waitReady waits until srv accepts clients, giving up early when the server
// reported a fatal error (it cannot become ready then; ReadyForConnections
// alone would wait out the whole timeout).
func waitReady(srv *server.Server, adapter *serverLogger, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if srv.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		if msg := adapter.firstFatal(); msg != "" {
			return errors.New(msg)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready for connections after %v", timeout)
		}
	}
}

// serverLogger routes nats-server's log to slog. It implements server.Logger
// and is safe for concurrent use, as the server logs from many goroutines.
//
// Fatalf logs at Error and does not exit: the server is a library here, and
// a fatal error during start is returned by StartEmbedded instead.
type serverLogger struct {
	logger *slog.Logger
	demote string // a warning logged at Debug instead; set before use

	mu    sync.Mutex // guards fatal
	fatal string     // the first Fatalf message
}

var _ server.Logger = (*serverLogger)(nil)

// Noticef logs at Debug: the server's start-up chatter (its version, its
// ports, "Server is ready") is not what the user of a productwatch program
// needs to see; the program logs what matters itself.
func (l *serverLogger) Noticef(format string, v ...any) { l.log(slog.LevelDebug, format, v) }

// plainPasswordsWarning is nats-server's warning about users whose password
// is not a bcrypt hash.
const plainPasswordsWarning = "Plaintext passwords detected, use nkeys or bcrypt"

// Warnf logs at Warn, or at Debug when it is the demoted warning.
func (l *serverLogger) Warnf(format string, v ...any) {
	if l.demote != "" && format == l.demote {
		l.log(slog.LevelDebug, format, v)
		return
	}
	l.log(slog.LevelWarn, format, v)
}

// Errorf logs at Error.
func (l *serverLogger) Errorf(format string, v ...any) { l.log(slog.LevelError, format, v) }

// Fatalf logs at Error and remembers the message for StartEmbedded.
func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	if l.fatal == "" {
		l.fatal = msg
	}
	l.mu.Unlock()
	l.logger.Error(msg, "fatal", true)
}

// Debugf logs at Debug.
func (l *serverLogger) Debugf(format string, v ...any) { l.log(slog.LevelDebug, format, v) }

// Tracef logs one level below Debug.
func (l *serverLogger) Tracef(format string, v ...any) { l.log(levelTrace, format, v) }

// log formats and logs the message if the logger wants its level.
func (l *serverLogger) log(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !l.logger.Enabled(ctx, level) {
		return
	}
	l.logger.Log(ctx, level, fmt.Sprintf(format, v...))
}

// firstFatal returns the first message passed to Fatalf, or "".
func (l *serverLogger) firstFatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}
