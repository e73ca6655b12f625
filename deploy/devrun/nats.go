package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/productwatch/productwatch/pkg/secretfile"
)

// natsCLIVersion is the nats CLI `make tools` and `make run` install into
// bin/ (the Makefile's NATS_CLI_VERSION).
const natsCLIVersion = "v0.5.0"

// natsCredentials are the passwords of the embedded NATS server's users,
// generated on the first `make run` and kept in .run/nats-credentials.json
// (mode 0600), like the API token.
type natsCredentials struct {
	Bridge  string `json:"bridge"`
	Gateway string `json:"gateway"`
	Debug   string `json:"debug"`
}

// natsCredentialsFile and natsContextFile are in the state directory.
const (
	natsCredentialsFile = "nats-credentials.json"
	natsContextFile     = "nats-context.json"
)

// loadNATSCredentials returns the kept credentials, generating and keeping
// them when there are none yet. A file that is not valid JSON is replaced:
// make run's embedded server takes the passwords anew on every start, so
// nothing else depends on the old ones.
func loadNATSCredentials(stateDir string) (natsCredentials, error) {
	path := filepath.Join(stateDir, natsCredentialsFile)
	var c natsCredentials
	err := secretfile.Keep(path, &c, &c.Bridge, &c.Gateway, &c.Debug)
	if errors.Is(err, secretfile.ErrCorrupt) {
		c = natsCredentials{}
		if err = os.Remove(path); err == nil {
			err = secretfile.Keep(path, &c, &c.Bridge, &c.Gateway, &c.Debug)
		}
	}
	if err != nil {
		return natsCredentials{}, fmt.Errorf("keep the NATS credentials: %w", err)
	}
	return c, nil
}

// writeNATSContext writes a nats CLI context (a JSON file the CLI loads with
// --context <path>.json) for the debug user on natsURL, mode 0600. It is
// rewritten on every run: the embedded server's port may change.
func writeNATSContext(path, natsURL string, c natsCredentials) error {
	if err := secretfile.WriteJSON(path, map[string]string{
		"description": "productwatch make run: the embedded NATS server, as the read-only debug user",
		"url":         natsURL,
		"user":        "debug",
		"password":    c.Debug,
	}); err != nil {
		return fmt.Errorf("write the nats CLI context: %w", err)
	}
	return nil
}

// natsCLI is what the banner says about the nats CLI.
type natsCLI struct {
	command     string // the nats command line up to the subcommand, as the user types it
	note        string // how that command reaches the server
	missing     string // how to install the CLI when it is not there; empty when it is
	contextFile string // the context file to write; empty with an external NATS_URL
}

// natsCLILine builds the banner's nats command for the CLI in binDir: with
// the embedded server, a context file in stateDir that names the server
// and the debug user (so the line works as printed, on whatever port the
// server got); with an external NATS_URL, --server and a note that
// credentials are the operator's.
func natsCLILine(binDir, stateDir, natsURL string, creds natsCredentials) natsCLI {
	path := filepath.Join(binDir, "nats")
	var cli natsCLI
	if creds.Debug != "" {
		cli.contextFile = filepath.Join(stateDir, natsContextFile)
		cli.command = shellQuote(displayPath(path)) + " --context " + shellQuote(displayPath(cli.contextFile))
		cli.note = "as the read-only NATS user debug; " + displayPath(cli.contextFile) + " holds the server's URL and the password"
	} else {
		cli.command = shellQuote(displayPath(path)) + " --server " + shellQuote(natsURL)
		cli.note = "NATS_URL is yours: add --user and --password of a NATS user allowed to read"
	}
	if info, err := os.Stat(path); err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		cli.missing = fmt.Sprintf("\n  The nats CLI is not installed yet: `make tools` installs it, or\n"+
			"  GOBIN=%s go install github.com/nats-io/natscli/nats@%s\n", shellQuote(binDir), natsCLIVersion)
	}
	return cli
}

// displayPath returns path relative to the working directory when it lies
// below it (bin/nats, .run/…), else as it is.
func displayPath(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	rel, err := filepath.Rel(wd, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return abs
	}
	if !strings.Contains(rel, string(filepath.Separator)) {
		return "." + string(filepath.Separator) + rel // a bare name would be looked up on PATH
	}
	return rel
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@=+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
