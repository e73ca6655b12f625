// Package schema applies productwatch's embedded SQL migrations with goose.
//
// Both programs call [Migrator.Up] at start. Goose holds a PostgreSQL session
// advisory lock while it migrates, so replicas starting together apply each
// migration exactly once; a database that is already current is left alone.
package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/productwatch/productwatch/migrations"
)

// Migrator applies and checks the embedded migrations on one database. It is
// safe for concurrent use (goose serialises its own calls).
type Migrator struct {
	provider *goose.Provider
	logger   *slog.Logger
}

// New returns a Migrator for db. The advisory lock is retried every second for
// up to two minutes before Up gives up. logger may be nil.
func New(db *sql.DB, logger *slog.Logger) (*Migrator, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 120))
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithSessionLocker(locker), goose.WithSlog(logger))
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return &Migrator{provider: provider, logger: logger}, nil
}

// Up applies every pending migration and returns the version the database is
// at afterwards.
func (m *Migrator) Up(ctx context.Context) (int64, error) {
	results, err := m.provider.Up(ctx)
	if err != nil {
		return 0, fmt.Errorf("apply migrations: %w", err)
	}
	for _, r := range results {
		m.logger.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	version, err := m.provider.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return version, nil
}

// Current reports whether the database has every embedded migration applied.
// It does not take the migration lock, so readiness probes never wait on a
// migration in progress.
func (m *Migrator) Current(ctx context.Context) (bool, error) {
	pending, err := m.provider.HasPending(ctx)
	if err != nil {
		return false, fmt.Errorf("check migrations: %w", err)
	}
	return !pending, nil
}

// ErrPending is returned by Check while migrations remain to apply.
var ErrPending = errors.New("migrations pending")

// Check is a readiness check: nil when the schema is current, ErrPending
// while migrations remain, or the error that prevented checking.
func (m *Migrator) Check(ctx context.Context) error {
	current, err := m.Current(ctx)
	if err == nil && !current {
		err = ErrPending
	}
	return err
}

// UpRetrying applies the migrations like Up, retrying with backoff (250 ms
// doubling to 10 s) while it fails, typically because the database is not
// reachable yet. It returns nil once done, or ctx's error when ctx ends
// first. Every failure is logged.
func (m *Migrator) UpRetrying(ctx context.Context) error {
	delay := 250 * time.Millisecond
	for {
		version, err := m.Up(ctx)
		if err == nil {
			m.logger.Info("database schema current", "version", version)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m.logger.Warn("migrating the database failed; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

// Migrate is New followed by Up, for callers that migrate once and go on.
func Migrate(ctx context.Context, db *sql.DB, logger *slog.Logger) (int64, error) {
	m, err := New(db, logger)
	if err != nil {
		return 0, err
	}
	return m.Up(ctx)
}
