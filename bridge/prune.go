package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/productwatch/productwatch/pkg/sleep"
)

// pruner deletes published changes older than the retention window, in small
// batches so that no statement holds many row locks or runs for long.
type pruner struct {
	db        *sql.DB
	retention time.Duration
	interval  time.Duration
	batch     int
	logger    *slog.Logger
	metrics   *bridgeMetrics
}

// run prunes every interval until ctx ends.
func (p pruner) run(ctx context.Context) {
	for sleep.For(ctx, p.interval) {
		n, err := p.prune(ctx)
		if err != nil && ctx.Err() == nil {
			p.logger.Warn("pruning the change log failed", "err", err)
		}
		if n > 0 {
			p.logger.Info("pruned the change log", "rows", n, "retention", p.retention)
		}
	}
}

// prune deletes, batch by batch, the changes that are both published (at or
// below the cursor) and older than the retention window.
func (p pruner) prune(ctx context.Context) (int64, error) {
	var total int64
	for {
		res, err := p.db.ExecContext(ctx,
			`DELETE FROM product_changes WHERE seq IN (
			   SELECT seq FROM product_changes
			   WHERE seq <= (SELECT cursor_seq FROM bridge_cursor WHERE id = 1)
			     AND changed_at < now() - make_interval(secs => $1)
			   ORDER BY seq LIMIT $2)`,
			p.retention.Seconds(), p.batch)
		if err != nil {
			return total, fmt.Errorf("prune change log: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("prune change log: %w", err)
		}
		total += n
		p.metrics.pruned.Add(float64(n))
		if n < int64(p.batch) || ctx.Err() != nil {
			return total, nil
		}
	}
}
