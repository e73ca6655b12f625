package hub

import (
	"errors"
	"sync"
	"time"
)

// ErrControlFull is returned by Outbox.Control when the client has not read
// its last maxControl answers: it sends commands faster than it reads.
var ErrControlFull = errors.New("too many unread answers")

// Conflation says when an Outbox stops keeping every version and conflates
// (DESIGN.md, guarantee 4). A connection that keeps up gets every event, in
// order; once its oldest waiting event is older than After, or more than
// MaxEvents events or MaxBytes bytes of events wait, its waiting events are
// conflated per product (the newest version of each product replaces the
// older ones, in the place of the oldest) and stay conflated until the
// queue is empty again. While conflating, the queue holds at most one event
// per watched product.
type Conflation struct {
	After     time.Duration // default 250ms
	MaxEvents int           // default 1024
	MaxBytes  int           // bytes of the waiting events (shared with other connections, not copied), default 1 MiB
}

// Defaults of Conflation's zero fields.
const (
	DefaultConflateAfter     = 250 * time.Millisecond
	DefaultConflateMaxEvents = 1024
	DefaultConflateMaxBytes  = 1 << 20
)

// Outbox is one connection's queue of messages to write. Events wait in
// arrival order, every version of every product, until the connection falls
// behind (see Conflation); then it keeps only the newest waiting event per
// product (each event carries the whole product, so nothing is lost but
// intermediate versions). An event at or below a version already queued or
// written for its product is dropped, so the client never sees a version go
// backwards, snapshots and resumes included. Answers to commands (acks,
// errors) wait in a small FIFO of their own and go first.
//
// Deliver and Control may be called from any goroutine; Pop from one
// writer. Nothing on the delivery path allocates once the queue has grown
// to its working size.
type Outbox struct {
	mu         sync.Mutex
	latest     map[int64]int64 // newest version accepted per product
	events     []waiting       // waiting events, oldest first from head
	head       int
	bytes      int           // bytes of the waiting events
	conflating bool          // the connection fell behind: one waiting event per product
	slot       map[int64]int // while conflating: product → position (index + shifted) of its waiting event
	shifted    int           // entries moved out of events by compaction (positions stay valid)
	control    [][]byte
	maxControl int
	limits     Conflation
	busy       bool // the writer was told there is work and has not found the queue empty since
	held       int  // Hold calls not yet released: Pop hands out nothing
	closed     bool

	onConflate   func(n int) // optional metric hooks; called under the lock
	onFallBehind func()
	notify       func() // the writer's wake-up (OnReady)
}

type waiting struct {
	productID, version int64
	data               []byte
	queued             time.Time // when this product's oldest unsent event was queued
}

// NewOutbox returns an empty Outbox holding at most maxControl unread
// answers, with the default Conflation.
func NewOutbox(maxControl int) *Outbox {
	o := &Outbox{
		latest:     make(map[int64]int64),
		maxControl: maxControl,
	}
	o.SetConflation(Conflation{})
	return o
}

// SetConflation sets when the outbox conflates; zero fields take the
// defaults. Set it before the outbox is shared.
func (o *Outbox) SetConflation(c Conflation) {
	if c.After <= 0 {
		c.After = DefaultConflateAfter
	}
	if c.MaxEvents <= 0 {
		c.MaxEvents = DefaultConflateMaxEvents
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultConflateMaxBytes
	}
	o.limits = c
}

// OnReady sets the function that wakes the writer, called (outside the
// outbox's lock) when something is queued while the writer is idle, that
// is, after Pop last found the queue empty: once per wake-up, not once per
// message. Set it before the outbox is shared; it must not block.
func (o *Outbox) OnReady(f func()) { o.notify = f }

// OnConflate sets metric hooks, called under the outbox's lock (they must
// not block): replaced with the number of events that a newer one of the
// same product replaced, fellBehind each time the outbox starts conflating.
// Either may be nil. Set them before the outbox is shared.
func (o *Outbox) OnConflate(replaced func(n int), fellBehind func()) {
	o.onConflate, o.onFallBehind = replaced, fellBehind
}

// Deliver queues an event (Subscriber).
func (o *Outbox) Deliver(productID, version int64, event []byte) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if version <= o.latest[productID] {
		o.mu.Unlock()
		return
	}
	o.latest[productID] = version
	now := time.Now()
	if o.conflating {
		if pos, ok := o.slot[productID]; ok {
			w := &o.events[pos-o.shifted]
			o.bytes += len(event) - len(w.data)
			w.version, w.data = version, event // keeps its place and queued time
			o.replaced(1)
			o.mu.Unlock()
			return // the writer knows already: the queue is not empty
		}
		o.slot[productID] = len(o.events) + o.shifted
		o.push(productID, version, event, now)
	} else {
		o.push(productID, version, event, now)
		if n := len(o.events) - o.head; n > o.limits.MaxEvents || o.bytes > o.limits.MaxBytes ||
			now.Sub(o.events[o.head].queued) > o.limits.After {
			o.conflate()
		}
	}
	o.wake()
}

func (o *Outbox) push(productID, version int64, event []byte, now time.Time) {
	if o.head > 0 && o.head >= len(o.events)/2 && len(o.events) == cap(o.events) {
		// Reuse the space already written: move the waiting events down
		// instead of growing.
		n := copy(o.events, o.events[o.head:])
		clear(o.events[n:])
		o.events = o.events[:n]
		o.shifted += o.head
		o.head = 0
	}
	o.events = append(o.events, waiting{productID: productID, version: version, data: event, queued: now})
	o.bytes += len(event)
}

// conflate starts conflating: every product keeps only its newest waiting
// event, in the place (and with the queued time) of its oldest.
func (o *Outbox) conflate() {
	o.conflating = true
	if o.onFallBehind != nil {
		o.onFallBehind()
	}
	if o.slot == nil {
		o.slot = make(map[int64]int)
	}
	kept, replaced := o.head, 0
	for r := o.head; r < len(o.events); r++ {
		ev := o.events[r]
		if pos, ok := o.slot[ev.productID]; ok {
			w := &o.events[pos-o.shifted]
			o.bytes -= len(w.data)
			w.version, w.data = ev.version, ev.data
			replaced++
			continue
		}
		o.slot[ev.productID] = kept + o.shifted
		o.events[kept] = ev
		kept++
	}
	clear(o.events[kept:])
	o.events = o.events[:kept]
	if replaced > 0 {
		o.replaced(replaced)
	}
}

func (o *Outbox) replaced(n int) {
	if o.onConflate != nil {
		o.onConflate(n)
	}
}

// wake unlocks o and tells an idle writer that there is work (unless the
// outbox is held: Release tells it then).
func (o *Outbox) wake() {
	wake := !o.busy && o.held == 0
	o.busy = o.busy || wake
	o.mu.Unlock()
	if wake && o.notify != nil {
		o.notify()
	}
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
	o.wake()
	return nil
}

// Pop returns the next message to write: an answer if one waits, else the
// oldest waiting event, with when it (or the oldest event it replaced) was
// queued; zero for answers. ok is false when nothing waits: the writer is
// then idle, and the next Deliver or Control calls the OnReady function.
func (o *Outbox) Pop() (msg []byte, queued time.Time, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.held > 0 {
		o.busy = false
		return nil, time.Time{}, false
	}
	if len(o.control) > 0 {
		msg = o.control[0]
		o.control[0] = nil
		o.control = o.control[1:]
		if len(o.control) == 0 {
			o.control = nil
		}
		return msg, time.Time{}, true
	}
	if o.head == len(o.events) {
		o.busy = false
		return nil, time.Time{}, false
	}
	ev := o.events[o.head]
	o.events[o.head] = waiting{}
	o.head++
	o.bytes -= len(ev.data)
	if o.conflating {
		delete(o.slot, ev.productID)
	}
	if o.head == len(o.events) {
		o.emptied()
	}
	return ev.data, ev.queued, true
}

// emptied resets the drained queue: the connection has caught up.
func (o *Outbox) emptied() {
	o.events, o.head, o.shifted, o.bytes = o.events[:0], 0, 0, 0
	if cap(o.events) > 256 {
		o.events = nil // a burst's queue is not kept by an idle connection
	}
	if o.conflating {
		o.conflating = false
		o.slot = nil
	}
}

// Forget drops what is known and waiting of products the connection no
// longer watches, so the outbox stays bounded by what it watches now.
func (o *Outbox) Forget(ids []int64) {
	if len(ids) == 0 {
		return
	}
	gone := make(map[int64]bool, len(ids))
	for _, id := range ids {
		gone[id] = true
	}
	o.drop(func(id int64) bool { return gone[id] })
}

// Keep drops what is known and waiting of every product but those keep
// reports true for: a connection that stops watching all products keeps
// only the ones it watches one by one, so that products it saw while
// watching all (every product there was, and ever will be while it watched)
// are not remembered for as long as it lives. keep is called with the
// outbox locked: it must not call the outbox.
func (o *Outbox) Keep(keep func(productID int64) bool) {
	o.drop(func(id int64) bool { return !keep(id) })
}

// drop removes the products gone reports true for from latest, the queue
// and the conflation slots.
func (o *Outbox) drop(gone func(productID int64) bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id := range o.latest {
		if gone(id) {
			delete(o.latest, id)
		}
	}
	kept := o.head
	for r := o.head; r < len(o.events); r++ {
		ev := o.events[r]
		if gone(ev.productID) {
			o.bytes -= len(ev.data)
			continue
		}
		o.events[kept] = ev
		if o.conflating {
			o.slot[ev.productID] = kept + o.shifted
		}
		kept++
	}
	clear(o.events[kept:])
	o.events = o.events[:kept]
	if o.conflating {
		for id := range o.slot {
			if gone(id) {
				delete(o.slot, id)
			}
		}
	}
	if o.head == len(o.events) {
		o.emptied()
	}
}

// Hold stops Pop from handing out anything, answers included, until the
// matching Release; deliveries and answers still queue. A subscribe holds
// the outbox from queueing its ack until the hub has registered the
// subscription, so that the ack still goes before the subscription's events
// but only once every change published after it will arrive.
func (o *Outbox) Hold() {
	o.mu.Lock()
	o.held++
	o.mu.Unlock()
}

// Release ends a Hold; the writer is told if anything waits.
func (o *Outbox) Release() {
	o.mu.Lock()
	o.held--
	if o.held > 0 || (len(o.control) == 0 && o.head == len(o.events)) {
		o.mu.Unlock()
		return
	}
	o.wake()
}

// Close makes the outbox drop whatever is delivered from now on and frees
// what waits; the connection is going away.
func (o *Outbox) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.control = nil
	o.events, o.head, o.shifted, o.bytes, o.slot, o.conflating = nil, 0, 0, 0, nil, false
}

// Len returns how many messages wait.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.control) + len(o.events) - o.head
}

// Conflating reports whether the connection has fallen behind and its
// waiting events are conflated.
func (o *Outbox) Conflating() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conflating
}
