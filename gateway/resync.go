package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/hub"
	"github.com/productwatch/productwatch/pkg/sleep"
)

// resyncQueue collects the products whose changes may have been missed:
// all watched ones after a NATS reconnect (messages published while the
// gateway was cut off never arrive), or one product whose messages NATS
// dropped (a dispatcher fell behind). Safe for concurrent use; the requests
// come from nats.go's goroutines.
type resyncQueue struct {
	mu     sync.Mutex
	all    bool
	ids    map[int64]struct{}
	signal chan struct{}
}

func newResyncQueue() *resyncQueue {
	return &resyncQueue{ids: make(map[int64]struct{}), signal: make(chan struct{}, 1)}
}

// requestAll asks for every watched product (broker.Hooks.OnReconnect).
func (q *resyncQueue) requestAll() {
	q.mu.Lock()
	q.all = true
	q.mu.Unlock()
	q.wake()
}

// lost asks for the product of a subscription whose messages were dropped
// (broker.Hooks.OnSlowConsumer).
func (q *resyncQueue) lost(sub *nats.Subscription) {
	if sub == nil {
		return
	}
	if hub.IsAllSubscription(sub) { // the watch-all subscription (watchall.go)
		q.requestAll()
		return
	}
	id, ok := change.ProductID(sub.Subject)
	if !ok {
		return
	}
	q.mu.Lock()
	q.ids[id] = struct{}{}
	q.mu.Unlock()
	q.wake()
}

// retry asks again for ids whose re-sync failed.
func (q *resyncQueue) retry(ids []int64) {
	q.mu.Lock()
	for _, id := range ids {
		q.ids[id] = struct{}{}
	}
	q.mu.Unlock()
	q.wake()
}

func (q *resyncQueue) wake() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take returns and clears the requests.
func (q *resyncQueue) take() (all bool, ids []int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	all, q.all = q.all, false
	for id := range q.ids {
		ids = append(ids, id)
		delete(q.ids, id)
	}
	return all, ids
}

// resyncer answers the queue: it reads the current state of the products
// from PostgreSQL and hands it to their local subscribers, whose outboxes
// drop whatever they already have (versions only go up).
type resyncer struct {
	queue   *resyncQueue
	hub     *hub.Hub
	catchUp *catchUp
	logger  *slog.Logger
	metrics *wsMetrics
	panics  *panics
	timeout time.Duration // deadline of each chunk's read
}

// run serves requests until ctx ends, retrying a failed read after a pause.
// A panic in one round is recovered, counted, and that round retried.
func (r *resyncer) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.queue.signal:
		}
		r.round(ctx)
	}
}

// round answers the requests queued so far.
func (r *resyncer) round(ctx context.Context) {
	all, ids := r.queue.take()
	retry := func() {
		sleep.For(ctx, time.Second)
		r.queue.retry(ids)
	}
	defer r.panics.recovered("resyncer", retry)
	if all {
		ids = r.hub.Watched()
		r.hub.MissedAll() // watch-all clients resume by seq themselves (watchall.go)
	}
	if len(ids) == 0 {
		return
	}
	if err := r.resync(ctx, ids); err != nil {
		r.logger.Warn("re-sync after NATS trouble failed; retrying", "products", len(ids), "err", err)
		retry()
		return
	}
	r.logger.Info("re-synced products from the database", "products", len(ids))
}

func (r *resyncer) resync(ctx context.Context, ids []int64) error {
	const chunk = 1000
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		readCtx, cancel := context.WithTimeout(ctx, r.timeout)
		current, gone, err := r.catchUp.current(readCtx, part)
		cancel()
		if err != nil {
			return err
		}
		for _, msgs := range []map[int64]catchUpMsg{current, gone} {
			for id, m := range msgs {
				for _, sub := range r.hub.SubscribersOf(id) {
					sub.Deliver(id, m.version, m.data)
				}
			}
		}
		r.metrics.resyncs.Add(float64(len(part)))
	}
	return nil
}
