package sleep

import (
	"context"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	if !For(context.Background(), time.Millisecond) {
		t.Error("For returned false although the pause passed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if For(ctx, time.Hour) {
		t.Error("For returned true for a cancelled context")
	}
	if waited := time.Since(start); waited > time.Minute {
		t.Errorf("For waited %v for a cancelled context", waited)
	}
}
