package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// cookbookHeading is the section of the operations guide whose commands
// checkCookbook runs.
const cookbookHeading = "## nats CLI cookbook"

// cookbookCommandTimeout bounds one cookbook command: every `nats sub` of
// the cookbook says --count, and changes are made while it runs.
const cookbookCommandTimeout = 20 * time.Second

// defaultCookbook is the operations guide below the repository root when
// it has the cookbook section, else deploy/cluster/README.md.
func defaultCookbook(root string) string {
	guide := filepath.Join(root, "deploy", "README.md")
	if data, err := os.ReadFile(guide); err == nil && bytes.Contains(data, []byte(cookbookHeading)) {
		return guide
	}
	return filepath.Join(root, "deploy", "cluster", "README.md")
}

// cookbookCommand is one command line of the cookbook and what it should do.
type cookbookCommand struct {
	line   string // as written, without the trailing marker comment
	denied bool   // marked "# denied": the debug user must be refused
}

// parseCookbook returns the command lines of the cookbook section of a
// Markdown document: the lines of its ```sh blocks that start with "nats ".
// A line ending in "# denied" must fail with a permissions error.
func parseCookbook(r io.Reader) ([]cookbookCommand, error) {
	var cmds []cookbookCommand
	sc := bufio.NewScanner(r)
	inSection, inFence, inBlock := false, false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			// A fence opens or closes a block; only sh blocks (or blocks
			// without a language) of the section hold commands.
			inFence = !inFence
			inBlock = inFence && inSection && (strings.TrimSpace(line) == "```sh" || strings.TrimSpace(line) == "```")
		case inFence && !inBlock:
		case strings.HasPrefix(line, "## "):
			inSection = strings.TrimSpace(line) == cookbookHeading
		case !inSection:
		case inBlock && strings.HasPrefix(strings.TrimSpace(line), "nats "):
			text := strings.TrimSpace(line)
			cmd := cookbookCommand{line: text}
			if i := strings.LastIndex(text, "# "); i > 0 {
				marker := strings.TrimSpace(text[i+2:])
				cmd.line = strings.TrimSpace(text[:i])
				cmd.denied = marker == "denied"
			}
			cmds = append(cmds, cmd)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(cmds) == 0 {
		return nil, fmt.Errorf("no nats command in a section %q", cookbookHeading)
	}
	return cmds, nil
}

// permissionDenied matches how nats-server and the CLI report a refusal.
var permissionDenied = regexp.MustCompile(`(?i)permissions? violation|authorization|no responders|not authorized|permission denied`)

// productOne is how the cookbook names a product: the checker replaces it
// with a product that exists in the cluster.
var productOne = regexp.MustCompile(`\bproduct\.1\b`)

// checkCookbook runs every command of the cookbook against the cluster as
// the debug user, each in a terminal (script(1): nats stream view wants
// one), with a fresh HOME (no nats contexts), while a product changes every
// 300 ms through the load balancer. It reports each command and fails if
// one fails (or, marked denied, succeeds).
func checkCookbook(ctx context.Context, out io.Writer, c *cluster, readme, natsCLI string) error {
	f, err := os.Open(readme)
	if err != nil {
		return err
	}
	cmds, err := parseCookbook(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", readme, err)
	}
	cli, err := filepath.Abs(natsCLI)
	if err != nil {
		return err
	}
	if _, err := os.Stat(cli); err != nil {
		return fmt.Errorf("the nats CLI (make tools installs it): %w", err)
	}
	script, err := exec.LookPath("script")
	if err != nil {
		return fmt.Errorf("script(1) gives the commands a terminal: %w", err)
	}
	home, err := os.MkdirTemp("", "productwatch-cookbook-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	pathDir := filepath.Join(home, "bin")
	if err := os.MkdirAll(pathDir, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(cli, filepath.Join(pathDir, "nats")); err != nil {
		return err
	}

	writer, err := newRESTWriter(c)
	if err != nil {
		return err
	}
	id, err := writer.create(ctx)
	if err != nil {
		return fmt.Errorf("create a product to watch: %w", err)
	}
	ctx, stopChanges := context.WithCancel(ctx)
	var changes sync.WaitGroup
	changes.Go(func() {
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = writer.update(ctx, id)
			}
		}
	})
	defer changes.Wait()
	defer stopChanges()

	env := append([]string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"PATH=" + pathDir + string(os.PathListSeparator) + os.Getenv("PATH"), "SHELL=/bin/sh", "TERM=dumb"}, c.debugEnv()...)
	var failed []string
	for _, cmd := range cmds {
		line := productOne.ReplaceAllString(cmd.line, "product."+strconv.FormatInt(id, 10))
		runCtx, cancel := context.WithTimeout(ctx, cookbookCommandTimeout)
		run := exec.CommandContext(runCtx, script, "-q", "-e", "-c", line, "/dev/null")
		run.Env = env
		run.WaitDelay = 2 * time.Second
		start := time.Now()
		raw, err := run.CombinedOutput()
		cancel()
		output := strings.ReplaceAll(string(raw), "\r\n", "\n")
		ok := err == nil && !permissionDenied.MatchString(output)
		if cmd.denied {
			ok = permissionDenied.MatchString(output) // some refusals are reported while the CLI exits 0
		}
		verdict := "ok"
		if !ok {
			verdict = "FAILED"
			failed = append(failed, cmd.line)
		}
		fmt.Fprintf(out, "%-6s %s  (%v)\n", verdict, line, time.Since(start).Round(time.Millisecond))
		if !ok {
			fmt.Fprintf(out, "       exit: %v\n%s\n", err, indent(output))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d cookbook commands failed: %s", len(failed), len(cmds), strings.Join(failed, "; "))
	}
	fmt.Fprintf(out, "all %d cookbook commands of %s work against the cluster\n", len(cmds), readme)
	return nil
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 15 {
		lines = append(lines[:15], "...")
	}
	return "       " + strings.Join(lines, "\n       ")
}

// restWriter changes products through the load balancer's REST API.
type restWriter struct {
	base   string
	token  string
	client *http.Client
}

func newRESTWriter(c *cluster) (*restWriter, error) {
	tlsCfg, err := clientTLS(c.st.Spec.StateDir)
	if err != nil {
		return nil, err
	}
	return &restWriter{
		base:   "https://" + c.st.Spec.Ports.HTTPSAddr,
		token:  c.creds.APIToken,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 64}},
	}, nil
}

func (w *restWriter) do(ctx context.Context, method, path, contentType, body string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, w.base+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+w.token)
	req.Header.Set("Content-Type", contentType)
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return data, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	return data, nil
}

// create makes a product and returns its id.
func (w *restWriter) create(ctx context.Context) (int64, error) {
	data, err := w.do(ctx, http.MethodPost, "/products", "application/json",
		`{"manufacturer":"productwatch","productName":"cluster check","pricePerUnit":"1.00EUR","unitsAvailable":0}`)
	if err != nil {
		return 0, err
	}
	var p struct {
		ProductID int64 `json:"productId"`
	}
	if err := json.Unmarshal(data, &p); err != nil || p.ProductID == 0 {
		return 0, errors.Join(fmt.Errorf("POST /products answered %s", data), err)
	}
	return p.ProductID, nil
}

// update changes one product's stock (a merge patch: a new version).
func (w *restWriter) update(ctx context.Context, id int64) error {
	_, err := w.do(ctx, http.MethodPatch, "/products/"+strconv.FormatInt(id, 10), "application/merge-patch+json",
		fmt.Sprintf(`{"unitsAvailable":%d}`, time.Now().UnixNano()%1000))
	return err
}
