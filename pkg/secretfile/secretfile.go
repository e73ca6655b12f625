// Package secretfile keeps generated secrets (passwords, tokens) in files
// only their owner may read. make run keeps its NATS credentials with it,
// make cluster its credentials and state.
package secretfile

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// MinLength is the shortest kept secret Keep accepts; shorter (or empty)
// ones are generated anew.
const MinLength = 16

// ErrCorrupt is returned (wrapped) by Keep for a file that is not the JSON
// it expects. Keep never overwrites such a file: the secrets in it may be
// in use (a running cluster's NATS configuration, say). The caller decides.
var ErrCorrupt = errors.New("not a valid secrets file")

// Write writes data to path with mode 0600, atomically: the data goes to a
// fresh temporary file beside it (created 0600 whatever a leftover had),
// which is then renamed over path, so that a reader never sees half a file
// and the secret is never in a file others may read.
func Write(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// WriteJSON is Write of v as indented JSON with a final newline.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return Write(path, append(data, '\n'))
}

// Keep reads the JSON file at path into v (a missing file leaves v as it
// is) and gives each of fields, which point into v, that holds fewer than
// MinLength characters a new random secret (crypto/rand.Text: 26 base32
// characters, 130 bits). When it generated any, it writes v back with
// WriteJSON; either way the file ends up mode 0600.
func Keep(path string, v any, fields ...*string) error {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("%s: %w (%v); remove it to generate new secrets", path, ErrCorrupt, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	changed := false
	for _, f := range fields {
		if len(*f) < MinLength {
			*f, changed = rand.Text(), true
		}
	}
	if changed {
		return WriteJSON(path, v)
	}
	// Kept from earlier: keep it private even if someone loosened its mode.
	return os.Chmod(path, 0o600)
}
