package hub

import (
	"fmt"
	"testing"
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

func TestOutbox(t *testing.T) {
	tests := []struct {
		name  string
		steps func(o *Outbox)
		want  string
	}{
		{name: "fifo across products", steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Deliver(3, 5, []byte("3v5"))
		}, want: "[1v1 2v1 3v5]"},
		{name: "conflation keeps the newest in the oldest slot", steps: func(o *Outbox) {
			o.Deliver(1, 1, []byte("1v1"))
			o.Deliver(2, 1, []byte("2v1"))
			o.Deliver(1, 2, []byte("1v2"))
			o.Deliver(1, 3, []byte("1v3"))
		}, want: "[1v3 2v1]"},
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOutbox(4)
			tc.steps(o)
			if got := fmt.Sprint(drain(o)); got != tc.want {
				t.Errorf("wrote %s, want %s", got, tc.want)
			}
			if o.Len() != 0 {
				t.Errorf("Len %d after draining", o.Len())
			}
		})
	}
}

func TestOutboxBounds(t *testing.T) {
	o := NewOutbox(2)
	for v := int64(1); v <= 1000; v++ {
		o.Deliver(v%10+1, v, []byte("x"))
	}
	if o.Len() != 10 {
		t.Errorf("Len %d, want 10: one event per product", o.Len())
	}
	if conflated, _ := o.Stats(); conflated != 990 {
		t.Errorf("conflated %d, want 990", conflated)
	}
	if o.Control([]byte("a")) != nil || o.Control([]byte("b")) != nil || o.Control([]byte("c")) != ErrControlFull {
		t.Error("control FIFO not bounded at 2")
	}
	select {
	case <-o.Ready():
	default:
		t.Error("Ready not signalled")
	}
}

func TestOutboxDeliverAllocs(t *testing.T) {
	o := NewOutbox(1)
	ev := []byte(`{"version":1}`)
	v := int64(0)
	o.Deliver(1, 1, ev)
	o.Pop()
	allocs := testing.AllocsPerRun(1000, func() {
		v++
		o.Deliver(1, v+1, ev)
		o.Pop()
	})
	if allocs != 0 {
		t.Errorf("Deliver+Pop allocates %v times", allocs)
	}
}
