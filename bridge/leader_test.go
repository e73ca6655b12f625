package main

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestStandbyClearsStalls: a bridge that another bridge's lock keeps
// waiting reports standby, so failures it saw while it led (a stall watch
// it would otherwise keep showing in /readyz) are cleared.
func TestStandbyClearsStalls(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := pg.DB.Conn(ctx) // the other bridge
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, leaderLockKey); err != nil {
		t.Fatal(err)
	}
	stalls := newStallWatch(time.Nanosecond)
	stalls.failed(io.ErrUnexpectedEOF) // seen while this bridge led
	var standbys atomic.Int64
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		leadership{db: pg.DB, retry: 10 * time.Millisecond, logger: slog.New(slog.DiscardHandler),
			standby: func() { stalls.done(); standbys.Add(1) }}.run(runCtx, func(context.Context) error {
			t.Error("led although another bridge holds the lock")
			return nil
		})
	}()
	testenv.WaitUntil(t, 10*time.Second, "a standby report", func() bool { return standbys.Load() > 0 })
	stop()
	<-done
	if err := stalls.check(ctx); err != nil {
		t.Errorf("a standby bridge still reports %v", err)
	}
}
