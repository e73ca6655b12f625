package pgserver

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/productwatch/productwatch/pkg/pgserver/pgservertest"
)

// testLogger logs warnings and errors to stderr: enough to explain a failure
// without drowning a passing run.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// stopOnCleanup stops c when the test ends, should it fail before doing so.
func stopOnCleanup(t *testing.T, c *Cluster) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
	})
}

// openDB opens dsn and closes it when the test ends.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestStartPrivate runs a private cluster through its life: initdb and start,
// reuse while running, stop (twice), and restart on the existing data. It
// always runs, whether or not the machine's own server is reachable.
func TestStartPrivate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(pgservertest.Parent(t, "pgserver-test-"), "data")
	opts := Options{
		Dir:      dir,
		Logger:   testLogger(),
		Settings: map[string]string{"fsync": "off", "application_name": "it's quoted"},
	}

	first, err := StartPrivate(ctx, opts)
	if err != nil {
		t.Fatalf("StartPrivate: %v", err)
	}
	stopOnCleanup(t, first)
	if first.Reused() {
		t.Error("first start: Reused() = true, want false")
	}
	if first.Port() <= 0 {
		t.Fatalf("Port() = %d", first.Port())
	}
	if err := Reachable(ctx, first.DSN("postgres")); err != nil {
		t.Fatalf("Reachable: %v", err)
	}

	db := openDB(t, first.DSN("postgres"))
	var fsync, listen, encoding string
	if err := db.QueryRowContext(ctx,
		`SELECT current_setting('fsync'), current_setting('listen_addresses'), pg_encoding_to_char(encoding)
		   FROM pg_database WHERE datname = current_database()`).Scan(&fsync, &listen, &encoding); err != nil {
		t.Fatalf("query settings: %v", err)
	}
	if fsync != "off" || listen != "127.0.0.1" || encoding != "UTF8" {
		t.Errorf("fsync, listen_addresses, encoding = %q, %q, %q; want off, 127.0.0.1, UTF8", fsync, listen, encoding)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE survives_restart (n int); INSERT INTO survives_restart VALUES (42)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	// CreateDatabase: two callers at once and a third later all succeed,
	// and the database is there.
	created := make(chan error, 2)
	for range 2 {
		go func() { created <- CreateDatabase(ctx, first.DSN("postgres"), "made by create") }()
	}
	for range 2 {
		if err := <-created; err != nil {
			t.Errorf("CreateDatabase: %v", err)
		}
	}
	if err := CreateDatabase(ctx, first.DSN("postgres"), "made by create"); err != nil {
		t.Errorf("CreateDatabase of an existing database: %v", err)
	}
	if err := Reachable(ctx, first.DSN("made by create")); err != nil {
		t.Errorf("the created database: %v", err)
	}
	db.Close()

	second, err := StartPrivate(ctx, opts)
	if err != nil {
		t.Fatalf("StartPrivate on a running cluster: %v", err)
	}
	if !second.Reused() || second.Port() != first.Port() {
		t.Errorf("second start: Reused() = %v, Port() = %d; want true, %d", second.Reused(), second.Port(), first.Port())
	}
	if err := second.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := second.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := first.Stop(ctx); err != nil {
		t.Errorf("Stop after another handle stopped the server: %v", err)
	}
	if err := Reachable(ctx, first.DSN("postgres")); err == nil {
		t.Error("server still reachable after Stop")
	}

	third, err := StartPrivate(ctx, opts)
	if err != nil {
		t.Fatalf("StartPrivate on a stopped cluster: %v", err)
	}
	stopOnCleanup(t, third)
	if third.Reused() {
		t.Error("restart: Reused() = true, want false")
	}
	var n int
	if err := openDB(t, third.DSN("postgres")).QueryRowContext(ctx, `SELECT n FROM survives_restart`).Scan(&n); err != nil || n != 42 {
		t.Errorf("data after restart: n = %d, err = %v; want 42", n, err)
	}
}

// TestResolvePrivate takes Resolve's last path: no DATABASE_URL and a local
// server that does not answer.
func TestResolvePrivate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	unreachable := "postgres://postgres@127.0.0.1:" + strconv.Itoa(closedPort(t)) + "/postgres?sslmode=disable"

	dsn, cluster, err := resolve(ctx, filepath.Join(pgservertest.Parent(t, "pgserver-test-"), "data"), testLogger(),
		func(string) string { return "" }, unreachable)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	if cluster == nil {
		t.Fatal("resolve returned no cluster for the private path")
	}
	stopOnCleanup(t, cluster)
	if dsn != cluster.DSN("postgres") {
		t.Errorf("dsn = %q, want %q", dsn, cluster.DSN("postgres"))
	}
	if err := Reachable(ctx, dsn); err != nil {
		t.Errorf("Reachable(%q): %v", dsn, err)
	}
}

// TestResolveDatabaseFails: when the database cannot be made on the
// private cluster resolve started (an empty name: refused before any SQL),
// ResolveDatabase stops that cluster again.
func TestResolveDatabaseFails(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	unreachable := "postgres://postgres@127.0.0.1:" + strconv.Itoa(closedPort(t)) + "/postgres?sslmode=disable"
	dir := filepath.Join(pgservertest.Parent(t, "pgserver-test-"), "data")
	dsn, cluster, err := resolveDatabase(ctx, dir, "", testLogger(), func(string) string { return "" }, unreachable)
	if err == nil {
		stopOnCleanup(t, cluster)
		t.Fatalf("resolveDatabase with an empty name = %q, nil", dsn)
	}
	if cluster != nil {
		t.Errorf("a cluster returned with the error %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "postmaster.pid")); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("the private cluster still runs after a failed ResolveDatabase (%v): postmaster.pid: %v", err, statErr)
	}

	// And the happy path names the database made.
	dsn, cluster, err = resolveDatabase(ctx, dir, "made", testLogger(), func(string) string { return "" }, unreachable)
	if err != nil {
		t.Fatalf("resolveDatabase: %v", err)
	}
	stopOnCleanup(t, cluster)
	if want, _ := WithDatabase(cluster.DSN("postgres"), "made"); dsn != want {
		t.Errorf("dsn = %q, want %q", dsn, want)
	}
	if err := Reachable(ctx, dsn); err != nil {
		t.Errorf("Reachable(%q): %v", dsn, err)
	}
}

// TestResolveDatabaseURL checks that DATABASE_URL wins, unchecked and as is.
func TestResolveDatabaseURL(t *testing.T) {
	const want = "postgres://someone@db.invalid:6543/app?sslmode=require"
	t.Setenv("DATABASE_URL", want)
	dsn, cluster, err := Resolve(t.Context(), t.TempDir(), nil)
	if err != nil || cluster != nil || dsn != want {
		t.Fatalf("Resolve = %q, %v, %v; want %q, nil, nil", dsn, cluster, err, want)
	}
}

// closedPort returns a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func TestReachableFailsFast(t *testing.T) {
	t.Parallel()
	began := time.Now()
	err := Reachable(t.Context(), "postgres://postgres@127.0.0.1:"+strconv.Itoa(closedPort(t))+"/postgres?sslmode=disable")
	if err == nil {
		t.Fatal("Reachable on a closed port: nil error")
	}
	if elapsed := time.Since(began); elapsed > 3*time.Second {
		t.Errorf("Reachable took %v, want about 2s at most", elapsed)
	}
}

func TestStartPrivateRejectsManagedSettings(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"port", "listen_addresses", "unix_socket_directories", "bad name; rm -rf"} {
		_, err := StartPrivate(t.Context(), Options{Dir: filepath.Join(t.TempDir(), "data"), Settings: map[string]string{name: "x"}})
		if err == nil {
			t.Errorf("setting %q: nil error", name)
		}
	}
}

// TestFindBinDir checks the real machine: the tests of this package and of
// pkg/testenv need initdb and pg_ctl, so their absence is a failure.
func TestFindBinDir(t *testing.T) {
	t.Parallel()
	dir, err := FindBinDir()
	if err != nil {
		t.Fatalf("FindBinDir: %v", err)
	}
	if !hasBinaries(dir) {
		t.Fatalf("FindBinDir = %s, which lacks initdb or pg_ctl", dir)
	}
	if out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").CombinedOutput(); err != nil {
		t.Errorf("no runnable postgres next to pg_ctl in %s: %v: %s", dir, err, out)
	}
}

// TestFindBinDirSources checks the search order on fake installations.
func TestFindBinDirSources(t *testing.T) {
	t.Parallel()
	// makeBin creates dir with executable initdb and pg_ctl in it.
	makeBin := func(t *testing.T, dir string, names ...string) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	// pathOf simulates exec.LookPath over the single directory dir.
	pathOf := func(dir string) func(string) (string, error) {
		return func(name string) (string, error) {
			if dir == "" {
				return "", exec.ErrNotFound
			}
			p := filepath.Join(dir, name)
			if _, err := os.Stat(p); err != nil {
				return "", exec.ErrNotFound
			}
			return p, nil
		}
	}

	tests := []struct {
		name string
		// setup builds a fake installation under root and returns the
		// directory standing for PATH ("" for none) and the expected result
		// ("" for ErrBinariesNotFound).
		setup func(t *testing.T, root string) (pathDir, want string)
	}{
		{
			name: "PATH directory holding both",
			setup: func(t *testing.T, root string) (string, string) {
				bin := makeBin(t, filepath.Join(root, "opt/bin"), "initdb", "pg_ctl")
				makeBin(t, filepath.Join(root, "lib/99/bin"), "initdb", "pg_ctl")
				return bin, bin
			},
		},
		{
			name: "PATH symlinks resolve to the versioned directory",
			setup: func(t *testing.T, root string) (string, string) {
				real := makeBin(t, filepath.Join(root, "lib/15/bin"), "initdb", "pg_ctl")
				links := filepath.Join(root, "usr/local/bin")
				if err := os.MkdirAll(links, 0o755); err != nil {
					t.Fatal(err)
				}
				for _, name := range []string{"initdb", "pg_ctl"} {
					if err := os.Symlink(filepath.Join(real, name), filepath.Join(links, name)); err != nil {
						t.Fatal(err)
					}
				}
				makeBin(t, filepath.Join(root, "lib/16/bin"), "initdb", "pg_ctl")
				return links, real
			},
		},
		{
			name: "PATH holds initdb only, falls back to highest version",
			setup: func(t *testing.T, root string) (string, string) {
				bin := makeBin(t, filepath.Join(root, "opt/bin"), "initdb")
				makeBin(t, filepath.Join(root, "lib/9.6/bin"), "initdb", "pg_ctl")
				want := makeBin(t, filepath.Join(root, "lib/10/bin"), "initdb", "pg_ctl")
				makeBin(t, filepath.Join(root, "lib/17/bin"), "initdb") // incomplete
				makeBin(t, filepath.Join(root, "lib/notaversion/bin"), "initdb", "pg_ctl")
				return bin, want
			},
		},
		{
			name: "nothing anywhere",
			setup: func(t *testing.T, root string) (string, string) {
				makeBin(t, filepath.Join(root, "lib/15/bin"), "pg_ctl")
				return "", ""
			},
		},
		{
			name: "no versioned root",
			setup: func(t *testing.T, root string) (string, string) {
				return "", ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pathDir, want := tt.setup(t, root)
			got, err := findBinDir(pathOf(pathDir), filepath.Join(root, "lib"))
			if want == "" {
				if !errors.Is(err, ErrBinariesNotFound) {
					t.Fatalf("findBinDir = %q, %v; want ErrBinariesNotFound", got, err)
				}
				return
			}
			if err != nil || got != want {
				t.Fatalf("findBinDir = %q, %v; want %q", got, err, want)
			}
		})
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		dsn     string
		dbname  string
		want    string
		wantErr bool
	}{
		{
			name:   "URL replaces the path and keeps the query",
			dsn:    LocalDSN,
			dbname: "pwtest_1",
			want:   "postgres://postgres@127.0.0.1:5432/pwtest_1?sslmode=disable",
		},
		{
			name:   "URL without a path",
			dsn:    "postgresql://u:secret@db.example:6543?sslmode=require&application_name=x",
			dbname: "app",
			want:   "postgresql://u:secret@db.example:6543/app?sslmode=require&application_name=x",
		},
		{
			name:   "URL escapes slashes and spaces in the name",
			dsn:    "postgres://u@h/old",
			dbname: "a/b c",
			want:   "postgres://u@h/a%2Fb%20c",
		},
		{
			name:   "key=value replaces dbname in place",
			dsn:    "host=127.0.0.1 dbname=postgres sslmode=disable",
			dbname: "pwtest_2",
			want:   "host=127.0.0.1 dbname=pwtest_2 sslmode=disable",
		},
		{
			name:   "key=value appends dbname",
			dsn:    "host=/var/run/postgresql user=postgres",
			dbname: "app",
			want:   "host=/var/run/postgresql user=postgres dbname=app",
		},
		{
			name:   "key=value keeps quoted values and quotes the new one",
			dsn:    "password = 'it\\'s a secret'  dbname='x y'",
			dbname: "o'neil db",
			want:   `password='it\'s a secret' dbname='o\'neil db'`,
		},
		{
			name:   "empty key=value DSN",
			dsn:    "",
			dbname: "app",
			want:   "dbname=app",
		},
		{name: "empty dbname", dsn: LocalDSN, dbname: "", wantErr: true},
		{name: "unterminated quote", dsn: "host='h dbname=x", dbname: "app", wantErr: true},
		{name: "missing equals", dsn: "host h", dbname: "app", wantErr: true},
		{name: "bad URL", dsn: "postgres://h:port:bad/x", dbname: "app", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := WithDatabase(tt.dsn, tt.dbname)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("WithDatabase(%q, %q) = %q, want an error", tt.dsn, tt.dbname, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("WithDatabase(%q, %q) = %q, %v; want %q", tt.dsn, tt.dbname, got, err, tt.want)
			}
			// The driver must read back the database we asked for.
			cfg, err := pq.NewConfig(got)
			if err != nil {
				t.Fatalf("lib/pq cannot parse %q: %v", got, err)
			}
			if cfg.Database != tt.dbname {
				t.Errorf("lib/pq reads dbname %q from %q, want %q", cfg.Database, got, tt.dbname)
			}
		})
	}
}

// FuzzWithDatabase checks that whatever key=value DSN parses, the result names
// the requested database as lib/pq reads it.
func FuzzWithDatabase(f *testing.F) {
	for _, seed := range []struct{ dsn, dbname string }{
		{"host=h dbname=x", "y"},
		{"password='a\\'b' user=u", "db name"},
		{LocalDSN, "pwtest_1"},
		{"", "x"},
	} {
		f.Add(seed.dsn, seed.dbname)
	}
	f.Fuzz(func(t *testing.T, dsn, dbname string) {
		got, err := WithDatabase(dsn, dbname)
		if err != nil || isURLDSN(dsn) {
			return
		}
		pairs, err := parseKeyValueDSN(got)
		if err != nil {
			t.Fatalf("WithDatabase(%q, %q) = %q, which does not parse: %v", dsn, dbname, got, err)
		}
		var found string
		for _, p := range pairs {
			if p.key == "dbname" {
				found = p.value
			}
		}
		if found != dbname {
			t.Fatalf("WithDatabase(%q, %q) = %q, whose dbname is %q", dsn, dbname, got, found)
		}
	})
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, dsn, want string }{
		{"URL", "postgres://u:secret@h/db", "postgres://u:xxxxx@h/db"},
		{"key=value", "user=u password='secret' dbname=db", "user=u password=xxxxx dbname=db"},
	}
	for _, tt := range tests {
		if got := redact(tt.dsn); got != tt.want {
			t.Errorf("%s: redact(%q) = %q, want %q", tt.name, tt.dsn, got, tt.want)
		}
	}
}
