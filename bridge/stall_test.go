package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestStallWatch: a failing wave makes the readiness check fail only once it
// has failed for the threshold, and a finished wave clears it.
func TestStallWatch(t *testing.T) {
	w := newStallWatch(50 * time.Millisecond)
	if err := w.check(t.Context()); err != nil {
		t.Fatalf("fresh: %v", err)
	}
	w.failed(errors.New("first"))
	if err := w.check(t.Context()); err != nil {
		t.Errorf("just failed: %v, want ready (a hiccup is no stall)", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.check(t.Context()) == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready 5s after the first failure")
		}
		w.failed(errors.New("still failing"))
		time.Sleep(5 * time.Millisecond)
	}
	if err := w.check(t.Context()); !strings.Contains(err.Error(), "still failing") {
		t.Errorf("check = %v, want the latest failure in it", err)
	}
	w.done()
	if err := w.check(t.Context()); err != nil {
		t.Errorf("after the wave: %v", err)
	}
	var none *stallWatch
	none.failed(errors.New("x"))
	none.done()
	if err := none.check(t.Context()); err != nil {
		t.Errorf("nil watch: %v", err)
	}
}
