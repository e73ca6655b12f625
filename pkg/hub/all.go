package hub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/change"
)

// allSubject is what watch-all subscribers receive: every product.
const allSubject = change.SubjectPrefix + "*"

// AllResyncer is implemented by watch-all subscribers that want to know
// when changes may have been missed (NATS reconnected, or dropped messages):
// MissedChanges is then called, from any goroutine; it must not block. The
// subscriber is expected to resume from the change log (by seq).
type AllResyncer interface {
	MissedChanges()
}

// allWatchers is the watch-all side of a Hub: one NATS subscription on
// product.* shared by every watch-all subscriber of the gateway, made for
// the first and removed with the last. Its messages go through the same
// dispatchers as the per-product ones (a product always on the same one, so
// its order holds) and reach subscribers through the same Subscriber
// interface, so ordering, conflation and limits are those of the outboxes.
type allWatchers struct {
	mu          sync.Mutex // guards sub and the writes of subscribers
	sub         *nats.Subscription
	subscribers atomic.Pointer[[]Subscriber] // copy-on-write, read without the lock
	closed      bool
	subscribed  atomic.Bool   // sub != nil, for metrics, read without waiting on mu
	stop        chan struct{} // closed by Run's end: the forwarding callback stops waiting
}

func newAllWatchers() *allWatchers {
	w := &allWatchers{stop: make(chan struct{})}
	empty := []Subscriber{}
	w.subscribers.Store(&empty)
	return w
}

// SubscribeAll adds sub to the watch-all subscribers, subscribing to
// product.* in NATS for the first one, and waits until NATS has confirmed
// that subscription (at most Options.FlushWait, and never past ctx): a
// change published after SubscribeAll returns reaches sub. Adding a
// subscriber twice leaves it as it is.
func (h *Hub) SubscribeAll(ctx context.Context, sub Subscriber) error {
	w := h.all
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	old := *w.subscribers.Load()
	if contains(old, sub) {
		return nil
	}
	added := false
	if w.sub == nil {
		ns, err := h.nc.Subscribe(allSubject, h.forwardAll)
		if err != nil {
			return fmt.Errorf("subscribe to %s: %w", allSubject, err)
		}
		// A watch-all subscription carries every change of every product:
		// let it hold far more than nats.go's default before NATS counts
		// it a slow consumer.
		_ = ns.SetPendingLimits(1<<20, 256<<20)
		w.sub = ns
		w.subscribed.Store(true)
		added = true
	}
	next := make([]Subscriber, len(old), len(old)+1)
	copy(next, old)
	next = append(next, sub)
	w.subscribers.Store(&next)
	if added {
		if err := h.confirm(ctx); err != nil {
			return fmt.Errorf("confirm NATS subscription %s: %w", allSubject, err)
		}
	}
	return nil
}

// UnsubscribeAll removes sub from the watch-all subscribers; the last one
// leaving removes the product.* subscription from NATS.
func (h *Hub) UnsubscribeAll(sub Subscriber) {
	w := h.all
	w.mu.Lock()
	defer w.mu.Unlock()
	old := *w.subscribers.Load()
	i := index(old, sub)
	if i < 0 {
		return
	}
	next := make([]Subscriber, 0, len(old)-1)
	next = append(append(next, old[:i]...), old[i+1:]...)
	w.subscribers.Store(&next)
	if len(next) == 0 && w.sub != nil {
		_ = w.sub.Unsubscribe() // a closed connection has no interest to remove
		w.sub = nil
		w.subscribed.Store(false)
	}
}

// AllSubscribers returns how many subscribers watch every product.
func (h *Hub) AllSubscribers() int { return len(*h.all.subscribers.Load()) }

// AllSubscribed reports whether the hub holds its product.* subscription.
func (h *Hub) AllSubscribed() bool { return h.all.subscribed.Load() }

// MissedAll tells every watch-all subscriber that implements AllResyncer
// that changes may have been missed (after a NATS reconnect, for one).
func (h *Hub) MissedAll() {
	for _, sub := range *h.all.subscribers.Load() {
		if r, ok := sub.(AllResyncer); ok {
			r.MissedChanges()
		}
	}
}

// forwardAll is the product.* subscription's callback (one nats.go goroutine,
// in arrival order): it hands the message to its product's dispatcher, so
// that per product, watch-all and per-product deliveries keep one order. It
// waits when the dispatcher is full (NATS then buffers, up to the pending
// limits) until the hub stops.
func (h *Hub) forwardAll(msg *nats.Msg) {
	id, ok := change.ProductID(msg.Subject)
	if !ok {
		return
	}
	select {
	case h.dispatcher(id) <- msg:
	case <-h.all.stop:
	}
}

// isAll reports whether msg came through the product.* subscription.
func (h *Hub) isAll(msg *nats.Msg) bool { return IsAllSubscription(msg.Sub) }

// IsAllSubscription reports whether sub is a hub's watch-all subscription
// (product.*), e.g. one NATS reports as a slow consumer.
func IsAllSubscription(sub *nats.Subscription) bool {
	return sub != nil && sub.Subject == allSubject
}

// deliverAll hands a product.* message to every watch-all subscriber.
func (h *Hub) deliverAll(id, version int64, event []byte) {
	subs := *h.all.subscribers.Load()
	h.fanOut(&h.fan[h.dispatcherIndex(id)], subs, id, version, event) // on the product's dispatcher, which owns that state
	h.delivered.Add(int64(len(subs)))
}

// closeAll ends the watch-all side when Run returns.
func (h *Hub) closeAll() {
	w := h.all
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	close(w.stop)
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
		w.sub = nil
		w.subscribed.Store(false)
	}
}
