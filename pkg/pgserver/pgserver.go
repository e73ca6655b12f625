// Package pgserver finds a PostgreSQL server to talk to, or starts a private
// one: the test environment (pkg/testenv) and `make run`'s launcher both use
// it so that neither needs a database set up by hand.
//
// The order of preference is the one [Resolve] implements: DATABASE_URL, then
// the machine's own server at [LocalDSN], then a private cluster started from
// the PostgreSQL binaries installed on the machine ([StartPrivate]).
//
// Private clusters trust every local connection (auth=trust) and listen on
// 127.0.0.1 only: they are for development and tests, never for production.
package pgserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/lib/pq" // registers the "postgres" driver
)

// LocalDSN is the machine's own PostgreSQL server as a stock install leaves
// it: user postgres, trust authentication, TCP on 127.0.0.1:5432.
const LocalDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// reachTimeout bounds [Reachable]: a local server answers in milliseconds, and
// a missing one must not hold up a test run or a launcher.
const reachTimeout = 2 * time.Second

// versionedBinRoot is where Debian and Ubuntu install one directory of server
// binaries per major version (/usr/lib/postgresql/<N>/bin).
const versionedBinRoot = "/usr/lib/postgresql"

// ErrBinariesNotFound is returned (wrapped) by [FindBinDir] when neither PATH
// nor the versioned install directories hold both initdb and pg_ctl.
var ErrBinariesNotFound = errors.New("postgresql binaries initdb and pg_ctl not found")

// FindBinDir returns the directory that holds initdb and pg_ctl (and, next to
// them, the postgres server binary that pg_ctl starts).
//
// It looks on PATH first and then in the highest version directory under
// /usr/lib/postgresql/<N>/bin, the Debian layout, where the binaries are not
// on PATH. A PATH entry that is a symbolic link (/usr/local/bin/initdb ->
// /usr/lib/postgresql/15/bin/initdb) is resolved, so the directory returned is
// the one the server binaries really live in. The error wraps
// [ErrBinariesNotFound] and names every place looked at.
func FindBinDir() (string, error) {
	return findBinDir(exec.LookPath, versionedBinRoot)
}

// findBinDir is FindBinDir with its two sources replaceable, for tests.
func findBinDir(lookPath func(string) (string, error), versionedRoot string) (string, error) {
	if initdb, err := lookPath("initdb"); err == nil {
		// Prefer the symlink target's directory: it is where postgres lives.
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil && hasBinaries(filepath.Dir(resolved)) {
			return filepath.Dir(resolved), nil
		}
		if pgCtl, err := lookPath("pg_ctl"); err == nil && filepath.Dir(pgCtl) == filepath.Dir(initdb) {
			return filepath.Dir(initdb), nil
		}
	}

	entries, err := os.ReadDir(versionedRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("list %s: %w", versionedRoot, err)
	}
	type versionDir struct {
		version []int
		bin     string
	}
	var candidates []versionDir
	for _, e := range entries {
		v, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		bin := filepath.Join(versionedRoot, e.Name(), "bin")
		if hasBinaries(bin) {
			candidates = append(candidates, versionDir{version: v, bin: bin})
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("looked on PATH and in %s/*/bin: %w", versionedRoot, ErrBinariesNotFound)
	}
	best := slices.MaxFunc(candidates, func(a, b versionDir) int { return slices.Compare(a.version, b.version) })
	return best.bin, nil
}

// parseVersion reads a directory name such as "15" or "9.6" as a version
// number, so that 10 sorts above 9.6.
func parseVersion(name string) ([]int, bool) {
	var version []int
	for part := range strings.SplitSeq(name, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		version = append(version, n)
	}
	return version, true
}

// hasBinaries reports whether dir holds executable initdb and pg_ctl files.
func hasBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl"} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Reachable opens a connection to dsn and pings it, giving up after about two
// seconds (sooner if ctx ends first). A nil error means the server accepted
// the connection and the credentials.
func Reachable(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return fmt.Errorf("open %s: %w", redact(dsn), err)
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s: %w", redact(dsn), err)
	}
	return nil
}

// Resolve picks the PostgreSQL server to use and returns a DSN for it:
//
//  1. DATABASE_URL, used as is, when it is set;
//  2. [LocalDSN], when that server is [Reachable];
//  3. otherwise a private cluster in privateDir ([StartPrivate] with a free
//     port), returned with the DSN of its "postgres" database.
//
// cluster is non-nil only in the third case; the caller owns it and stops it
// with [Cluster.Stop] when done. The path taken is logged at Info; logger may
// be nil.
func Resolve(ctx context.Context, privateDir string, logger *slog.Logger) (dsn string, cluster *Cluster, err error) {
	return resolve(ctx, privateDir, logger, os.Getenv, LocalDSN)
}

// resolve is Resolve with the environment and the local server's DSN
// replaceable, so that tests can take the private path on a machine whose
// 5432 is reachable, in parallel with other tests.
func resolve(ctx context.Context, privateDir string, logger *slog.Logger,
	getenv func(string) string, localDSN string) (string, *Cluster, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if dsn := getenv("DATABASE_URL"); dsn != "" {
		logger.Info("postgres: using DATABASE_URL", "dsn", redact(dsn))
		return dsn, nil, nil
	}
	reachErr := Reachable(ctx, localDSN)
	if reachErr == nil {
		logger.Info("postgres: using the local server", "dsn", redact(localDSN))
		return localDSN, nil, nil
	}
	logger.Info("postgres: local server not reachable, using a private cluster",
		"dsn", redact(localDSN), "err", reachErr, "dir", privateDir)
	cluster, err := StartPrivate(ctx, Options{Dir: privateDir, Logger: logger})
	if err != nil {
		return "", nil, fmt.Errorf("no DATABASE_URL, local server unreachable (%v), private cluster: %w", reachErr, err)
	}
	return cluster.DSN("postgres"), cluster, nil
}

// Tool returns the path of a PostgreSQL client program such as pgbench or
// psql: on PATH, else beside initdb and pg_ctl (see FindBinDir).
func Tool(name string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	dir, err := FindBinDir()
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s not on PATH nor in %s: %w", name, dir, err)
	}
	return path, nil
}
