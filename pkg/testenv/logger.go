package testenv

import (
	"log/slog"
	"strings"
	"testing"
)

// Logger returns a logger for the code under test that writes warnings and
// errors through t.Log, so they show next to the test that caused them.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
