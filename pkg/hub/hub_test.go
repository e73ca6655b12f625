package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// recorder is a Subscriber that keeps what it gets.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) Deliver(id, version int64, event []byte) {
	r.mu.Lock()
	r.got = append(r.got, fmt.Sprintf("%d:%d", id, version))
	r.mu.Unlock()
}

// seen returns what arrived, sorted: products travel on different
// dispatchers, so only each product's own order is defined.
func (r *recorder) seen() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(slices.Sorted(slices.Values(r.got)))
}

func event(id, version int64) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"action":"UPDATE","productId":%d,"version":%d,"changedAt":"2026-11-25T00:00:00.000000Z","product":{}}`, version, id, version)
}

func startHub(t testing.TB) (*Hub, *nats.Conn, *testenv.NATSServer) {
	t.Helper()
	h, nc, n, stop := startStoppableHub(t, Options{})
	t.Cleanup(stop)
	return h, nc, n
}

// startStoppableHub is startHub with opts and the stop left to the caller:
// stop ends Run and waits until it has returned.
func startStoppableHub(t testing.TB, opts Options) (h *Hub, nc *nats.Conn, n *testenv.NATSServer, stop func()) {
	t.Helper()
	n = testenv.NATS(t)
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h = New(nc, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.Run(ctx); close(done) }()
	return h, nc, n, func() { cancel(); <-done }
}

func TestSubscribeUnsubscribe(t *testing.T) {
	h, nc, n := startHub(t)
	pub, err := nats.Connect(n.URL) // another client, as the bridge would be
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	a, b := &recorder{}, &recorder{}
	if err := h.Subscribe(t.Context(), a, []int64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := h.Subscribe(t.Context(), b, []int64{1}); err != nil {
		t.Fatal(err)
	}
	if h.Products() != 2 {
		t.Fatalf("%d NATS subscriptions, want 2 (one per product)", h.Products())
	}
	if n.Server != nil && n.Server.GlobalAccount().Interest(change.Subject(1)) != 1 {
		t.Errorf("server sees %d subscriptions on product.1, want 1 for two local subscribers", n.Server.GlobalAccount().Interest(change.Subject(1)))
	}
	_ = pub.Publish(change.Subject(1), event(1, 1))
	_ = pub.Publish(change.Subject(2), event(2, 1))
	_ = pub.Publish(change.Subject(3), event(3, 1)) // nobody watches 3
	testenv.WaitUntil(t, 10*time.Second, "deliveries", func() bool { return a.seen() == "[1:1 2:1]" && b.seen() == "[1:1]" })

	// b leaves product 1: a keeps it (the seed removed everyone's interest).
	h.Unsubscribe(b, []int64{1})
	_ = pub.Publish(change.Subject(1), event(1, 2))
	testenv.WaitUntil(t, 10*time.Second, "a's delivery", func() bool { return a.seen() == "[1:1 1:2 2:1]" })
	if b.seen() != "[1:1]" {
		t.Errorf("b got %s after unsubscribing", b.seen())
	}

	// The last subscriber leaving removes the NATS interest.
	h.Unsubscribe(a, []int64{1, 2})
	if h.Products() != 0 || len(h.Watched()) != 0 {
		t.Errorf("%d products still subscribed", h.Products())
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n.Server != nil { // embedded: ask the server itself
		testenv.WaitUntil(t, 10*time.Second, "server-side interest to go", func() bool {
			acc := n.Server.GlobalAccount()
			return acc.Interest(change.Subject(1)) == 0 && acc.Interest(change.Subject(2)) == 0
		})
	}
}

// BenchmarkFanOut measures the hot path: one change of one product handed
// to 1,000 subscribers' outboxes, as the dispatcher does for each NATS
// message (parse the subject and version, look the product up, deliver the
// same bytes to each). It must not allocate. keeping-up: a writer empties
// each outbox every 16 changes (its Pop is counted in); conflating: every
// outbox has fallen behind and holds one event per product. helpers=0: the
// dispatcher hands out every change alone.
func BenchmarkFanOut(b *testing.B) {
	for _, helpers := range []int{-1, 0} {
		for _, mode := range []string{"keeping-up", "conflating"} {
			name := fmt.Sprintf("%s/helpers=%d", mode, max(helpers, 0))
			if helpers == 0 {
				name = mode + "/helpers=GOMAXPROCS"
			}
			b.Run(name, func(b *testing.B) { benchmarkFanOut(b, mode == "conflating", helpers) })
		}
	}
}

func benchmarkFanOut(b *testing.B, conflating bool, helpers int) {
	n := testenv.NATS(b)
	nc, err := nats.Connect(n.URL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	h := New(nc, Options{FanOutHelpers: helpers})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	const subscribers = 1000
	outboxes := make([]*Outbox, subscribers)
	for i := range outboxes {
		outboxes[i] = NewOutbox(8)
		outboxes[i].OnReady(func() {})
		if conflating {
			outboxes[i].SetConflation(Conflation{After: time.Hour, MaxEvents: 1})
		}
		if err := h.Subscribe(b.Context(), outboxes[i], []int64{1}); err != nil {
			b.Fatal(err)
		}
	}
	// One message whose fixed-width version is rewritten in place, so every
	// delivery is newer than the last and nothing is allocated per op.
	data := []byte(`{"seq":1,"action":"UPDATE","productId":1,"version":0000000000000000000,"changedAt":"2026-11-25T00:00:00.000000Z","product":{}}`)
	digits := bytes.Index(data, []byte(`"version":`)) + len(`"version":`)
	msg := &nats.Msg{Subject: change.Subject(1), Data: data}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; b.Loop(); i++ {
		v := i
		for d := digits + 18; d >= digits; d-- {
			data[d] = byte('0' + v%10)
			v /= 10
		}
		h.deliver(msg)
		if !conflating && i%16 == 0 {
			for _, o := range outboxes {
				for _, _, ok := o.Pop(); ok; _, _, ok = o.Pop() {
				}
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/subscribers, "ns/delivery")
	if got := h.Delivered(); got < int64(b.N)*subscribers {
		b.Fatalf("delivered %d, want %d", got, int64(b.N)*subscribers)
	}
}

// TestHotProductInOrder: a product with more subscribers than one goroutine
// hands out is shared among helpers; every subscriber still gets every
// version, in order.
func TestHotProductInOrder(t *testing.T) {
	t.Parallel()
	h, nc, _, stop := startStoppableHub(t, Options{FanOutChunk: 7, FanOutHelpers: 3})
	t.Cleanup(stop)

	const subscribers, versions = 50, 500
	subs := make([]*orderChecker, subscribers)
	for i := range subs {
		subs[i] = &orderChecker{}
		if err := h.Subscribe(t.Context(), subs[i], []int64{1}); err != nil {
			t.Fatal(err)
		}
	}
	for v := int64(1); v <= versions; v++ {
		if err := nc.Publish(change.Subject(1), event(1, v)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitUntil(t, 10*time.Second, "every version at every subscriber", func() bool {
		for _, s := range subs {
			if s.last.Load() != versions {
				return false
			}
		}
		return true
	})
	for i, s := range subs {
		if bad := s.outOfOrder.Load(); bad != 0 {
			t.Errorf("subscriber %d: %d versions out of order or missing", i, bad)
		}
	}
}

// orderChecker counts versions that do not follow the last one by one.
type orderChecker struct {
	last, outOfOrder atomic.Int64
}

func (o *orderChecker) Deliver(_, version int64, _ []byte) {
	if version != o.last.Load()+1 {
		o.outOfOrder.Add(1)
	}
	o.last.Store(version)
}

// panicky is a Subscriber whose Deliver panics.
type panicky struct{}

func (panicky) Deliver(int64, int64, []byte) { panic("deliver exploded") }

// TestDispatcherSurvivesPanic: a Deliver that panics is reported to OnPanic
// and the dispatcher goes on delivering (one dispatcher, so that the broken
// product and the healthy one share it).
func TestDispatcherSurvivesPanic(t *testing.T) {
	n := testenv.NATS(t)
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	var panics []string
	h := New(nc, Options{Dispatchers: 1, OnPanic: func(v any, stack []byte) {
		mu.Lock()
		panics = append(panics, fmt.Sprint(v))
		mu.Unlock()
		if !bytes.Contains(stack, []byte("Deliver")) {
			t.Errorf("stack does not show the panicking Deliver:\n%s", stack)
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	var healthy recorder
	if err := h.Subscribe(t.Context(), panicky{}, []int64{1}); err != nil {
		t.Fatal(err)
	}
	if err := h.Subscribe(t.Context(), &healthy, []int64{2}); err != nil {
		t.Fatal(err)
	}
	for v := int64(1); v <= 3; v++ {
		for _, id := range []int64{1, 2} {
			if err := nc.Publish(change.Subject(id), event(id, v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for healthy.seen() != "[2:1 2:2 2:3]" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
	if got := healthy.seen(); got != "[2:1 2:2 2:3]" {
		t.Fatalf("healthy subscriber got %s after the panics", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(panics) != 3 || panics[0] != "deliver exploded" {
		t.Errorf("OnPanic saw %q, want 3 panics", panics)
	}
}

// TestSubscribeAfterRun: once Run has returned, Subscribe and SubscribeAll
// refuse with ErrClosed and leave no NATS subscription behind.
func TestSubscribeAfterRun(t *testing.T) {
	t.Parallel()
	h, nc, _, stop := startStoppableHub(t, Options{})
	var r recorder
	if err := h.Subscribe(t.Context(), &r, []int64{1}); err != nil {
		t.Fatal(err)
	}
	stop()

	if err := h.Subscribe(t.Context(), &r, []int64{2, 3}); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Run: %v, want ErrClosed", err)
	}
	if err := h.SubscribeAll(t.Context(), &r); !errors.Is(err, ErrClosed) {
		t.Errorf("SubscribeAll after Run: %v, want ErrClosed", err)
	}
	if got := nc.NumSubscriptions(); got != 0 {
		t.Errorf("%d NATS subscriptions after Run returned, want 0", got)
	}
}

// TestMaxProductsConcurrent: Subscribes that run together share
// MaxProducts exactly: with room for 3,000, eight of 1,000 new products
// each give three that succeed whole and five refused with
// ErrTooManyProducts before subscribing anything, never a mix of halves.
// What is unsubscribed is room again.
func TestMaxProductsConcurrent(t *testing.T) {
	t.Parallel()
	h, nc, _, stop := startStoppableHub(t, Options{MaxProducts: 3000})
	t.Cleanup(stop)

	subs := make([]*recorder, 8)
	errs := make([]error, len(subs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range subs {
		subs[i] = &recorder{}
		ids := make([]int64, 1000)
		for j := range ids {
			ids[j] = int64(i*1000 + j + 1)
		}
		wg.Go(func() {
			<-start
			errs[i] = h.Subscribe(t.Context(), subs[i], ids)
		})
	}
	close(start)
	wg.Wait()
	ok, refused := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrTooManyProducts):
			refused++
		default:
			t.Fatalf("Subscribe: %v", err)
		}
	}
	if ok != 3 || refused != 5 || h.Products() != 3000 || nc.NumSubscriptions() != 3000 {
		t.Fatalf("%d subscribed, %d refused, %d products, %d NATS subscriptions; want 3, 5, 3000, 3000",
			ok, refused, h.Products(), nc.NumSubscriptions())
	}
	for i, err := range errs {
		if err == nil {
			ids := make([]int64, 1000)
			for j := range ids {
				ids[j] = int64(i*1000 + j + 1)
			}
			h.Unsubscribe(subs[i], ids)
			break
		}
	}
	if err := h.Subscribe(t.Context(), &recorder{}, []int64{1e9, 1e9 + 1}); err != nil {
		t.Errorf("after unsubscribing 1,000: %v", err)
	}
}
