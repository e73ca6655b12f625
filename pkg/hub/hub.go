// Package hub fans product changes out from NATS to the local subscribers of
// a gateway. It holds one NATS subscription per product that at least one
// local subscriber watches: the first subscriber subscribes, the last one to
// leave unsubscribes, so NATS routes product.<id> to this gateway only while
// someone here watches it.
//
// Messages arrive on a few dispatcher goroutines (a product always on the
// same one, so its order holds) instead of one goroutine per subscription,
// and are handed to subscribers without copying or re-encoding: every
// subscriber gets the same bytes. A product with many subscribers is handed
// out by several goroutines at once (the dispatcher and fan-out helpers),
// and the dispatcher waits for all of them before its next message, so each
// subscriber still sees the product's changes in order.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/change"
)

// Subscriber receives the changes of the products it watches. Deliver is
// called from the hub's dispatcher goroutines and must not block.
type Subscriber interface {
	Deliver(productID, version int64, event []byte)
}

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	Shards      int           // lock shards of the product table, default 64
	Dispatchers int           // goroutines handing messages to subscribers, default 8
	Buffer      int           // messages each dispatcher may hold, default 16384
	FlushWait   time.Duration // how long Subscribe waits for NATS to confirm new subscriptions, default 5s
	// FanOutChunk is how many subscribers of one product one goroutine
	// hands a change to; a product with more is shared out among the
	// dispatcher and up to FanOutHelpers helpers. Default 256.
	FanOutChunk int
	// FanOutHelpers are the goroutines that help dispatchers with hot
	// products, default GOMAXPROCS. Negative: none (the dispatcher hands
	// out every change alone).
	FanOutHelpers int
	Logger        *slog.Logger
	// OnPanic is told of a panic recovered in a dispatcher (a Subscriber's
	// Deliver panicked): the message is dropped and the dispatcher goes on.
	// Nil: the panic is only logged.
	OnPanic func(value any, stack []byte)
	// MaxProducts bounds the products the hub holds a NATS subscription
	// for: Subscribe refuses a new one past it with ErrTooManyProducts.
	// Zero: no bound.
	MaxProducts int
}

// Hub is the table of watched products. Safe for concurrent use.
type Hub struct {
	nc          *nats.Conn
	opts        Options
	shards      []shard
	dispatchers []chan *nats.Msg
	fan         []fanState   // per dispatcher, owned by it
	helpers     chan *fanJob // parts of hot products' fan-outs
	all         *allWatchers // the watch-all subscribers (all.go)
	products    atomic.Int64 // products with a NATS subscription
	taken       atomic.Int64 // products, plus what Subscribes in flight have reserved (Options.MaxProducts)
	received    atomic.Int64 // messages received from NATS
	delivered   atomic.Int64 // deliveries to subscribers
	closed      atomic.Bool  // Run has begun to unsubscribe everything: Subscribe refuses
}

type shard struct {
	mu       sync.Mutex
	products map[int64]*entry
}

// entry is one watched product: its NATS subscription and its subscribers,
// a copy-on-write slice so that delivery reads it without a lock.
type entry struct {
	id          int64
	sub         *nats.Subscription
	subscribers atomic.Pointer[[]Subscriber]
}

// fanJob is a part of one change's fan-out, handed to a helper.
type fanJob struct {
	subs        []Subscriber
	id, version int64
	data        []byte
	done        *sync.WaitGroup
}

// fanState is a dispatcher's reusable fan-out jobs, so that sharing out a
// change allocates nothing.
type fanState struct {
	jobs []fanJob
	wg   sync.WaitGroup
}

// ErrClosed is returned by Subscribe and SubscribeAll once Run is ending.
var ErrClosed = errors.New("hub closed")

// ErrTooManyProducts is returned by Subscribe when a product nobody watched
// yet would take the hub past Options.MaxProducts.
var ErrTooManyProducts = errors.New("hub: as many products watched as allowed")

// New returns a Hub on nc. Call Run to deliver.
func New(nc *nats.Conn, opts Options) *Hub {
	if opts.Shards <= 0 {
		opts.Shards = 64
	}
	if opts.Dispatchers <= 0 {
		opts.Dispatchers = 8
	}
	if opts.Buffer <= 0 {
		opts.Buffer = 16384
	}
	if opts.FlushWait <= 0 {
		opts.FlushWait = 5 * time.Second
	}
	if opts.FanOutChunk <= 0 {
		opts.FanOutChunk = 256
	}
	if opts.FanOutHelpers == 0 {
		opts.FanOutHelpers = runtime.GOMAXPROCS(0)
	}
	opts.FanOutHelpers = max(opts.FanOutHelpers, 0)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Hub{nc: nc, opts: opts, shards: make([]shard, opts.Shards), dispatchers: make([]chan *nats.Msg, opts.Dispatchers),
		fan: make([]fanState, opts.Dispatchers), helpers: make(chan *fanJob, opts.Dispatchers*opts.FanOutHelpers), all: newAllWatchers()}
	for i := range h.fan {
		h.fan[i].jobs = make([]fanJob, opts.FanOutHelpers)
	}
	for i := range h.shards {
		h.shards[i].products = make(map[int64]*entry)
	}
	for i := range h.dispatchers {
		h.dispatchers[i] = make(chan *nats.Msg, opts.Buffer)
	}
	return h
}

func (h *Hub) shard(id int64) *shard { return &h.shards[uint64(id)%uint64(len(h.shards))] }

func (h *Hub) dispatcher(id int64) chan *nats.Msg { return h.dispatchers[h.dispatcherIndex(id)] }

func (h *Hub) dispatcherIndex(id int64) int { return int(uint64(id) % uint64(len(h.dispatchers))) }

// Run delivers messages until ctx ends, then unsubscribes everything. Call
// it once.
func (h *Hub) Run(ctx context.Context) error {
	var helpers, wg sync.WaitGroup
	for range h.opts.FanOutHelpers {
		helpers.Go(func() {
			for j := range h.helpers {
				h.runJob(j)
			}
		})
	}
	for _, ch := range h.dispatchers {
		wg.Go(func() { h.dispatch(ctx, ch) })
	}
	wg.Wait()
	close(h.helpers) // no dispatcher waits for a helper any more
	helpers.Wait()
	h.closeAll()
	// Subscribe checks closed under the shard's lock, so it either ran
	// before the shard is emptied below or sees closed and refuses: no
	// NATS subscription outlives Run, feeding a dispatcher nobody reads.
	h.closed.Store(true)
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for id, e := range s.products {
			_ = e.sub.Unsubscribe() // the connection may be closed already
			delete(s.products, id)
		}
		s.mu.Unlock()
	}
	h.products.Store(0)
	h.taken.Store(0)
	return nil
}

func (h *Hub) dispatch(ctx context.Context, ch chan *nats.Msg) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-ch:
			h.deliverRecovering(msg)
		}
	}
}

// deliverRecovering is deliver with a panic recovered: one bad delivery
// must not end the process, nor stop the products sharing this dispatcher.
func (h *Hub) deliverRecovering(msg *nats.Msg) {
	defer func() {
		if v := recover(); v != nil {
			stack := debug.Stack()
			if h.opts.OnPanic != nil {
				h.opts.OnPanic(v, stack)
			} else {
				h.opts.Logger.Error("panic in a hub dispatcher; message dropped", "subject", msg.Subject, "panic", fmt.Sprint(v), "stack", string(stack))
			}
		}
	}()
	h.deliver(msg)
}

// deliver hands one NATS message to the product's current subscribers.
func (h *Hub) deliver(msg *nats.Msg) {
	h.received.Add(1)
	id, ok := change.ProductID(msg.Subject)
	if !ok {
		return
	}
	version, ok := change.EventVersion(msg.Data)
	if !ok {
		h.opts.Logger.Warn("message without a version; dropped", "subject", msg.Subject)
		return
	}
	if h.isAll(msg) {
		h.deliverAll(id, version, msg.Data)
		return
	}
	s := h.shard(id)
	s.mu.Lock()
	e := s.products[id]
	s.mu.Unlock()
	if e == nil {
		return // the last subscriber left while the message was on its way
	}
	subs := *e.subscribers.Load()
	h.fanOut(&h.fan[h.dispatcherIndex(id)], subs, id, version, msg.Data)
	h.delivered.Add(int64(len(subs)))
}

// fanOut hands a change to subs: alone when they are few, else shared out
// among the dispatcher (st is its state) and the helpers, waiting for all
// parts before returning.
func (h *Hub) fanOut(st *fanState, subs []Subscriber, id, version int64, data []byte) {
	chunk := h.opts.FanOutChunk
	if len(subs) <= chunk || len(st.jobs) == 0 {
		deliverTo(subs, id, version, data)
		return
	}
	parts := min((len(subs)+chunk-1)/chunk, len(st.jobs)+1)
	size := (len(subs) + parts - 1) / parts
	parts = (len(subs) + size - 1) / size // no empty part
	st.wg.Add(parts - 1)
	for p := 1; p < parts; p++ {
		j := &st.jobs[p-1]
		*j = fanJob{subs: subs[p*size : min((p+1)*size, len(subs))], id: id, version: version, data: data, done: &st.wg}
		h.helpers <- j
	}
	defer func() { // even if a Deliver panics: the jobs are reused by the next change
		st.wg.Wait()
		clear(st.jobs[:parts-1]) // keep no message alive
	}()
	deliverTo(subs[:size], id, version, data)
}

// runJob delivers a helper's part of a fan-out. A panicking Deliver is
// logged and the part given up, so that the dispatcher waiting for it goes
// on.
func (h *Hub) runJob(j *fanJob) {
	defer j.done.Done()
	defer func() {
		if v := recover(); v != nil {
			if h.opts.OnPanic != nil {
				h.opts.OnPanic(v, debug.Stack())
				return
			}
			h.opts.Logger.Error("panic in a fan-out helper; the change did not reach some subscribers", "product_id", j.id, "panic", fmt.Sprint(v))
		}
	}()
	deliverTo(j.subs, j.id, j.version, j.data)
}

func deliverTo(subs []Subscriber, id, version int64, data []byte) {
	for _, sub := range subs {
		sub.Deliver(id, version, data)
	}
}

// Subscribe adds sub to the subscribers of ids, subscribing to NATS for the
// products nobody here watched yet, and waits until NATS has confirmed those
// subscriptions (at most Options.FlushWait, and never past ctx): a change
// published after Subscribe returns reaches sub. A subscriber already
// watching an id is left as it is; sub stays subscribed when the
// confirmation fails. On any error, sub may be subscribed to some of ids:
// the caller unsubscribes them all.
func (h *Hub) Subscribe(ctx context.Context, sub Subscriber, ids []int64) error {
	// Reserve the products nobody watches yet all at once, so that
	// Subscribes in flight together cannot pass MaxProducts, nor each get
	// part of the way and all fail; what is not used goes back at the end
	// (two Subscribes adding the same product both reserve it meanwhile).
	budget := 0
	if h.opts.MaxProducts > 0 {
		budget = h.countNew(ids)
		if !h.take(budget) {
			return ErrTooManyProducts
		}
	}
	defer func() { h.taken.Add(-int64(budget)) }()
	added := false
	for _, id := range ids {
		s := h.shard(id)
		s.mu.Lock()
		if h.closed.Load() {
			s.mu.Unlock()
			return ErrClosed
		}
		e := s.products[id]
		if e == nil {
			if budget > 0 {
				budget-- // the reservation becomes the product's
			} else if !h.take(1) { // new since countNew
				s.mu.Unlock()
				return ErrTooManyProducts
			}
			ns, err := h.nc.ChanSubscribe(change.Subject(id), h.dispatcher(id))
			if err != nil {
				h.taken.Add(-1)
				s.mu.Unlock()
				return fmt.Errorf("subscribe to %s: %w", change.Subject(id), err)
			}
			h.products.Add(1)
			e = &entry{id: id, sub: ns}
			empty := []Subscriber{}
			e.subscribers.Store(&empty)
			s.products[id] = e
			added = true
		}
		old := *e.subscribers.Load()
		if !contains(old, sub) {
			next := make([]Subscriber, len(old), len(old)+1)
			copy(next, old)
			next = append(next, sub)
			e.subscribers.Store(&next)
		}
		s.mu.Unlock()
	}
	if added {
		if err := h.confirm(ctx); err != nil {
			return fmt.Errorf("confirm NATS subscriptions: %w", err)
		}
	}
	return nil
}

// countNew counts the ids no entry exists for (yet).
func (h *Hub) countNew(ids []int64) int {
	n := 0
	for _, id := range ids {
		s := h.shard(id)
		s.mu.Lock()
		if s.products[id] == nil {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

// take counts n more products as taken, unless that would pass
// Options.MaxProducts (when set).
func (h *Hub) take(n int) bool {
	for {
		old := h.taken.Load()
		if h.opts.MaxProducts > 0 && old+int64(n) > int64(h.opts.MaxProducts) {
			return false
		}
		if h.taken.CompareAndSwap(old, old+int64(n)) {
			return true
		}
	}
}

// confirm waits until NATS has confirmed the subscriptions made so far (a
// flush round trip), at most Options.FlushWait and never past ctx.
func (h *Hub) confirm(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.opts.FlushWait)
	defer cancel()
	return h.nc.FlushWithContext(ctx)
}

// Unsubscribe removes sub from the subscribers of ids; a product left with
// none is unsubscribed from NATS. Only sub's interest goes: other
// subscribers of the same products keep theirs.
func (h *Hub) Unsubscribe(sub Subscriber, ids []int64) {
	for _, id := range ids {
		s := h.shard(id)
		s.mu.Lock()
		if e := s.products[id]; e != nil {
			old := *e.subscribers.Load()
			if i := index(old, sub); i >= 0 {
				next := make([]Subscriber, 0, len(old)-1)
				next = append(append(next, old[:i]...), old[i+1:]...)
				e.subscribers.Store(&next)
				if len(next) == 0 {
					_ = e.sub.Unsubscribe() // a closed connection has no interest to remove
					delete(s.products, id)
					h.products.Add(-1)
					h.taken.Add(-1)
				}
			}
		}
		s.mu.Unlock()
	}
}

// Watched returns every product with at least one local subscriber.
func (h *Hub) Watched() []int64 {
	var ids []int64
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for id := range s.products {
			ids = append(ids, id)
		}
		s.mu.Unlock()
	}
	return ids
}

// SubscribersOf returns the current subscribers of a product.
func (h *Hub) SubscribersOf(id int64) []Subscriber {
	s := h.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.products[id]; e != nil {
		return *e.subscribers.Load()
	}
	return nil
}

// Products returns how many products have a NATS subscription.
func (h *Hub) Products() int64 { return h.products.Load() }

// Received returns how many messages the hub received from NATS.
func (h *Hub) Received() int64 { return h.received.Load() }

// Delivered returns how many deliveries to subscribers the hub made.
func (h *Hub) Delivered() int64 { return h.delivered.Load() }

func contains(subs []Subscriber, sub Subscriber) bool { return index(subs, sub) >= 0 }

func index(subs []Subscriber, sub Subscriber) int {
	for i, s := range subs {
		if s == sub {
			return i
		}
	}
	return -1
}
