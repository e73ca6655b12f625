package hub

import (
	"errors"
	"sync"
	"time"
)

// ErrControlFull is returned by Outbox.Control when the client has not read
// its last maxControl answers: it sends commands faster than it reads.
var ErrControlFull = errors.New("too many unread answers")

// Outbox is one connection's queue of messages to write, bounded by the
// number of products it watches: per product at most one event waits, the
// newest (a newer one replaces, "conflates", a waiting one; each event
// carries the whole product, so nothing is lost), and an event at or below a
// version already queued or written for that product is dropped, so the
// client never sees a version go backwards, snapshots and resumes included.
// Answers to commands (acks, errors) wait in a small FIFO of their own and go
// first.
//
// Deliver and Control may be called from any goroutine; Pop from one writer.
type Outbox struct {
	mu         sync.Mutex
	latest     map[int64]int64        // newest version accepted per product
	pending    map[int64]pendingEvent // the event waiting per product
	order      []int64                // products with a waiting event, oldest first (from head)
	head       int
	control    [][]byte
	maxControl int
	ready      chan struct{}
	conflated  int64
	stale      int64
	onConflate func() // optional metric hook; must not block or allocate
	notify     func() // optional: called instead of signalling ready
}

// OnReady sets a function called (outside the outbox's lock) each time
// something is queued, instead of signalling the Ready channel: a writer
// that runs only while there is something to write starts from it. Set it
// before the outbox is shared; it must not block.
func (o *Outbox) OnReady(f func()) { o.notify = f }

// OnConflate sets a function called (under the outbox's lock) each time an
// event replaces a waiting one. Set it before the outbox is shared.
func (o *Outbox) OnConflate(f func()) { o.onConflate = f }

type pendingEvent struct {
	version int64
	data    []byte
	queued  time.Time
}

// NewOutbox returns an empty Outbox holding at most maxControl unread
// answers.
func NewOutbox(maxControl int) *Outbox {
	return &Outbox{
		latest:     make(map[int64]int64),
		pending:    make(map[int64]pendingEvent),
		maxControl: maxControl,
		ready:      make(chan struct{}, 1),
	}
}

// Deliver queues an event (Subscriber).
func (o *Outbox) Deliver(productID, version int64, event []byte) {
	o.mu.Lock()
	if version <= o.latest[productID] {
		o.stale++
		o.mu.Unlock()
		return
	}
	o.latest[productID] = version
	queued := time.Now()
	if waiting, ok := o.pending[productID]; ok {
		o.conflated++
		queued = waiting.queued // the product has waited since its first unsent event
		if o.onConflate != nil {
			o.onConflate()
		}
	} else {
		o.order = append(o.order, productID)
	}
	o.pending[productID] = pendingEvent{version: version, data: event, queued: queued}
	o.mu.Unlock()
	o.signal()
}

// Control queues an answer to a command; ErrControlFull when maxControl are
// already waiting.
func (o *Outbox) Control(msg []byte) error {
	o.mu.Lock()
	if len(o.control) >= o.maxControl {
		o.mu.Unlock()
		return ErrControlFull
	}
	o.control = append(o.control, msg)
	o.mu.Unlock()
	o.signal()
	return nil
}

func (o *Outbox) signal() {
	if o.notify != nil {
		o.notify()
		return
	}
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when something was queued since the last Pop found the
// queue empty.
func (o *Outbox) Ready() <-chan struct{} { return o.ready }

// Pop returns the next message to write: an answer if one waits, else the
// oldest waiting product's newest event, with when that product's first
// unsent event was queued (how long it has waited). ok is false when nothing
// waits.
func (o *Outbox) Pop() (msg []byte, queued time.Time, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.control) > 0 {
		msg = o.control[0]
		o.control[0] = nil
		o.control = o.control[1:]
		if len(o.control) == 0 {
			o.control = o.control[:0:0]
		}
		return msg, time.Time{}, true
	}
	for o.head < len(o.order) {
		id := o.order[o.head]
		o.head++
		if ev, ok := o.pending[id]; ok {
			delete(o.pending, id)
			o.compact()
			return ev.data, ev.queued, true
		}
	}
	o.compact()
	return nil, time.Time{}, false
}

// compact reuses the order slice once it has been read through.
func (o *Outbox) compact() {
	if o.head == len(o.order) {
		o.order, o.head = o.order[:0], 0
	}
}

// Forget drops what is known and waiting of products the connection no
// longer watches, so the outbox stays bounded by what it watches now.
func (o *Outbox) Forget(ids []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	removed := false
	for _, id := range ids {
		delete(o.latest, id)
		if _, ok := o.pending[id]; ok {
			delete(o.pending, id)
			removed = true
		}
	}
	if removed { // take their places out of the order too
		kept := o.order[:o.head]
		for _, id := range o.order[o.head:] {
			if _, ok := o.pending[id]; ok {
				kept = append(kept, id)
			}
		}
		o.order = kept
		o.compact()
	}
}

// Len returns how many messages wait.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.control) + len(o.pending)
}

// Stats returns how many events were conflated away and how many were
// dropped as stale since the outbox was made.
func (o *Outbox) Stats() (conflated, stale int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conflated, o.stale
}
