package pgserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configures [StartPrivate].
type Options struct {
	// Dir is the cluster's data directory. It is created (mode 0700) if it
	// does not exist, and initialised with initdb if it holds no PG_VERSION.
	// When the process runs as root, every directory above Dir must be
	// traversable by the unprivileged user the server runs as: a temporary
	// directory made by os.MkdirTemp or t.TempDir is mode 0700, so put Dir
	// under a parent of mode 0711 or 0755 instead. Required.
	Dir string

	// Port is the TCP port on 127.0.0.1 to listen on; 0 picks a free one.
	// It is ignored when Dir already holds a running server, which is reused
	// on whatever port it listens on.
	Port int

	// Logger receives what the cluster's start and stop go through; nil
	// discards it. The server's own log is the file postgresql.log in Dir.
	Logger *slog.Logger

	// Settings are extra server settings passed as -c name=value, e.g.
	// fsync=off for tests. listen_addresses, port and
	// unix_socket_directories are set by StartPrivate and may not appear
	// here. When fsync is "off", initdb also runs with --no-sync.
	Settings map[string]string
}

// Cluster is a PostgreSQL server whose data directory this package manages,
// either started by [StartPrivate] or found running there. Its methods are
// safe for concurrent use.
type Cluster struct {
	dir    string
	binDir string
	port   int
	reused bool
	logger *slog.Logger
	// runAs is the unprivileged user initdb and pg_ctl run as when the
	// process is root (PostgreSQL refuses to run as root); nil otherwise.
	runAs *account

	mu      sync.Mutex // guards stopped
	stopped bool
}

// account is a local user that commands run as.
type account struct {
	name     string
	uid, gid uint32
}

// defaultStartTimeout bounds pg_ctl start and stop when ctx has no deadline.
const defaultStartTimeout = 60 * time.Second

// logFileName is the server log, kept inside the data directory.
const logFileName = "postgresql.log"

// freePortAttempts is how often StartPrivate picks another free port when the
// one it picked was taken by someone else before the server bound it.
const freePortAttempts = 3

// settingName is what a -c setting name may look like; it keeps Settings from
// smuggling other options into pg_ctl's -o string.
var settingName = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)

// StartPrivate starts a PostgreSQL server on opts.Dir and returns it once it
// accepts connections.
//
// A directory without PG_VERSION is first initialised with initdb (superuser
// postgres, trust authentication, UTF8, locale C.UTF-8 when installed, else
// C). The server listens on 127.0.0.1 only, creates no Unix socket, and logs
// to postgresql.log in the directory. If the directory already holds a
// running server (make run keeps its cluster across runs), that server is
// reused: the port is read from postmaster.pid and [Cluster.Reused] reports
// true.
//
// When the process runs as root, initdb and pg_ctl run as the directory's
// owner if it already holds a cluster owned by someone other than root, else
// as the user postgres, else nobody; the directory is chowned to that user.
//
// StartPrivate must not be called concurrently on the same Dir, from this
// process or another. ctx bounds the whole start; its deadline, if any, is
// also passed to pg_ctl as its wait timeout.
func StartPrivate(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("start private postgres: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start private postgres: %w", err)
	}
	for name := range opts.Settings {
		switch {
		case name == "listen_addresses" || name == "port" || name == "unix_socket_directories":
			return nil, fmt.Errorf("start private postgres: setting %q is managed by StartPrivate", name)
		case !settingName.MatchString(name):
			return nil, fmt.Errorf("start private postgres: invalid setting name %q", name)
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	binDir, err := FindBinDir()
	if err != nil {
		return nil, fmt.Errorf("start private postgres: %w", err)
	}

	c := &Cluster{dir: dir, binDir: binDir, logger: logger.With("pgdata", dir)}
	if err := c.prepareDir(); err != nil {
		return nil, fmt.Errorf("start private postgres in %s: %w", dir, err)
	}

	initialised, err := fileExists(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return nil, fmt.Errorf("start private postgres in %s: %w", dir, err)
	}
	if initialised {
		running, err := c.running(ctx)
		if err != nil {
			return nil, fmt.Errorf("start private postgres in %s: %w", dir, err)
		}
		if running {
			if err := c.adopt(ctx); err != nil {
				return nil, fmt.Errorf("reuse running postgres in %s: %w", dir, err)
			}
			if opts.Port != 0 && opts.Port != c.port {
				c.logger.Warn("postgres: running server listens on another port than asked for",
					"port", c.port, "requested_port", opts.Port)
			}
			return c, nil
		}
	} else if err := c.initdb(ctx, opts.Settings["fsync"] == "off"); err != nil {
		return nil, fmt.Errorf("initialise postgres cluster in %s: %w", dir, err)
	}

	if err := c.start(ctx, opts.Port, opts.Settings); err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	return c, nil
}

// DSN returns a URL-form DSN for database dbname on the cluster, as the
// superuser postgres over TCP without TLS.
func (c *Cluster) DSN(dbname string) string {
	return (&url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + dbname,
		RawPath:  "/" + url.PathEscape(dbname),
		RawQuery: "sslmode=disable",
	}).String()
}

// Port returns the TCP port the cluster listens on, on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Dir returns the cluster's data directory, as an absolute path.
func (c *Cluster) Dir() string { return c.dir }

// Reused reports whether the server was already running when [StartPrivate]
// was called, rather than started by it. Stop stops it either way.
func (c *Cluster) Reused() bool { return c.reused }

// Stop shuts the server down with pg_ctl stop -m fast (open sessions are
// disconnected, their transactions rolled back) and waits for it to exit.
// Calling it again, or after the server stopped some other way, returns nil.
// Pass a ctx that is still live: a shutdown signal's context is already done.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	running, err := c.running(ctx)
	if err != nil {
		return fmt.Errorf("stop postgres in %s: %w", c.dir, err)
	}
	if running {
		out, err := c.command(ctx, "pg_ctl", "stop", "-D", c.dir, "-m", "fast", "-w",
			"-t", waitSeconds(ctx)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("stop postgres in %s: %w: %s", c.dir, err, strings.TrimSpace(string(out)))
		}
	}
	c.stopped = true
	c.logger.Info("postgres cluster stopped", "port", c.port)
	return nil
}

// prepareDir creates the data directory and, when running as root, picks the
// user to run as, checks that it can reach the directory, and hands the
// directory over to it.
func (c *Cluster) prepareDir() error {
	if err := os.MkdirAll(filepath.Dir(c.dir), 0o755); err != nil {
		return fmt.Errorf("create parent directory: %w", err)
	}
	if err := os.Mkdir(c.dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create data directory: %w", err)
	}
	initialised, err := fileExists(filepath.Join(c.dir, "PG_VERSION"))
	if err != nil {
		return err
	}
	if !initialised {
		// initdb insists on 0700 or 0750; an existing empty directory may
		// have been made with anything.
		if err := os.Chmod(c.dir, 0o700); err != nil {
			return fmt.Errorf("restrict data directory: %w", err)
		}
	}
	if os.Geteuid() != 0 {
		return nil
	}

	runAs, err := chooseAccount(c.dir, initialised)
	if err != nil {
		return err
	}
	c.runAs = runAs
	if err := checkTraversable(filepath.Dir(c.dir), runAs); err != nil {
		return err
	}
	// Hand over everything: a fresh directory, or a cluster another user
	// (root, by a copy) left behind. Files already owned are left alone.
	return filepath.WalkDir(c.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid == runAs.uid && st.Gid == runAs.gid {
			return nil
		}
		if err := os.Lchown(path, int(runAs.uid), int(runAs.gid)); err != nil {
			return fmt.Errorf("hand data directory to %s: %w", runAs.name, err)
		}
		return nil
	})
}

// chooseAccount picks the unprivileged user to run PostgreSQL as when this
// process is root: the owner of an existing cluster (unless that is root),
// else postgres, else nobody.
func chooseAccount(dir string, initialised bool) (*account, error) {
	if initialised {
		info, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("stat data directory: %w", err)
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			name := strconv.FormatUint(uint64(st.Uid), 10)
			if u, err := user.LookupId(name); err == nil {
				name = u.Username
			}
			return &account{name: name, uid: st.Uid, gid: st.Gid}, nil
		}
	}
	var lookupErrs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			lookupErrs = append(lookupErrs, err)
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("uid of %s: %w", name, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("gid of %s: %w", name, err)
		}
		return &account{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("running as root and no unprivileged user to run postgres as: %w", errors.Join(lookupErrs...))
}

// checkTraversable returns an error naming the first directory from dir up to
// the root that runAs cannot search. The commands run with runAs's uid and
// primary gid only (no supplementary groups), so the mode bits decide; ACLs
// are not consulted.
func checkTraversable(dir string, runAs *account) error {
	for {
		info, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("stat %s: %w", dir, err)
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		perm := info.Mode().Perm()
		var searchable bool
		switch {
		case st.Uid == runAs.uid:
			searchable = perm&0o100 != 0
		case st.Gid == runAs.gid:
			searchable = perm&0o010 != 0
		default:
			searchable = perm&0o001 != 0
		}
		if !searchable {
			return fmt.Errorf("directory %s (mode %#o, owner uid %d) is not traversable by user %s (uid %d), "+
				"who runs postgres because this process is root: put the data directory under a directory of mode 0711 or 0755",
				dir, perm, st.Uid, runAs.name, runAs.uid)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// initdb creates a new cluster in c.dir.
func (c *Cluster) initdb(ctx context.Context, noSync bool) error {
	args := []string{"-D", c.dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=" + clusterLocale()}
	if noSync {
		args = append(args, "--no-sync")
	}
	began := time.Now()
	out, err := c.command(ctx, "initdb", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	c.logger.Info("postgres cluster initialised", "user", c.userName(), "duration", time.Since(began))
	return nil
}

// clusterLocale returns C.UTF-8 when the system has it (so upper() and
// character classes work beyond ASCII) and C otherwise, which always exists.
func clusterLocale() string {
	for _, dir := range []string{"/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"} {
		if info, err := os.Stat(dir); err == nil && info.IsDir() {
			return "C.UTF-8"
		}
	}
	return "C"
}

// start runs pg_ctl start on a cluster that is not running. A port of 0 picks
// a free one, and picks again if another process took it first.
func (c *Cluster) start(ctx context.Context, port int, settings map[string]string) error {
	for attempt := 1; ; attempt++ {
		chosen := port
		if chosen == 0 {
			free, err := freePort()
			if err != nil {
				return err
			}
			chosen = free
		}
		began := time.Now()
		err := c.pgCtlStart(ctx, chosen, settings)
		if err == nil {
			c.port = chosen
			c.logger.Info("postgres cluster started", "port", chosen, "user", c.userName(), "duration", time.Since(began))
			return nil
		}
		if port != 0 || attempt >= freePortAttempts || !portInUse(chosen) {
			return err
		}
		c.logger.Warn("postgres: picked port was taken before the server bound it, trying another", "port", chosen)
	}
}

// pgCtlStart runs pg_ctl start -w with the server listening on 127.0.0.1:port.
func (c *Cluster) pgCtlStart(ctx context.Context, port int, settings map[string]string) error {
	serverArgs := []string{
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(port),
		// No Unix socket: TCP is all clients use, and a socket path inside
		// a deep directory can exceed the 107-byte limit.
		"-c", "unix_socket_directories=",
	}
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		serverArgs = append(serverArgs, "-c", name+"="+settings[name])
	}
	// pg_ctl hands -o to /bin/sh, so every word is quoted for it.
	quoted := make([]string, len(serverArgs))
	for i, arg := range serverArgs {
		quoted[i] = shellQuote(arg)
	}
	out, err := c.command(ctx, "pg_ctl", "start", "-D", c.dir, "-w", "-t", waitSeconds(ctx),
		"-l", filepath.Join(c.dir, logFileName), "-o", strings.Join(quoted, " ")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl start (log: %s): %w: %s", filepath.Join(c.dir, logFileName), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// adopt takes over a server already running on c.dir: it reads the port from
// postmaster.pid and waits until the server accepts connections.
func (c *Cluster) adopt(ctx context.Context) error {
	port, err := readPort(filepath.Join(c.dir, "postmaster.pid"))
	if err != nil {
		return err
	}
	c.port = port
	c.reused = true
	// A server found mid-start (status "starting") is not ready yet; the
	// deadline is what pg_ctl -w would have allowed it.
	ctx, cancel := context.WithTimeout(ctx, defaultStartTimeout)
	defer cancel()
	for {
		err := Reachable(ctx, c.DSN("postgres"))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("running server on port %d does not accept connections: %w", port, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	c.logger.Info("postgres cluster already running, reusing it", "port", port)
	return nil
}

// readPort returns the port recorded on the fourth line of postmaster.pid.
func readPort(pidFile string) (int, error) {
	f, err := os.Open(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read server port: %w", err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		if line == 4 {
			port, err := strconv.Atoi(strings.TrimSpace(scanner.Text()))
			if err != nil || port <= 0 || port > 65535 {
				return 0, fmt.Errorf("read server port from %s: bad port line %q", pidFile, scanner.Text())
			}
			return port, nil
		}
	}
	if err := scanner.Err(); err != nil {
		return 0, fmt.Errorf("read server port from %s: %w", pidFile, err)
	}
	return 0, fmt.Errorf("read server port from %s: file has fewer than 4 lines", pidFile)
}

// running asks pg_ctl status whether a server runs on c.dir.
func (c *Cluster) running(ctx context.Context) (bool, error) {
	out, err := c.command(ctx, "pg_ctl", "status", "-D", c.dir).CombinedOutput()
	if err == nil {
		return true, nil
	}
	// pg_ctl status exits 3 when no server is running on the directory.
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok && exitErr.ExitCode() == 3 {
		return false, nil
	}
	return false, fmt.Errorf("pg_ctl status: %w: %s", err, strings.TrimSpace(string(out)))
}

// command prepares one of the PostgreSQL binaries to run as c.runAs, inside
// the data directory (a working directory it can always enter), with an
// environment that cannot redirect it (no PG* variables) or change its
// messages' language.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.dir
	cmd.WaitDelay = 5 * time.Second
	env := []string{"LC_ALL=C"}
	for _, kv := range os.Environ() {
		key, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(key, "PG") || strings.HasPrefix(key, "LC_") || key == "LANG" || key == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = env
	if c.runAs != nil {
		// An empty Groups drops root's supplementary groups.
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: c.runAs.uid, Gid: c.runAs.gid, Groups: []uint32{}},
		}
	}
	return cmd
}

// userName names the user the commands run as, for logs.
func (c *Cluster) userName() string {
	if c.runAs != nil {
		return c.runAs.name
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// waitSeconds converts ctx's remaining time into pg_ctl's -t argument.
func waitSeconds(ctx context.Context) string {
	wait := defaultStartTimeout
	if deadline, ok := ctx.Deadline(); ok {
		wait = max(time.Until(deadline), time.Second)
	}
	return strconv.Itoa(int(wait.Round(time.Second) / time.Second))
}

// shellQuote quotes s as one word for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// freePort asks the kernel for a TCP port that is free on 127.0.0.1 now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	return port, nil
}

// portInUse reports whether something listens on 127.0.0.1:port.
func portInUse(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// fileExists reports whether path exists; other stat errors are returned.
func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
}
