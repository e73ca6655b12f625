package testenv

import (
	"testing"
	"time"
)

// PollInterval is how often [Poll] and [WaitFor] check their condition.
const PollInterval = 10 * time.Millisecond

// Poll checks cond every [PollInterval] until it holds (true), timeout
// passes or the test's context ends (false). It is the one poll-until of the
// tests: conditions are polled with a deadline, never slept for.
func Poll(t testing.TB, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-t.Context().Done():
			return false
		case <-time.After(PollInterval):
		}
	}
	return true
}

// WaitFor polls cond like [Poll], failing the test with what and cond's last
// detail when timeout passes first. It returns how long it waited.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, detail string)) time.Duration {
	t.Helper()
	began := time.Now()
	var detail string
	if !Poll(t, timeout, func() bool {
		var ok bool
		ok, detail = cond()
		return ok
	}) {
		t.Fatalf("waited %v for %s; last: %s", time.Since(began).Round(time.Millisecond), what, detail)
	}
	return time.Since(began)
}

// WaitUntil is [WaitFor] for a condition without a detail to report.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return WaitFor(t, timeout, what, func() (bool, string) { return cond(), "not yet" })
}
