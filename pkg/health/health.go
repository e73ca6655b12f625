// Package health serves the probes every productwatch process exposes:
// /healthz (the process is alive) and /readyz (it can do its job: its
// dependencies answer and it is not shutting down), as plain net/http
// handlers that any router can mount.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Check reports whether one dependency is usable; nil means ready.
type Check func(ctx context.Context) error

// Probes holds the readiness checks of a process. Add every check before the
// handlers serve; after that, Probes is safe for concurrent use.
type Probes struct {
	timeout  time.Duration
	names    []string
	checks   []Check
	draining atomic.Bool
}

// errDraining is the readiness answer of a process that is shutting down.
var errDraining = errors.New("shutting down")

// New returns Probes whose checks each get at most timeout (default 2 s when
// timeout <= 0).
func New(timeout time.Duration) *Probes {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return &Probes{timeout: timeout}
}

// Add registers a named readiness check (for example "database").
func (p *Probes) Add(name string, check Check) {
	p.names = append(p.names, name)
	p.checks = append(p.checks, check)
}

// SetDraining marks the process as shutting down: from now on it is never
// ready, so load balancers stop sending it work.
func (p *Probes) SetDraining() { p.draining.Store(true) }

// Result is the outcome of every check: "ok" or the error text, by name.
type Result struct {
	Status string            `json:"status"` // "ready" or "not ready"
	Checks map[string]string `json:"checks"`
}

// Ready runs every check concurrently and reports the outcome.
func (p *Probes) Ready(ctx context.Context) (Result, bool) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	errs := make([]error, len(p.checks))
	var wg sync.WaitGroup
	for i, check := range p.checks {
		wg.Go(func() { errs[i] = check(ctx) })
	}
	wg.Wait()
	res := Result{Status: "ready", Checks: make(map[string]string, len(p.checks)+1)}
	ready := true
	for i, name := range p.names {
		res.Checks[name] = "ok"
		if errs[i] != nil {
			res.Checks[name] = errs[i].Error()
			ready = false
		}
	}
	if p.draining.Load() {
		res.Checks["shutdown"] = errDraining.Error()
		ready = false
	}
	if !ready {
		res.Status = "not ready"
	}
	return res, ready
}

// LiveHandler answers 200 {"status":"ok"} while the process runs.
func (p *Probes) LiveHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// TerseReadyHandler answers 200 {"status":"ready"} when ready and 503
// {"status":"not ready"} otherwise, without the checks' error texts (they
// can name hosts and addresses): for a public port. ReadyHandler has the
// details, for a private one.
func (p *Probes) TerseReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, ready := p.Ready(r.Context())
		writeJSON(w, readyStatus(ready), map[string]string{"status": res.Status})
	})
}

// readyStatus is the HTTP status of a readiness answer: 200 when ready, 503
// otherwise.
func readyStatus(ready bool) int {
	if ready {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// ReadyHandler answers 200 with the checks when ready, 503 otherwise.
func (p *Probes) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, ready := p.Ready(r.Context())
		writeJSON(w, readyStatus(ready), res)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing to do
}
