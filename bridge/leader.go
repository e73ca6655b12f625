package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/productwatch/productwatch/pkg/sleep"
)

// leaderLockKey is the PostgreSQL advisory lock the leading bridge holds
// ("pwbridge" in ASCII). Advisory locks are per database, so bridges of
// different databases never compete.
const leaderLockKey int64 = 0x7077627269646765

// leadership holds the leader lock on a dedicated connection: the lock lives
// exactly as long as that session, so a bridge that dies (or whose
// connection dies) releases it at once and a standby takes over at its next
// try.
type leadership struct {
	db     *sql.DB
	retry  time.Duration
	logger *slog.Logger
	// standby, when set, is called whenever another bridge holds the lock:
	// the failures this bridge saw while it led are no longer its to report.
	standby func()
}

// run tries to take the lock every retry interval; while it holds it, it
// runs lead with a context that ends when the lock's connection is found
// dead (checked every retry interval) or ctx ends. It returns when ctx ends.
func (l leadership) run(ctx context.Context, lead func(ctx context.Context) error) {
	waiting := false
	for ctx.Err() == nil {
		conn, held, err := l.tryLock(ctx)
		if err != nil && ctx.Err() == nil {
			l.logger.Warn("trying to take the leader lock failed", "err", err)
		}
		if !held {
			if err == nil && l.standby != nil {
				l.standby()
			}
			if !waiting && err == nil {
				l.logger.Info("another bridge leads; standing by", "retry_every", l.retry)
				waiting = true
			}
			sleep.For(ctx, l.retry)
			continue
		}
		waiting = false
		l.logger.Info("leading: this bridge publishes")
		err = l.holdWhile(ctx, conn, lead)
		if ctx.Err() == nil {
			l.logger.Warn("stopped leading", "err", err)
			sleep.For(ctx, l.retry)
		}
	}
}

// tryLock takes a connection and tries the lock on it; on success the
// connection is returned, holding the lock.
func (l leadership) tryLock(ctx context.Context) (*sql.Conn, bool, error) {
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("leader lock connection: %w", err)
	}
	var held bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, leaderLockKey).Scan(&held); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("pg_try_advisory_lock: %w", err)
	}
	if !held {
		conn.Close()
		return nil, false, nil
	}
	return conn, true, nil
}

// holdWhile runs lead while conn (which holds the lock) stays alive, then
// releases the lock and the connection.
func (l leadership) holdWhile(ctx context.Context, conn *sql.Conn, lead func(context.Context) error) error {
	leadCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for sleep.For(leadCtx, l.retry) {
			pingCtx, stop := context.WithTimeout(leadCtx, l.retry+time.Second)
			err := conn.PingContext(pingCtx)
			stop()
			if err != nil && leadCtx.Err() == nil {
				cancel(fmt.Errorf("leader lock connection lost: %w", err))
				return
			}
		}
	}()
	err := lead(leadCtx)
	if cause := context.Cause(leadCtx); cause != nil && cause != ctx.Err() {
		err = cause
	}
	cancel(nil)
	<-watched
	unlockCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer stop()
	_, _ = conn.ExecContext(unlockCtx, `SELECT pg_advisory_unlock($1)`, leaderLockKey) // gone with the session anyway
	conn.Close()
	return err
}
