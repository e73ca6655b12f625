package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// stallWatch lets readiness see a publisher that is stuck: the changes of a
// wave, or the stream checks before them, failing again and again for
// longer than after. The publisher reports each failed attempt and the end
// of each wave; the "publishing" readiness check asks. Safe for concurrent
// use; the methods of a nil stallWatch do nothing.
type stallWatch struct {
	after time.Duration

	mu    sync.Mutex
	since time.Time // first failure of the current wave; zero: none
	last  error     // the latest failure
}

// newStallWatch returns a stallWatch reporting a stall once attempts have
// failed for after.
func newStallWatch(after time.Duration) *stallWatch { return &stallWatch{after: after} }

// failed records a failed attempt of the current wave.
func (w *stallWatch) failed(err error) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.since.IsZero() {
		w.since = time.Now()
	}
	w.last = err
}

// done records the end of a wave: published, or given up because the bridge
// stops leading.
func (w *stallWatch) done() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.since, w.last = time.Time{}, nil
}

// check is the readiness check: an error while attempts have been failing
// for after or longer.
func (w *stallWatch) check(context.Context) error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.since.IsZero() {
		return nil
	}
	if d := time.Since(w.since); d >= w.after {
		return fmt.Errorf("publishing has been failing for %v: %v", d.Round(time.Second), w.last)
	}
	return nil
}
