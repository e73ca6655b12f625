package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/productwatch/productwatch/deploy/loadgen/tally"
)

// writeOptions configures the writers of a scenario.
type writeOptions struct {
	rate        float64       // changes per second, on a fixed schedule
	duration    time.Duration // how long the schedule runs
	products    []int64       // each change picks one of these (uniformly at random when several)
	connections int           // UPDATEs in flight at most
	via         string        // "sql": UPDATE in PostgreSQL; "rest": PATCH through the gateway
	seed        uint64
}

// updater makes one change to a product and returns the version committed.
type updater interface {
	update(ctx context.Context, product int64) (int64, error)
	close()
}

// sqlUpdater UPDATEs on a connection of its own, with a prepared statement.
type sqlUpdater struct {
	conn *sql.Conn
	stmt *sql.Stmt
}

func newSQLUpdater(ctx context.Context, db *sql.DB) (*sqlUpdater, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	stmt, err := conn.PrepareContext(ctx,
		`UPDATE products SET units_available = units_available % 1000000 + 1 WHERE product_id = $1 RETURNING version`)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("prepare the UPDATE: %w", err)
	}
	return &sqlUpdater{conn: conn, stmt: stmt}, nil
}

func (u *sqlUpdater) update(ctx context.Context, product int64) (int64, error) {
	var version int64
	err := u.stmt.QueryRowContext(ctx, product).Scan(&version)
	return version, err
}

func (u *sqlUpdater) close() {
	u.stmt.Close()
	u.conn.Close()
}

// restUpdater PATCHes the product through the gateway's REST API.
type restUpdater struct {
	client  *http.Client
	baseURL string
	token   string
	n       int
}

func (u *restUpdater) update(ctx context.Context, product int64) (int64, error) {
	u.n++
	body := []byte(`{"unitsAvailable":` + strconv.Itoa(u.n%1000000+1) + `}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u.baseURL+"/products/"+strconv.FormatInt(product, 10), bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+u.token)
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("PATCH product %d: %s: %s", product, resp.Status, data)
	}
	var p struct {
		Version int64 `json:"version"`
	}
	if err := json.Unmarshal(data, &p); err != nil || p.Version == 0 {
		return 0, fmt.Errorf("PATCH product %d: no version in %s (%v)", product, data, err)
	}
	return p.Version, nil
}

func (u *restUpdater) close() {}

// writeResult is what the writers did.
type writeResult struct {
	Scheduled int64 `json:"scheduled"`
	Committed int64 `json:"committed"`
	Failed    int64 `json:"failed"`
	// ScheduleLag: how late UPDATEs started against their scheduled time
	// (the writers are open loop: a slow system makes them late, never
	// slower).
	ScheduleLag tally.Summary `json:"scheduleLag"`
	FirstError  string        `json:"firstError,omitempty"`
	// Seconds: from the first scheduled change until the last UPDATE
	// returned; Rate: commits per second over it.
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	Via     string  `json:"via"`

	commits tally.Commits
	started time.Time
	ended   time.Time
}

// job is one scheduled change.
type job struct {
	product int64
	at      time.Time
}

// write changes products on a fixed schedule (open loop: the schedule is set
// in advance and every change is queued at its time, whatever the system's
// pace) until the schedule ends, then waits for the UPDATEs in flight.
func write(ctx context.Context, opts writeOptions, newUpdater func(context.Context) (updater, error)) (*writeResult, error) {
	n := int(opts.rate * opts.duration.Seconds())
	interval := time.Duration(float64(time.Second) / opts.rate)
	updaters := make([]updater, opts.connections)
	for i := range updaters {
		u, err := newUpdater(ctx)
		if err != nil {
			for _, u := range updaters[:i] {
				u.close()
			}
			return nil, err
		}
		updaters[i] = u
	}
	defer func() {
		for _, u := range updaters {
			u.close()
		}
	}()

	type outcome struct {
		commits  []tally.Commit
		products []int64
		lag      []int64
		failed   int64
		firstErr error
	}
	outcomes := make([]outcome, len(updaters))
	jobs := make(chan job, n) // room for the whole schedule: queuing never blocks the schedule
	var wg sync.WaitGroup
	for i, u := range updaters {
		wg.Go(func() {
			o := &outcomes[i]
			for j := range jobs {
				clock := time.Now() // the writer's clock, before the UPDATE
				o.lag = append(o.lag, clock.Sub(j.at).Nanoseconds())
				version, err := u.update(ctx, j.product)
				if err != nil {
					o.failed++
					if o.firstErr == nil {
						o.firstErr = err
					}
					continue
				}
				o.commits = append(o.commits, tally.Commit{Version: version, WriterClock: clock.UnixNano()})
				o.products = append(o.products, j.product)
			}
		})
	}

	rng := rand.New(rand.NewPCG(opts.seed, 1))
	res := &writeResult{Via: opts.via, commits: tally.Commits{}, started: time.Now()}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
schedule:
	for i := range n {
		at := res.started.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				break schedule
			case <-timer.C:
			}
		}
		product := opts.products[0]
		if len(opts.products) > 1 {
			product = opts.products[rng.IntN(len(opts.products))]
		}
		jobs <- job{product: product, at: at}
		res.Scheduled++
	}
	close(jobs)
	wg.Wait()
	res.ended = time.Now()

	lag := tally.NewHistogram()
	for _, o := range outcomes {
		for k, c := range o.commits {
			res.commits[o.products[k]] = append(res.commits[o.products[k]], c)
		}
		res.Committed += int64(len(o.commits))
		res.Failed += o.failed
		if o.firstErr != nil && res.FirstError == "" {
			res.FirstError = o.firstErr.Error()
		}
		for _, l := range o.lag {
			tally.RecordNanos(lag, l)
		}
	}
	res.commits.Sort()
	res.ScheduleLag = tally.Summarize(lag)
	if res.Seconds = res.ended.Sub(res.started).Seconds(); res.Seconds > 0 {
		res.Rate = float64(res.Committed) / res.Seconds
	}
	return res, ctx.Err()
}

// finals returns each product's last committed version.
func (r *writeResult) finals() map[int64]int64 {
	out := make(map[int64]int64, len(r.commits))
	for id := range r.commits {
		out[id] = r.commits.Final(id)
	}
	return out
}

// idRange returns 1..n.
func idRange(n int) []int64 {
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	return ids
}

// pickDistinct returns k distinct ids out of 1..n, sorted.
func pickDistinct(rng *rand.Rand, n, k int) []int64 {
	seen := make(map[int64]bool, k)
	out := make([]int64, 0, k)
	for len(out) < min(k, n) {
		id := rng.Int64N(int64(n)) + 1
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
