// Package sleep provides a pause that ends early when its context does, for
// the retry and poll loops of both programs.
package sleep

import (
	"context"
	"time"
)

// For waits d, or less when ctx ends first; it reports whether d passed, so
// that a loop can stop on false. It does not leave a timer behind.
func For(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
