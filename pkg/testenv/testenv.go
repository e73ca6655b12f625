// Package testenv gives integration tests real dependencies: a fresh,
// migrated PostgreSQL database per test ([Postgres]) and a NATS server with
// JetStream ([NATS]), never mocks.
//
// A package that uses [Postgres] declares
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
//
// so that what the package's tests created together (a template database,
// perhaps a private PostgreSQL cluster) is removed when they finish.
//
// # Which PostgreSQL server
//
// In order of preference:
//
//   - PRODUCTWATCH_TEST_PG=private: a private cluster, even when another
//     server is available (to test without touching a shared server, or to
//     check the private path);
//   - DATABASE_URL, when set: that server; its user needs CREATEDB;
//   - the machine's server at 127.0.0.1:5432 ([pgserver.LocalDSN]), when it
//     answers;
//   - otherwise a private cluster: [pgserver.StartPrivate] in a temporary
//     directory with fsync, synchronous_commit, full_page_writes and
//     wal_init_zero off, started once per test process and stopped by
//     [Main].
//
// Any other value of PRODUCTWATCH_TEST_PG than "" or "private" is an error.
//
// Every database is named pwtest_<pid>_<random>, so parallel tests and test
// binaries of different packages (separate processes, which go test runs in
// parallel) never share one. A test binary killed before [Main] returns (a
// panic, a -timeout) leaves its databases, or its private cluster, behind.
//
// # Which NATS server
//
// NATS_URL when set (tests then share it and must use names of their own;
// NATS_USER and NATS_PASSWORD are then every role's credentials); otherwise
// an embedded server per call of [NATS] or [NATSLocked], with productwatch's
// users (bridge, gateway, debug: [broker.Roles]) on random passwords, and a
// harness user for the test itself.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/schema"
)

// modeEnv names the environment variable that forces a private cluster.
const modeEnv = "PRODUCTWATCH_TEST_PG"

// namePrefix starts the name of every database testenv creates.
const namePrefix = "pwtest_"

// setupTimeout bounds the one-off setup (a private cluster's initdb and start,
// the template's migration) and teardown.
const setupTimeout = 2 * time.Minute

// perTestTimeout bounds creating or dropping one test's database.
const perTestTimeout = time.Minute

// PG is one test's database. It is dropped when the test ends.
type PG struct {
	// DSN connects to the database, as the user the environment's server
	// DSN names.
	DSN string
	// Name is the database's name.
	Name string
	// DB is an open pool on the database; it is closed when the test ends.
	DB *sql.DB
}

// NATSServer is a NATS server with JetStream for one test. (It cannot be
// called NATS: that is the function returning it.)
type NATSServer struct {
	// URL is what clients connect to. It carries no credentials.
	URL string
	// Server is the embedded server, shut down when the test ends; nil when
	// NATS_URL named an external one. [NATSServer.Restart] replaces it.
	Server *server.Server

	// Bridge, Gateway and Debug are the credentials of productwatch's NATS
	// users on this server, with the permissions of [broker.Roles]. Give
	// them to the program under test (cfg.NATSAuth = n.Gateway), so that
	// the test runs with the permissions the program has in production.
	// With NATS_URL they are all NATS_USER and NATS_PASSWORD from the
	// environment (empty when unset).
	Bridge, Gateway, Debug broker.Credentials

	// Harness is a user allowed every subject, for what a test does
	// around the code under test (publishing a foreign message, reading the
	// stream, purging). On a server from [NATS], clients connecting without
	// credentials act as this user; on one from [NATSLocked] they are
	// refused. With NATS_URL it equals Bridge.
	Harness broker.Credentials

	// opts starts the embedded server again on Restart (Listen aside).
	opts broker.EmbeddedOptions
}

// harnessUser is the user name of [NATSServer.Harness].
const harnessUser = "testenv"

// shared is the test process's environment. It has to be process-wide: a
// test receives only its *testing.T, the costly parts (a private cluster, the
// migrated template) are worth building once for all the tests of a binary,
// and only TestMain, through Main, knows when the last test is done and they
// can go. Every field of it is guarded by its mutex.
var shared environment

// environment is what Postgres creates lazily and Main tears down.
type environment struct {
	mu sync.Mutex

	mainRunning bool // Main is running the tests, so teardown will happen
	pgTried     bool // setupPostgres ran; pgErr is its result
	pgErr       error

	serverDSN string            // the server, at its admin database
	admin     *sql.DB           // pool on serverDSN, for CREATE/DROP DATABASE
	template  string            // migrated database the tests' ones are cloned from
	cluster   *pgserver.Cluster // the private cluster, if one was started
	tempDirs  []string          // removed at teardown

	programs map[string]func() (string, error) // Program's builds, by directory and -race
}

// Main runs the tests of m and then removes what they created together: the
// template database, the private cluster, temporary directories. It returns
// the exit code for os.Exit, which is non-zero also when the teardown failed
// (otherwise leaks would go unnoticed).
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.mainRunning = true
	shared.mu.Unlock()

	code := m.Run()

	if err := shared.teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Postgres returns a database of its own for the calling test, migrated to
// the current schema, and drops it (WITH (FORCE)) when the test ends. It is
// safe to call from parallel tests; the first call in a process also sets up
// the server and the template, which the other calls wait for. It fails the
// test if the package's TestMain does not call [Main].
func Postgres(t testing.TB) *PG {
	t.Helper()
	serverDSN, admin, template, err := shared.postgres()
	if err != nil {
		t.Fatalf("testenv: postgres: %v", err)
	}

	name := uniqueName()
	ctx, cancel := context.WithTimeout(t.Context(), perTestTimeout)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+pq.QuoteIdentifier(name)+
		" TEMPLATE "+pq.QuoteIdentifier(template)); err != nil {
		t.Fatalf("testenv: create database %s from %s: %v", name, template, err)
	}
	pg := &PG{Name: name}
	t.Cleanup(func() {
		if pg.DB != nil {
			pg.DB.Close()
		}
		// t.Context is done by now; dropping must not depend on it.
		ctx, cancel := context.WithTimeout(context.Background(), perTestTimeout)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop database %s: %v", name, err)
		}
	})

	pg.DSN, err = pgserver.WithDatabase(serverDSN, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	pg.DB, err = sql.Open("postgres", pg.DSN)
	if err != nil {
		t.Fatalf("testenv: open %s: %v", name, err)
	}
	if err := pg.DB.PingContext(ctx); err != nil {
		t.Fatalf("testenv: connect to %s: %v", name, err)
	}
	return pg
}

// NATS returns a NATS server with JetStream for the calling test: the one
// NATS_URL names, if set, else an embedded server on a random 127.0.0.1 port
// storing in a temporary directory, shut down when the test ends. Safe to call
// from parallel tests.
//
// The embedded server has productwatch's users (bridge, gateway and debug,
// with random passwords and the permissions of [broker.Roles]) and a harness
// user allowed everything, which clients that give no credentials act as,
// so that a test's own clients need no credentials. [NATSLocked] refuses
// such clients, as production servers do.
func NATS(t testing.TB) *NATSServer {
	t.Helper()
	return startNATS(t, true)
}

// NATSLocked is [NATS] with anonymous clients refused: every client must give
// the credentials of one of the server's users, as on a production server.
func NATSLocked(t testing.TB) *NATSServer {
	t.Helper()
	return startNATS(t, false)
}

// startNATS is NATS and NATSLocked.
func startNATS(t testing.TB, anonymousAsHarness bool) *NATSServer {
	t.Helper()
	if url := os.Getenv("NATS_URL"); url != "" {
		creds := broker.Credentials{User: os.Getenv("NATS_USER"), Password: os.Getenv("NATS_PASSWORD")}
		return &NATSServer{URL: url, Bridge: creds, Gateway: creds, Debug: creds, Harness: creds}
	}
	ns := &NATSServer{Harness: broker.Credentials{User: harnessUser, Password: randomPassword()}}
	users := []broker.EmbeddedUser{{Credentials: ns.Harness}}
	for _, role := range broker.Roles() {
		u := role.WithPassword(randomPassword())
		users = append(users, u)
		switch role.User {
		case broker.BridgeUser:
			ns.Bridge = u.Credentials
		case broker.GatewayUser:
			ns.Gateway = u.Credentials
		case broker.DebugUser:
			ns.Debug = u.Credentials
		}
	}
	ns.opts = broker.EmbeddedOptions{
		StoreDir: t.TempDir(),
		Logger:   logger(),
		Users:    users,
	}
	if anonymousAsHarness {
		ns.opts.NoAuthUser = harnessUser
	}
	opts := ns.opts
	opts.Listen = "127.0.0.1:-1"
	srv, err := broker.StartEmbedded(opts)
	if err != nil {
		t.Fatalf("testenv: nats: %v", err)
	}
	ns.URL, ns.Server = srv.ClientURL(), srv
	// Registered after t.TempDir's removal, so it runs before it. It shuts
	// down whichever server runs by then: Restart may have replaced srv.
	t.Cleanup(func() {
		ns.Server.Shutdown()
		ns.Server.WaitForShutdown()
	})
	return ns
}

// Connect connects to the server as creds (the zero value: without
// credentials) with opts added, and closes the connection when the test
// ends. It fails the test when the connection is refused.
func (n *NATSServer) Connect(t testing.TB, creds broker.Credentials, opts ...nats.Option) *nats.Conn {
	t.Helper()
	if creds != (broker.Credentials{}) {
		opts = append(opts, nats.UserInfo(creds.User, creds.Password))
	}
	nc, err := nats.Connect(n.URL, opts...)
	if err != nil {
		t.Fatalf("testenv: connect to %s as %q: %v", n.URL, creds.User, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ConnectJS connects to the NATS server at url with opts (any server: an
// embedded one, NATS_URL's, a cluster's), closes the connection when the
// test ends, and returns it with a JetStream context on it. It fails the
// test when either fails.
func ConnectJS(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testenv: JetStream on %s: %v", url, err)
	}
	return nc, js
}

// randomPassword returns a random password (crypto/rand.Text: 26 base32
// characters, 130 bits).
func randomPassword() string {
	return rand.Text()
}

// postgres returns the server and template, setting them up on first use. A
// failed setup is not retried: every later test fails at once with its error.
func (e *environment) postgres() (serverDSN string, admin *sql.DB, template string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.mainRunning {
		return "", nil, "", errors.New("the package's TestMain must call testenv.Main, which removes the shared test databases: " +
			"func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }")
	}
	if !e.pgTried {
		e.pgTried = true
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		e.pgErr = e.setupPostgres(ctx)
	}
	if e.pgErr != nil {
		return "", nil, "", e.pgErr
	}
	return e.serverDSN, e.admin, e.template, nil
}

// serverKind says where the PostgreSQL server comes from.
type serverKind int

const (
	serverFromEnv serverKind = iota + 1 // DATABASE_URL
	serverLocal                         // pgserver.LocalDSN
	serverPrivate                       // a private cluster
)

// chooseServer applies the order of preference in the package comment.
// getenv and reachable stand for os.Getenv and pgserver.Reachable.
func chooseServer(ctx context.Context, getenv func(string) string,
	reachable func(ctx context.Context, dsn string) error) (serverKind, string, error) {
	switch mode := getenv(modeEnv); mode {
	case "private":
		return serverPrivate, "", nil
	case "":
	default:
		return 0, "", fmt.Errorf("%s=%q: want \"private\" or nothing", modeEnv, mode)
	}
	if dsn := getenv("DATABASE_URL"); dsn != "" {
		return serverFromEnv, dsn, nil
	}
	if reachable(ctx, pgserver.LocalDSN) == nil {
		return serverLocal, pgserver.LocalDSN, nil
	}
	return serverPrivate, "", nil
}

// setupPostgres finds or starts the server, then creates and migrates the
// template. Whatever it creates is recorded at once, for teardown to remove
// even when a later step fails. e.mu is held.
func (e *environment) setupPostgres(ctx context.Context) error {
	kind, dsn, err := chooseServer(ctx, os.Getenv, pgserver.Reachable)
	if err != nil {
		return err
	}
	if kind == serverPrivate {
		if dsn, err = e.startPrivate(ctx); err != nil {
			return err
		}
	}
	e.serverDSN = dsn

	admin, err := sql.Open("postgres", dsn)
	if err != nil {
		return fmt.Errorf("open server: %w", err)
	}
	e.admin = admin
	if err := admin.PingContext(ctx); err != nil {
		return fmt.Errorf("connect to server: %w", err)
	}

	template := uniqueName() + "_template"
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+pq.QuoteIdentifier(template)); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	e.template = template
	templateDSN, err := pgserver.WithDatabase(dsn, template)
	if err != nil {
		return err
	}
	if err := migrate(ctx, templateDSN); err != nil {
		return fmt.Errorf("template database %s: %w", template, err)
	}
	return nil
}

// migrate applies the schema to the database at dsn and closes every
// connection to it: CREATE DATABASE ... TEMPLATE refuses a template that has
// sessions (it waits up to five seconds for closing ones to go).
func migrate(ctx context.Context, dsn string) error {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	_, migrateErr := schema.Migrate(ctx, db, nil)
	if err := errors.Join(migrateErr, db.Close()); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// startPrivate starts this process's private cluster in a new temporary
// directory and returns the DSN of its postgres database. e.mu is held.
func (e *environment) startPrivate(ctx context.Context) (string, error) {
	parent, err := os.MkdirTemp("", "pwtest-pg-")
	if err != nil {
		return "", fmt.Errorf("private cluster: %w", err)
	}
	e.tempDirs = append(e.tempDirs, parent)
	// MkdirTemp makes 0700 directories; when tests run as root the server
	// runs as another user, who must be able to pass through.
	if err := os.Chmod(parent, 0o711); err != nil {
		return "", fmt.Errorf("private cluster: %w", err)
	}
	cluster, err := pgserver.StartPrivate(ctx, pgserver.Options{
		Dir:    filepath.Join(parent, "data"),
		Logger: logger(),
		// Durability is worthless for throw-away test data, and costly.
		// wal_init_zero=off matters most: every CREATE DATABASE writes the
		// template's pages to WAL, and a young cluster has no old segments
		// to recycle, so it would zero-fill 16 MB files again and again
		// (about 280 ms per test database instead of 70).
		Settings: map[string]string{
			"fsync":              "off",
			"synchronous_commit": "off",
			"full_page_writes":   "off",
			"wal_init_zero":      "off",
			// A package's parallel tests each run a bridge or a gateway
			// with pools of their own, and writers: room for them all.
			"max_connections": "300",
		},
	})
	if err != nil {
		return "", fmt.Errorf("private cluster: %w", err)
	}
	e.cluster = cluster
	return cluster.DSN("postgres"), nil
}

// teardown removes what setupPostgres created and resets e, returning every
// failure.
func (e *environment) teardown() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	var errs []error
	if e.admin != nil {
		if e.template != "" {
			if _, err := e.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(e.template)+" WITH (FORCE)"); err != nil {
				errs = append(errs, fmt.Errorf("drop template database %s: %w", e.template, err))
			}
		}
		if err := e.admin.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close server connections: %w", err))
		}
	}
	if e.cluster != nil {
		if err := e.cluster.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range e.tempDirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	e.mainRunning, e.pgTried, e.pgErr = false, false, nil
	e.serverDSN, e.admin, e.template, e.cluster, e.tempDirs = "", nil, "", nil, nil
	e.programs = nil
	return errors.Join(errs...)
}

// uniqueName returns a database name no other test, in this process or any
// other, uses: the process id separates processes on this machine, the
// random part the rest (and processes of other machines sharing a server).
func uniqueName() string {
	return fmt.Sprintf("%s%d_%012x", namePrefix, os.Getpid(), mathrand.Uint64()&(1<<48-1))
}

// logger returns where testenv's servers log: warnings and errors only, to
// stderr, which go test shows for failing packages.
func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
