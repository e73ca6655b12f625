// Package logging builds the log/slog logger of a productwatch process from
// its LOG_LEVEL and LOG_FORMAT settings.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/productwatch/productwatch/pkg/envflag"
)

// New returns a logger writing to w. level is debug, info (default), warn or
// error; format is json (default, for machines) or text (for people).
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.TrimSpace(level))); err != nil && level != "" {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
}

// Options are the logging settings every productwatch program takes.
type Options struct {
	Level  string // LOG_LEVEL: debug, info (default), warn, error
	Format string // LOG_FORMAT: json (default) or text
}

// Register defines -log-level and -log-format (LOG_LEVEL, LOG_FORMAT) on set.
func (o *Options) Register(set *envflag.Set) {
	set.String(&o.Level, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	set.String(&o.Format, "log-format", "LOG_FORMAT", "json", "json or text")
}

// New returns the logger the options describe, writing to w.
func (o Options) New(w io.Writer) (*slog.Logger, error) { return New(w, o.Level, o.Format) }
