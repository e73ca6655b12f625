package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/protocol"
)

// Watch-all: {"command":"subscribe","all":true} makes a connection receive
// the changes of every product, present and future, through the hub's one
// product.* subscription; {"command":"unsubscribe","all":true} ends it. The
// snapshot of all products is the REST list (GET /products, by pages); a
// client that had been watching resumes with "since", the highest change
// seq it has seen: the gateway sends every change with a higher seq from
// the change log, in seq order, or an error resync (with "all":true) when
// the log no longer holds all of them.
//
// A connection that watches all products and some products one by one gets
// each change once: both deliveries land in the same outbox, which drops an
// event whose version is not newer than one it already queued or wrote.

// resumeBatch is how many change log rows a resume reads at a time.
const resumeBatch = 1000

// allClient is a connection's watch-all subscription, as the hub sees it.
type allClient struct{ c *wsConn }

// Deliver queues a change in the connection's outbox (hub.Subscriber).
func (a *allClient) Deliver(productID, version int64, event []byte) {
	a.c.outbox.Deliver(productID, version, event)
}

// missedAll is the answer MissedChanges gives every watch-all client: the
// same bytes for all of them, encoded once (answers are never modified).
var missedAll = protocol.AppendAllError(nil, nil, protocol.CodeResync,
	"live changes may have been missed (the gateway lost NATS for a while): subscribe again with since")

// MissedChanges tells the client to resume with since: NATS reconnected or
// dropped messages, so live changes may have been missed (hub.AllResyncer).
func (a *allClient) MissedChanges() {
	a.c.srv.metrics.commandErrors.WithLabelValues(protocol.CodeResync).Inc()
	a.c.answer(missedAll)
}

// watchAll handles a watch-all command on the connection's reader, which
// owns c.all: it subscribes (or unsubscribes) and hands the database part
// (the log position for the ack, the resume) to the catch-up worker, so
// that the reader never waits on the database.
func (c *wsConn) watchAll(ctx context.Context, cmd protocol.Command) {
	if cmd.Name == protocol.Unsubscribe {
		c.stopWatchingAll()
		c.answer(protocol.AppendAllAck(nil, cmd.ID, cmd.Name, -1, 0))
		return
	}
	if c.all == nil {
		a := &allClient{c: c}
		if err := c.srv.hub.SubscribeAll(ctx, a); err != nil {
			c.srv.hub.UnsubscribeAll(a)
			c.srv.logger.Warn("watch-all subscribe failed", "conn_id", c.id, "err", err)
			c.answerAllError(cmd.ID, protocol.CodeUnavailable, "the gateway could not subscribe; subscribe again")
			return
		}
		c.subsMu.Lock()
		c.all = a
		c.subsMu.Unlock()
	}
	c.queueCatchUp(ctx, cmd)
}

// resumeAll answers a watch-all subscribe on the catch-up worker, within
// ctx's deadline: the ack (once NATS has confirmed the subscription, so a
// client that reads the REST list after the ack misses no change; an event
// may come before it: it names no products), then, with since, the changes
// the client missed.
func (c *wsConn) resumeAll(ctx context.Context, cmd protocol.Command) {
	// The log's newest seq now: every change with a higher one is made
	// after the subscription, so it arrives live. A client that sees no
	// change before it leaves resumes from there.
	var position int64
	if err := c.srv.catchUp.db.QueryRowContext(ctx,
		`SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM product_changes_seq`).Scan(&position); err != nil {
		c.srv.logger.Warn("watch-all: reading the log position failed", "conn_id", c.id, "err", err)
		position = 0 // the ack then carries none: the client resumes from what it saw
	}
	c.answer(protocol.AppendAllAck(nil, cmd.ID, cmd.Name, cmd.Since, position))
	if cmd.Since < 0 {
		return
	}
	// Interest first (above), the change log second: a change committed
	// meanwhile arrives both ways and the outbox keeps one. A client that
	// unsubscribed meanwhile gets no more of the replay.
	pruned, err := replaySince(ctx, c.srv.catchUp.db, cmd.Since, func(productID, version int64, event []byte) {
		c.subsMu.Lock()
		if c.all != nil {
			c.outbox.Deliver(productID, version, event)
		}
		c.subsMu.Unlock()
	})
	switch {
	case err != nil && errors.Is(ctx.Err(), context.Canceled):
		// the connection is ending
	case err != nil:
		c.srv.logger.Warn("watch-all resume failed", "conn_id", c.id, "since", cmd.Since, "err", err)
		msg := "could not read the change log; subscribe again to retry"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = "the database did not answer within " + c.srv.cfg.catchUpTimeout.String() + "; subscribe again to retry"
		}
		c.answerAllError(cmd.ID, protocol.CodeUnavailable, msg)
	case pruned:
		c.answerAllError(cmd.ID, protocol.CodeResync,
			"the change log no longer holds every change after since: reload the products over REST (GET /products)")
	}
}

// stopWatchingAll gives the watch-all subscription back (unsubscribe all,
// or the socket ends), and has the outbox forget the products the
// connection does not watch one by one: what it knew of every product
// while it watched all would otherwise stay for as long as it lives.
func (c *wsConn) stopWatchingAll() {
	if c.all != nil {
		c.srv.hub.UnsubscribeAll(c.all)
		c.subsMu.Lock()
		c.all = nil
		c.outbox.Keep(func(id int64) bool {
			_, ok := c.subs[id]
			return ok
		})
		c.subsMu.Unlock()
	}
}

func (c *wsConn) answerAllError(id []byte, code, message string) {
	c.srv.metrics.commandErrors.WithLabelValues(code).Inc()
	c.answer(protocol.AppendAllError(nil, id, code, message))
}

// replaySince hands deliver every change in the log with a seq above since,
// in seq order, read in one REPEATABLE READ snapshot. pruned reports that
// the log may have lost changes after since (its oldest row is past
// since+1, or it is empty while the sequence has moved past since): then
// nothing is delivered.
//
// A seq is taken when a change is made, not when it commits; a change with a
// lower seq than since that committed after the client left is therefore
// not sent (see the README, "Watch everything").
func replaySince(ctx context.Context, db *sql.DB, since int64, deliver func(productID, version int64, event []byte)) (pruned bool, err error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return false, fmt.Errorf("resume from seq %d: %w", since, err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to keep
	var oldest sql.NullInt64
	var last int64
	var called bool
	if err := tx.QueryRowContext(ctx,
		`SELECT (SELECT min(seq) FROM product_changes), last_value, is_called FROM product_changes_seq`).Scan(&oldest, &last, &called); err != nil {
		return false, fmt.Errorf("resume from seq %d: read the log's bounds: %w", since, err)
	}
	if !called {
		last = 0
	}
	if oldest.Valid && oldest.Int64 > since+1 || !oldest.Valid && last > since {
		return true, nil
	}
	for after := since; ; {
		rows, err := tx.QueryContext(ctx,
			`SELECT seq, product_id, version, event::text FROM product_changes
			 WHERE seq > $1 ORDER BY seq LIMIT $2`, after, resumeBatch)
		if err != nil {
			return false, fmt.Errorf("resume from seq %d: %w", since, err)
		}
		n := 0
		for rows.Next() {
			var id, version int64
			var event []byte
			if err := rows.Scan(&after, &id, &version, &event); err != nil {
				rows.Close()
				return false, fmt.Errorf("resume from seq %d: %w", since, err)
			}
			deliver(id, version, event)
			n++
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return false, fmt.Errorf("resume from seq %d: %w", since, err)
		}
		if n < resumeBatch {
			return false, nil
		}
	}
}

// allMetrics are the watch-all gauges: how many connections watch every
// product, and how many product.* subscriptions the gateway holds in NATS
// (0 or 1, however many connections watch).
func allMetrics(h *hub.Hub) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_all_subscribers",
			Help: "Connections watching every product."}, func() float64 { return float64(h.AllSubscribers()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "productwatch_ws_all_nats_subscriptions",
			Help: "product.* NATS subscriptions of this gateway: 1 while any connection watches every product, shared by all of them."},
			func() float64 {
				if h.AllSubscribed() {
					return 1
				}
				return 0
			}),
	}
}
