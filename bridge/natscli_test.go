package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// The nats CLI the README tells users to install, pinned: `make tools` (and
// this test, when bin/nats is missing or another version) runs
// GOBIN=<repo>/bin go install natsCLIPackage@natsCLIVersion.
const (
	natsCLIPackage = "github.com/nats-io/natscli/nats"
	natsCLIVersion = "v0.5.0"
	// natsCLIInstallTimeout bounds `go install` (a first build downloads
	// and compiles the CLI's dependencies: about a minute here).
	natsCLIInstallTimeout = 10 * time.Minute
	// natsCLITimeout bounds every other nats command.
	natsCLITimeout = 30 * time.Second
)

// TestNatsCLI runs the commands the README gives for watching the bridge
// with the real nats CLI: `nats sub 'product.>'`, `nats stream info
// PRODUCTS`, `nats stream get PRODUCTS --last-for product.<id>` and `nats
// stream view PRODUCTS`, against the bridge running in this process.
func TestNatsCLI(t *testing.T) {
	cli := findNatsCLI(t)
	pg := testenv.Postgres(t)
	// Locked down as in production: the CLI runs as the read-only debug
	// user, the bridge as its own, the test's client as the harness.
	nt := testenv.NATSLocked(t)
	if nt.Server == nil {
		t.Skip("NATS_URL names a shared server: this test counts the messages of a PRODUCTS stream of its own")
	}
	cli.server, cli.creds = nt.URL, nt.Debug

	// Three products before the bridge starts: it publishes them on start.
	if _, err := pg.DB.Exec(`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Apple', 'MacBook ' || i, 500, 'EUR', i FROM generate_series(1, 3) AS i`); err != nil {
		t.Fatal(err)
	}
	runBridgeInProcess(t, pg.DSN, nt)
	js := natsCLIJetStream(t, nt)
	natsCLIWaitStream(t, js, 3)

	// nats sub, started before the changes it must print.
	changes := []string{
		`UPDATE products SET units_available = 7 WHERE product_id = 1`,
		`UPDATE products SET price_amount = 12.50, price_currency = 'USD' WHERE product_id = 2`,
		`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available) VALUES ('Dell', 'XPS 13', 999, 'EUR', 4)`,
		`DELETE FROM products WHERE product_id = 3`,
		`UPDATE products SET units_available = 6 WHERE product_id = 1`,
	}
	sub := cli.start(t, "sub", "product.>", "--count", fmt.Sprint(len(changes)), "--connection-name", "productwatch-test-sub")
	sub.waitOutput(t, "Subscribing on product.>")
	// The CLI logs that line before it subscribes: wait for the server to
	// hold the subscription too.
	natsCLIWaitInterest(t, nt.Server, "productwatch-test-sub", "product.>")
	for _, q := range changes {
		if _, err := pg.DB.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	out := sub.wait(t)
	events := natsCLIEvents(t, pg, 3)
	if len(events) != len(changes) {
		t.Fatalf("the change log holds %d changes after seq 3, want %d", len(events), len(changes))
	}
	if n := strings.Count(out, "Received on"); n != len(changes) {
		t.Errorf("nats sub printed %d messages, want %d:\n%s", n, len(changes), out)
	}
	at := make(map[int64]int) // where each change is in the output
	for _, ev := range events {
		// [#1] Received on "product.1" with reply "_INBOX.…"
		// Nats-Msg-Id: 4
		//
		// {"seq":4,"action":"UPDATE",...}
		//
		// (The reply subject is the bridge's: JetStream acknowledges the
		// publish there.)
		block := regexp.MustCompile(`\[#\d+\] Received on "` + regexp.QuoteMeta(ev.subject) + `"( with reply "[^"]+")?\n` +
			regexp.QuoteMeta(fmt.Sprintf("Nats-Msg-Id: %d\n\n%s\n", ev.seq, ev.json)))
		loc := block.FindStringIndex(out)
		if loc == nil {
			t.Errorf("nats sub did not print change %d with its Nats-Msg-Id: %s", ev.seq, ev.json)
			continue
		}
		at[ev.seq] = loc[0]
	}
	// Per product, in version order (product 1 changed twice).
	if first, second := at[events[0].seq], at[events[4].seq]; first > second {
		t.Errorf("nats sub printed product 1's version %d after version %d", events[0].version, events[4].version)
	}
	if t.Failed() {
		t.Fatalf("nats sub printed:\n%s", out)
	}

	total := 3 + len(changes)
	t.Run("stream info", func(t *testing.T) {
		out := cli.run(t, "stream", "info", "PRODUCTS")
		for _, want := range []string{
			`(?m)^\s*Subjects: product\.\*$`,
			fmt.Sprintf(`(?m)^\s*Messages: %d$`, total),
			fmt.Sprintf(`(?m)^\s*Last Sequence: %d\b`, total),
		} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("nats stream info PRODUCTS lacks %s", want)
			}
		}
		if t.Failed() {
			t.Logf("nats stream info PRODUCTS printed:\n%s", out)
		}
	})

	t.Run("stream get", func(t *testing.T) {
		// The latest state of one product, without a terminal.
		last := events[4] // product 1's second change
		out := cli.run(t, "stream", "get", "PRODUCTS", "--last-for", last.subject)
		// Item: PRODUCTS#8 received 2026-11-25 14:44:35.123 +0000 UTC (1ms) on Subject product.1
		//
		// Headers:
		//   Nats-Msg-Id: 8
		//
		// {"seq":8,...}
		want := regexp.MustCompile(`Item: PRODUCTS#\d+ received [^\n]+ on Subject ` + regexp.QuoteMeta(last.subject) + `\n\n` +
			regexp.QuoteMeta(fmt.Sprintf("Headers:\n  Nats-Msg-Id: %d\n\n%s\n", last.seq, last.json)))
		if !want.MatchString(out) {
			t.Errorf("nats stream get PRODUCTS --last-for %s did not show change %d: %s", last.subject, last.seq, last.json)
		}
	})

	t.Run("stream view", func(t *testing.T) {
		// nats stream view pages interactively: it refuses to run unless
		// stdin and stdout are a terminal, so it runs in one. With fewer
		// messages than a page (10) it prints them all and exits.
		out := cli.runInTerminal(t, "stream", "view", "PRODUCTS")
		all := natsCLIEvents(t, pg, 0)
		if len(all) != total {
			t.Fatalf("the change log holds %d changes, want %d", len(all), total)
		}
		for i, ev := range all {
			// [1] Subject: product.1 Received: 2026-11-25 14:44:35
			//
			//   Nats-Msg-Id: 1
			// {"seq":1,...}
			block := regexp.MustCompile(`\[` + fmt.Sprint(i+1) + `\] Subject: ` + regexp.QuoteMeta(ev.subject) + ` Received: [^\n]+\n\n` +
				regexp.QuoteMeta(fmt.Sprintf("  Nats-Msg-Id: %d\n%s\n", ev.seq, ev.json)))
			if !block.MatchString(out) {
				t.Errorf("nats stream view did not show change %d as message %d: %s", ev.seq, i+1, ev.json)
			}
		}
		if !strings.Contains(out, "Reached apparent end of data") {
			t.Error("nats stream view did not reach the end")
		}
		if t.Failed() {
			t.Logf("nats stream view printed:\n%s", out)
		}
	})
}

// natsCLI runs the nats CLI in an environment of its own: a temporary HOME
// and XDG_CONFIG_HOME (it never reads or writes the user's contexts), none of
// the NATS_* variables, --no-context, and --server, --user and --password
// set to the test's server and its debug user.
type natsCLI struct {
	path   string
	env    []string
	server string
	creds  broker.Credentials
}

// findNatsCLI returns the nats CLI in <repo>/bin, installing it there first
// when it is missing or not natsCLIVersion.
func findNatsCLI(t *testing.T) *natsCLI {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	name := "nats"
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	home := t.TempDir()
	cli := &natsCLI{path: filepath.Join(bin, name), env: []string{
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"XDG_DATA_HOME=" + filepath.Join(home, ".local", "share"),
		"PATH=" + os.Getenv("PATH"),
		"SHELL=/bin/sh", // for script(1)
		"TERM=dumb",
		"TMPDIR=" + os.TempDir(),
	}}
	if v, err := cli.version(); err == nil && v == natsCLIVersion {
		return cli
	} else if err == nil {
		t.Logf("%s is %s, not %s: installing %s", cli.path, v, natsCLIVersion, natsCLIVersion)
	}
	if testing.Short() {
		t.Skipf("the nats CLI %s is not in %s, and -short does not install it (make tools does)", natsCLIVersion, bin)
	}
	installNatsCLI(t, bin, name)
	if v, err := cli.version(); err != nil || v != natsCLIVersion {
		t.Fatalf("%s --version = %q, %v after installing %s", cli.path, v, err, natsCLIVersion)
	}
	return cli
}

// installNatsCLI runs `go install` into a temporary directory inside bin and
// renames the result into place, so a test process running at the same time
// never executes a half-written file.
func installNatsCLI(t *testing.T, bin, name string) {
	t.Helper()
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("installing the nats CLI needs the go command: %v", err)
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(bin, ".nats-install-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), natsCLIInstallTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, "install", natsCLIPackage+"@"+natsCLIVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp)
	t.Logf("installing the nats CLI: GOBIN=%s go install %s@%s", bin, natsCLIPackage, natsCLIVersion)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install %s@%s: %v\n%s", natsCLIPackage, natsCLIVersion, err, out)
	}
	if err := os.Rename(filepath.Join(tmp, name), filepath.Join(bin, name)); err != nil {
		t.Fatal(err)
	}
}

// version returns what `nats --version` prints.
func (c *natsCLI) version() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), natsCLITimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.path, "--version")
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// args returns the command line of a nats command.
func (c *natsCLI) args(args ...string) []string {
	return append([]string{"--server", c.server, "--user", c.creds.User, "--password", c.creds.Password, "--no-context"}, args...)
}

func (c *natsCLI) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = c.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a nats command and returns its output, failing the test if it
// fails or takes longer than natsCLITimeout.
func (c *natsCLI) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), natsCLITimeout)
	defer cancel()
	out, err := c.command(ctx, c.path, c.args(args...)...).CombinedOutput()
	t.Logf("nats %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// runInTerminal runs a nats command with a pseudo-terminal as its stdin and
// stdout, by way of script(1), and returns its output with CRLF turned back
// into LF.
func (c *natsCLI) runInTerminal(t *testing.T, args ...string) string {
	t.Helper()
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skipf("script(1), which gives the command a terminal, is not installed: %v", err)
	}
	full := append([]string{c.path}, c.args(args...)...)
	var scriptArgs []string
	switch runtime.GOOS {
	case "linux": // util-linux: script -q -e -c 'command line' /dev/null
		quoted := make([]string, len(full))
		for i, a := range full {
			quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		scriptArgs = []string{"-q", "-e", "-c", strings.Join(quoted, " "), "/dev/null"}
	default: // BSD and macOS: script -q /dev/null command args...
		scriptArgs = append([]string{"-q", "/dev/null"}, full...)
	}
	ctx, cancel := context.WithTimeout(t.Context(), natsCLITimeout)
	defer cancel()
	cmd := c.command(ctx, script, scriptArgs...)
	cmd.Stdin = nil // /dev/null: nothing to answer with
	raw, err := cmd.CombinedOutput()
	out := strings.ReplaceAll(string(raw), "\r\n", "\n")
	t.Logf("nats %s (in a terminal):\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("nats %s in a terminal: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// natsCLIProc is a nats command running in the background.
type natsCLIProc struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{} // closed when the output has been read to its end

	mu      sync.Mutex
	out     strings.Builder // stdout and stderr, as they come
	changed chan struct{}   // closed and replaced on every line
}

// start starts a nats command whose output the test reads as it comes. It
// is killed if it runs longer than natsCLITimeout or the test ends first.
func (c *natsCLI) start(t *testing.T, args ...string) *natsCLIProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natsCLITimeout)
	p := &natsCLIProc{cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	p.cmd = c.command(ctx, c.path, c.args(args...)...)
	r, w, err := os.Pipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		cancel()
		r.Close()
		w.Close()
		t.Fatalf("nats %s: %v", strings.Join(args, " "), err)
	}
	w.Close() // the child has its copy: r ends when the child exits
	go p.read(r)
	t.Cleanup(func() {
		p.cancel() // kills the command if still running
		<-p.done
		_ = p.cmd.Wait()
	})
	return p
}

func (p *natsCLIProc) read(r io.ReadCloser) {
	defer close(p.done)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		p.mu.Lock()
		p.out.WriteString(sc.Text())
		p.out.WriteByte('\n')
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
}

func (p *natsCLIProc) output() (string, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String(), p.changed
}

// waitOutput waits until the command has printed want.
func (p *natsCLIProc) waitOutput(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(natsCLITimeout)
	for {
		out, changed := p.output()
		if strings.Contains(out, want) {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			if out, _ := p.output(); !strings.Contains(out, want) {
				t.Fatalf("nats exited (%v) without printing %q:\n%s", p.cmd.Wait(), want, out)
			}
			return
		case <-timeout:
			t.Fatalf("nats did not print %q within %v:\n%s", want, natsCLITimeout, out)
		}
	}
}

// wait waits for the command to exit, fails the test unless it succeeded,
// and returns its output.
func (p *natsCLIProc) wait(t *testing.T) string {
	t.Helper()
	<-p.done // the output ends when the command exits, or is killed at its timeout
	err := p.cmd.Wait()
	out, _ := p.output()
	t.Logf("nats %s:\n%s", strings.Join(p.cmd.Args[1:], " "), out)
	if err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(p.cmd.Args[1:], " "), err, out)
	}
	return out
}

// natsCLIWaitInterest waits until the connection named name holds a
// subscription to subject on srv.
func natsCLIWaitInterest(t *testing.T, srv *server.Server, name, subject string) {
	t.Helper()
	deadline := time.Now().Add(natsCLITimeout)
	for {
		connz, err := srv.Connz(&server.ConnzOptions{Subscriptions: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range connz.Conns {
			if c.Name == name && slices.Contains(c.Subs, subject) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection %q subscribed to %s after %v", name, subject, natsCLITimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

func natsCLIJetStream(t *testing.T, ns *testenv.NATSServer) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(ns.Connect(t, ns.Harness))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// natsCLIWaitStream waits until the PRODUCTS stream holds n messages.
func natsCLIWaitStream(t *testing.T, js jetstream.JetStream, n uint64) {
	t.Helper()
	deadline := time.Now().Add(natsCLITimeout)
	for {
		var msgs uint64
		stream, err := js.Stream(t.Context(), broker.StreamName)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = stream.Info(t.Context()); err == nil {
				msgs = info.State.Msgs
			}
		}
		if msgs == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d messages after %v, want %d (%v)", msgs, natsCLITimeout, n, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

// natsCLIEvent is a change as the change log holds it.
type natsCLIEvent struct {
	seq, version int64
	subject      string
	json         string
}

// natsCLIEvents returns the changes after seq after, in seq order.
func natsCLIEvents(t *testing.T, pg *testenv.PG, after int64) []natsCLIEvent {
	t.Helper()
	rows, err := pg.DB.QueryContext(t.Context(),
		`SELECT seq, version, product_id, event::text FROM product_changes WHERE seq > $1 ORDER BY seq`, after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []natsCLIEvent
	for rows.Next() {
		var ev natsCLIEvent
		var product int64
		if err := rows.Scan(&ev.seq, &ev.version, &product, &ev.json); err != nil {
			t.Fatal(err)
		}
		ev.subject = change.Subject(product)
		out = append(out, ev)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatal(err)
	}
	return out
}
