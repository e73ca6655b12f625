package hub

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// allSubscriptions counts the product.* subscriptions NATS holds.
func allSubscriptions(t *testing.T, s *server.Server) int {
	t.Helper()
	sz, err := s.Subsz(&server.SubszOptions{Subscriptions: true, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sub := range sz.Subs {
		if sub.Subject == allSubject {
			n++
		}
	}
	return n
}

type missRecorder struct {
	recorder
	missed int
}

func (m *missRecorder) MissedChanges() { m.missed++ }

// TestSubscribeAll: every watch-all subscriber gets every product's
// changes through one product.* subscription, made by the first and removed
// by the last; a subscriber of one product is served alongside, each getting
// the change once per subscription it holds.
func TestSubscribeAll(t *testing.T) {
	h, nc, n := startHub(t)
	if n.Server == nil {
		t.Skip("NATS_URL names an external server: its subscriptions cannot be counted here")
	}
	pub, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	a, b, one := &missRecorder{}, &recorder{}, &recorder{}
	for _, s := range []Subscriber{a, b, a} {
		if err := h.SubscribeAll(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Subscribe(t.Context(), one, []int64{7}); err != nil {
		t.Fatal(err)
	}
	if got := allSubscriptions(t, n.Server); got != 1 || h.AllSubscribers() != 2 || !h.AllSubscribed() {
		t.Fatalf("product.* subscriptions in NATS %d, subscribers %d; want 1 and 2", got, h.AllSubscribers())
	}
	for _, id := range []int64{7, 8, 9000} {
		if err := pub.Publish(change.Subject(id), event(id, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 10*time.Second, "every change to every watch-all subscriber", func() bool {
		return a.seen() == "[7:1 8:1 9000:1]" && b.seen() == "[7:1 8:1 9000:1]" && one.seen() == "[7:1]"
	})
	h.MissedAll()
	if a.missed != 1 {
		t.Errorf("MissedChanges called %d times, want 1", a.missed)
	}

	h.UnsubscribeAll(a)
	if got := allSubscriptions(t, n.Server); got != 1 || h.AllSubscribers() != 1 {
		t.Fatalf("after one left: %d subscriptions, %d subscribers", got, h.AllSubscribers())
	}
	h.UnsubscribeAll(b)
	h.UnsubscribeAll(b) // twice: nothing happens
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 10*time.Second, "the product.* subscription to go", func() bool { return allSubscriptions(t, n.Server) == 0 })
	if h.AllSubscribed() || h.Products() != 1 {
		t.Fatalf("after the last left: subscribed %v, products %d", h.AllSubscribed(), h.Products())
	}
}
