// Package pgservertest gives tests a place for the data directories of the
// private PostgreSQL clusters they start with pgserver.StartPrivate. It is
// its own package, importing nothing of productwatch, so that pgserver's own
// tests can use it as well as the packages above pgserver.
package pgservertest

import (
	"os"
	"testing"
)

// Parent returns a fresh temporary directory, named after prefix, to put a
// cluster's data directory in; it is removed when the test ends. It is mode
// 0711, not t.TempDir's 0700, so that the unprivileged user the server runs
// as when the tests run as root can pass through (see pgserver.Options.Dir).
func Parent(t testing.TB, prefix string) string {
	t.Helper()
	parent, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(parent); err != nil {
			t.Errorf("remove %s: %v", parent, err)
		}
	})
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	return parent
}
