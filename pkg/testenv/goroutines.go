package testenv

import (
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// ownGrace is how long a goroutine of the program may take to end after
// Run has returned (it signalled its owner on its way out).
const ownGrace = 500 * time.Millisecond

// WaitGoroutines checks, right after a program's Run has returned, that
// Run left nothing running: within ownGrace, that no goroutine runs this
// module's code or was started by it (other than the tests' own); then, within
// timeout, that no more goroutines run than before (a count taken with
// runtime.NumGoroutine before Run started), for the libraries' goroutines
// that end shortly after their Close returns. It fails the test with the
// stacks of what is left. It closes http.DefaultClient's idle connections
// first (their goroutines are the test's). Call it from a test that is not
// parallel, so that no other test's goroutines come and go meanwhile.
func WaitGoroutines(t testing.TB, before int, timeout time.Duration) {
	t.Helper()
	// A goroutine that has just signalled its owner (close(done) in a
	// defer) is still on its way out: a moment's grace, no more.
	var own []string
	if !Poll(t, ownGrace, func() bool { own = ownGoroutines(); return len(own) == 0 }) {
		t.Fatalf("%d goroutines of the program still run %v after Run returned:\n\n%s", len(own), ownGrace, strings.Join(own, "\n\n"))
	}
	http.DefaultClient.CloseIdleConnections()
	if Poll(t, timeout, func() bool { return runtime.NumGoroutine() <= before }) {
		return
	}
	t.Fatalf("%d goroutines run %v after the program returned, %d before it started:\n\n%s",
		runtime.NumGoroutine(), timeout, before, allStacks())
}

// ownGoroutines returns the stacks of the goroutines that run code of this
// module, package main included, or were started by it, leaving out the
// tests' own: test functions, what they start directly, and testenv's.
func ownGoroutines() []string {
	var own []string
	for _, g := range strings.Split(allStacks(), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || startedByTest.MatchString(g) ||
			strings.Contains(g, modulePath+"/pkg/testenv.") {
			continue
		}
		for _, line := range strings.Split(g, "\n") {
			fn := strings.TrimPrefix(line, "created by ")
			if strings.HasPrefix(fn, "main.") || strings.HasPrefix(fn, modulePath+"/") {
				own = append(own, g)
				break
			}
		}
	}
	return own
}

// startedByTest matches a goroutine a test function started itself (in a
// test binary, package main's functions are named by its import path).
var startedByTest = regexp.MustCompile(`(?m)^created by \S+\.Test\w*(\.func\d+)* in goroutine`)

func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}
