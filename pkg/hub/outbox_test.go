package hub

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func drain(o *Outbox) []string {
	var out []string
	for {
		msg, _, ok := o.Pop()
		if !ok {
			return out
		}
		out = append(out, string(msg))
	}
}

// lagging is a Conflation that only the tests' explicit bounds trigger.
var lagging = Conflation{After: time.Hour, MaxEvents: 4, MaxBytes: 1 << 20}

func TestOutbox(t *testing.T) {
	tests := []struct {
		name  string
		limit Conflation
		steps func(o *Outbox)
		want  string
	}{
		{name: "fifo across products", steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Deliver(3, 5, []byte("3v5"))
		}, want: "[1v1 2v1 3v5]"},
		{name: "every version while keeping up", steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Deliver(1, 2, []byte("1v2"))
			o.Deliver(1, 3, []byte("1v3"))
		}, want: "[1v1 2v1 1v2 1v3]"},
		{name: "past MaxEvents: conflated, newest in the oldest slot", limit: lagging, steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Deliver(1, 2, []byte("1v2"))
			o.Deliver(3, 1, []byte("3v1"))
			o.Deliver(1, 3, []byte("1v3")) // the fifth: conflate
			o.Deliver(2, 2, []byte("2v2")) // replaces in place
			o.Deliver(4, 1, []byte("4v1")) // a new product goes last
		}, want: "[1v3 2v2 3v1 4v1]"},
		{name: "past MaxBytes: conflated", limit: Conflation{After: time.Hour, MaxEvents: 100, MaxBytes: 10}, steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(1, 2, []byte("1v2"))
			o.Deliver(1, 3, []byte("1v3"))
			o.Deliver(1, 4, []byte("1v4")) // 12 bytes wait
		}, want: "[1v4]"},
		{name: "stale and equal versions dropped", steps: func(o *Outbox) {
			o.Deliver(1, 5, []byte("1v5"))
			o.Deliver(1, 4, []byte("1v4"))
			o.Deliver(1, 5, []byte("1v5 again"))
		}, want: "[1v5]"},
		{name: "never below what was written", steps: func(o *Outbox) {
			o.Deliver(1, 5, []byte("1v5"))
			o.Pop()
			o.Deliver(1, 3, []byte("snapshot v3"))
			o.Deliver(1, 6, []byte("1v6"))
		}, want: "[1v6]"},
		{name: "never below what was conflated", limit: lagging, steps: func(o *Outbox) {
			for v := int64(1); v <= 6; v++ {
				o.Deliver(1, v, fmt.Appendf(nil, "1v%d", v))
			}
			o.Deliver(1, 4, []byte("snapshot v4"))
		}, want: "[1v6]"},
		{name: "answers first", steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			_ = o.Control([]byte("ack"))
		}, want: "[ack 1v1]"},
		{name: "forget", steps: func(o *Outbox) {
			o.Deliver(1, 5, []byte("1v5"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Forget([]int64{1})
			o.Deliver(1, 2, []byte("1v2 after resubscribe"))
		}, want: "[2v1 1v2 after resubscribe]"},
		{name: "forget while conflating", limit: lagging, steps: func(o *Outbox) {
			for v := int64(1); v <= 3; v++ {
				o.Deliver(1, v, fmt.Appendf(nil, "1v%d", v))
				o.Deliver(2, v, fmt.Appendf(nil, "2v%d", v))
			}
			o.Forget([]int64{1})
			o.Deliver(2, 4, []byte("2v4"))
			o.Deliver(1, 1, []byte("1v1 after resubscribe"))
		}, want: "[2v4 1v1 after resubscribe]"},
		{name: "keep", steps: func(o *Outbox) {
			o.Deliver(1, 5, []byte("1v5"))
			o.Deliver(2, 5, []byte("2v5"))
			o.Deliver(3, 5, []byte("3v5"))
			o.Keep(func(id int64) bool { return id == 2 })
			o.Deliver(2, 4, []byte("2v4 stale: kept"))
			o.Deliver(1, 1, []byte("1v1 after resubscribe"))
		}, want: "[2v5 1v1 after resubscribe]"},
		{name: "keep while conflating", limit: lagging, steps: func(o *Outbox) {
			for v := int64(1); v <= 3; v++ {
				o.Deliver(1, v, fmt.Appendf(nil, "1v%d", v))
				o.Deliver(2, v, fmt.Appendf(nil, "2v%d", v))
			}
			o.Keep(func(id int64) bool { return id == 2 })
			o.Deliver(2, 4, []byte("2v4"))
			o.Deliver(1, 1, []byte("1v1 after resubscribe"))
		}, want: "[2v4 1v1 after resubscribe]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOutbox(4)
			o.SetConflation(tc.limit)
			tc.steps(o)
			if got := fmt.Sprint(drain(o)); got != tc.want {
				t.Errorf("wrote %s, want %s", got, tc.want)
			}
			if o.Len() != 0 || o.Conflating() {
				t.Errorf("Len %d, conflating %v after draining", o.Len(), o.Conflating())
			}
		})
	}
}

// TestOutboxAge: events are kept while the oldest is younger than After;
// past it, the queue conflates until the writer has caught up.
func TestOutboxAge(t *testing.T) {
	o := NewOutbox(1)
	o.SetConflation(Conflation{After: 50 * time.Millisecond, MaxEvents: 1 << 30, MaxBytes: 1 << 30})
	o.Deliver(1, 1, []byte("1v1"))
	o.Deliver(1, 2, []byte("1v2"))
	if o.Len() != 2 || o.Conflating() {
		t.Fatalf("Len %d, conflating %v: a young queue must keep every version", o.Len(), o.Conflating())
	}
	deadline := time.Now().Add(10 * time.Second)
	for v := int64(3); !o.Conflating(); v++ { // no sleep: deliver until the oldest has aged
		if time.Now().After(deadline) {
			t.Fatal("never conflated")
		}
		o.Deliver(1, v, []byte("1v"))
		if o.Len() > 1 && o.Conflating() {
			t.Fatalf("Len %d while conflating one product", o.Len())
		}
	}
	if o.Len() != 1 {
		t.Fatalf("Len %d after conflating one product", o.Len())
	}
	_, queued, _ := o.Pop()
	if time.Since(queued) < 50*time.Millisecond {
		t.Errorf("the conflated event reports waiting %v: it must keep the oldest's queued time", time.Since(queued))
	}
	if o.Conflating() {
		t.Error("still conflating after the queue drained")
	}
	o.Deliver(1, 1<<40, []byte("a"))
	o.Deliver(1, 1<<40+1, []byte("b"))
	if got := fmt.Sprint(drain(o)); got != "[a b]" {
		t.Errorf("after catching up: %s, want every version again", got)
	}
}

func TestOutboxBounds(t *testing.T) {
	o := NewOutbox(2)
	o.SetConflation(Conflation{After: time.Hour, MaxEvents: 100})
	replaced, episodes, wakes := 0, 0, 0
	o.OnConflate(func(n int) { replaced += n }, func() { episodes++ })
	o.OnReady(func() { wakes++ })
	for v := int64(1); v <= 1000; v++ {
		o.Deliver(v%10+1, v, []byte("x"))
		if o.Len() > 101 {
			t.Fatalf("Len %d after %d events: past MaxEvents", o.Len(), v)
		}
	}
	if o.Len() != 10 {
		t.Errorf("Len %d, want 10: one event per product", o.Len())
	}
	if replaced != 990 || episodes != 1 {
		t.Errorf("conflated %d, fell behind %d times; want 990 and 1", replaced, episodes)
	}
	if o.Control([]byte("a")) != nil || o.Control([]byte("b")) != nil || o.Control([]byte("c")) != ErrControlFull {
		t.Error("control FIFO not bounded at 2")
	}
	if wakes != 1 {
		t.Errorf("the writer was woken %d times, want once", wakes)
	}
}

// TestOutboxWakeOnce: the writer is told once per wake-up, not per message.
func TestOutboxWakeOnce(t *testing.T) {
	o := NewOutbox(4)
	wakes := 0
	o.OnReady(func() { wakes++ })
	o.Deliver(1, 1, []byte("a"))
	o.Deliver(1, 2, []byte("b"))
	_ = o.Control([]byte("ack"))
	if wakes != 1 {
		t.Fatalf("%d wake-ups for three messages to an idle writer, want 1", wakes)
	}
	drain(o) // finds the queue empty: the writer is idle again
	o.Deliver(1, 3, []byte("c"))
	if wakes != 2 {
		t.Fatalf("%d wake-ups, want 2 after the writer went idle", wakes)
	}
	o.Close()
	o.Deliver(1, 4, []byte("d"))
	if o.Len() != 0 {
		t.Error("a closed outbox queued an event")
	}
}

// TestOutboxHold: while held, nothing is handed out and the writer is not
// woken; Release wakes it once, and the ack queued during the hold still
// goes before the events delivered during it.
func TestOutboxHold(t *testing.T) {
	o := NewOutbox(4)
	wakes := 0
	o.OnReady(func() { wakes++ })
	o.Hold()
	_ = o.Control([]byte("ack"))
	o.Deliver(1, 1, []byte("a"))
	if wakes != 0 {
		t.Fatalf("%d wake-ups while held", wakes)
	}
	if msg, _, ok := o.Pop(); ok {
		t.Fatalf("Pop handed out %q while held", msg)
	}
	o.Release()
	if wakes != 1 {
		t.Fatalf("%d wake-ups after Release, want 1", wakes)
	}
	if got := drain(o); strings.Join(got, " ") != "ack a" {
		t.Fatalf("after Release: %q, want the ack then the event", got)
	}
	o.Hold()
	o.Release() // nothing waits: no wake-up
	if wakes != 1 {
		t.Fatalf("%d wake-ups after an empty hold, want 1", wakes)
	}
}

// TestOutboxLongRun: a writer that stays a little behind for a long time
// (the queue never empties) keeps every version and bounded memory.
func TestOutboxLongRun(t *testing.T) {
	o := NewOutbox(1)
	o.SetConflation(Conflation{After: time.Hour, MaxEvents: 64})
	conflated := 0
	o.OnConflate(func(n int) { conflated += n }, nil)
	next := map[int64]int64{}
	for v := int64(1); v <= 100000; v++ {
		o.Deliver(v%3, v, []byte{byte(v % 3)})
		if v%5 != 0 { // pop four of every five, then drain: never empty for long
			msg, _, ok := o.Pop()
			if !ok {
				t.Fatal("empty")
			}
			next[int64(msg[0])]++
		}
		if o.Len() > 32 {
			drain(o)
		}
	}
	if conflated != 0 {
		t.Errorf("%d conflated", conflated)
	}
	if c := cap(o.events); c > 128 {
		t.Errorf("queue capacity %d for at most 33 waiting events", c)
	}
}

func TestOutboxDeliverAllocs(t *testing.T) {
	for _, conflating := range []bool{false, true} {
		o := NewOutbox(1)
		o.OnReady(func() {})
		ev := []byte(`{"version":1}`)
		v := int64(0)
		if conflating {
			o.SetConflation(Conflation{After: time.Hour, MaxEvents: 1})
			o.Deliver(2, 1, ev)
		}
		o.Deliver(1, 1, ev)
		o.Deliver(1, 2, ev)
		allocs := testing.AllocsPerRun(1000, func() {
			v += 2
			o.Deliver(1, v+1, ev)
			o.Deliver(1, v+2, ev)
			if !conflating {
				o.Pop()
				o.Pop()
			}
		})
		if allocs != 0 {
			t.Errorf("conflating %v: Deliver+Pop allocates %v times", conflating, allocs)
		}
	}
}
