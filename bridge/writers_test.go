package main

// Writers that load the database for the end-to-end tests: concurrent
// inserts, updates and deletes over a pool of products.

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// writeLoad describes the load startWriters puts on the database.
type writeLoad struct {
	Writers  int           // concurrent writers, each with a connection of its own
	Total    int           // changes to commit, in all
	Products []int64       // products to change (testenv.SeedProducts); inserts add, deletes remove
	Timeout  time.Duration // the whole load must be done by then
	// TolerateErrors keeps the writers going through failed statements (a
	// database restart); they are counted, not returned. A failed statement
	// may still have committed: the change log, not the count, is the truth.
	TolerateErrors bool
}

// writers is a running load.
type writers struct {
	db        *sql.DB
	load      writeLoad
	pool      productPool
	claimed   atomic.Int64 // changes being or been committed
	committed atomic.Int64
	failed    atomic.Int64
	stopped   atomic.Bool // stop was called: falling short of Total is no error
	cancel    context.CancelFunc
	done      chan struct{}
	err       error // set before done closes
	began     time.Time
	elapsed   time.Duration
}

// startWriters runs load on db in the background: load.Writers goroutines
// each loop over a mix of UPDATE (80 %), INSERT and DELETE (10 % each) of the
// products, until load.Total changes have committed, an error (unless
// tolerated), or load.Timeout. When the test ends they are stopped.
func startWriters(t testing.TB, db *sql.DB, load writeLoad) *writers {
	t.Helper()
	if load.Writers < 1 || load.Total < 1 || len(load.Products) == 0 || load.Timeout <= 0 {
		t.Fatalf("startWriters: bad load %+v", load)
	}
	w := &writers{db: db, load: load, done: make(chan struct{}), began: time.Now()}
	w.pool.ids = append([]int64(nil), load.Products...)
	ctx, cancel := context.WithTimeout(context.Background(), load.Timeout)
	w.cancel = cancel
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range load.Writers {
		wg.Go(func() {
			if err := w.write(ctx); err != nil && !w.stopped.Load() {
				errOnce.Do(func() {
					firstErr = err
					cancel()
				})
			}
		})
	}
	go func() {
		wg.Wait()
		cancel()
		w.elapsed = time.Since(w.began)
		if firstErr == nil && !w.stopped.Load() && w.committed.Load() < int64(load.Total) {
			firstErr = fmt.Errorf("writers committed %d of %d changes in %v (%d statements failed)",
				w.committed.Load(), load.Total, load.Timeout, w.failed.Load())
		}
		w.err = firstErr
		close(w.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

// Committed returns how many changes have committed so far.
func (w *writers) Committed() int64 { return w.committed.Load() }

// Done is closed when the writers have stopped.
func (w *writers) Done() <-chan struct{} { return w.done }

// Wait waits for the writers to stop and fails the test with their error.
func (w *writers) Wait(t testing.TB) {
	t.Helper()
	<-w.done
	if w.err != nil {
		t.Fatalf("writers: %v", w.err)
	}
	t.Logf("writers: %d changes committed by %d writers in %v (%d statements failed)",
		w.committed.Load(), w.load.Writers, w.elapsed.Round(time.Millisecond), w.failed.Load())
}

// stop ends the load before Total (which is then no error) and waits for
// the writers to stop.
func (w *writers) stop(t testing.TB) {
	t.Helper()
	w.stopped.Store(true)
	w.cancel()
	w.Wait(t)
}

// running reports whether the writers are still writing.
func (w *writers) running() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// waitCommitted waits until at least n changes have committed, or the
// writers have stopped.
func (w *writers) waitCommitted(t testing.TB, n int64) {
	t.Helper()
	testenv.WaitFor(t, w.load.Timeout, fmt.Sprintf("%d committed changes", n), func() (bool, string) {
		select {
		case <-w.done:
			return true, ""
		default:
		}
		c := w.Committed()
		return c >= n, fmt.Sprintf("%d committed", c)
	})
}

// statementTimeout bounds one write, so that a connection left hanging by a
// database restart does not hold a writer for the whole load.
const statementTimeout = 10 * time.Second

// write is one writer's loop.
func (w *writers) write(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	minProducts := max(1, len(w.load.Products)/2)
	total := int64(w.load.Total)
	for ctx.Err() == nil {
		if w.claimed.Add(1) > total {
			w.claimed.Add(-1)
			if w.committed.Load() >= total {
				return nil
			}
			time.Sleep(time.Millisecond) // a claimed change is still in flight; it may fail
			continue
		}
		opCtx, cancel := context.WithTimeout(ctx, statementTimeout)
		ok, err := w.writeOne(opCtx, rng, minProducts)
		cancel()
		if ok {
			w.committed.Add(1)
			continue
		}
		w.claimed.Add(-1)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return nil // the load's time is up; the caller reports the shortfall
		}
		if !w.load.TolerateErrors {
			return err
		}
		w.failed.Add(1)
		select { // back off while the database recovers
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// writeOne makes one change and reports whether it committed one.
func (w *writers) writeOne(ctx context.Context, rng *rand.Rand, minProducts int) (bool, error) {
	db := w.db
	switch op := rng.IntN(10); {
	case op == 0 || w.pool.len() < minProducts: // INSERT
		var id int64
		if err := db.QueryRowContext(ctx, insertProduct, "Maker", fmt.Sprintf("Product %d", rng.Uint32()),
			price(rng), "EUR", rng.IntN(1000)).Scan(&id); err != nil {
			return false, fmt.Errorf("insert: %w", err)
		}
		w.pool.add(id)
		return true, nil
	case op == 1: // DELETE
		id := w.pool.take(rng)
		res, err := db.ExecContext(ctx, `DELETE FROM products WHERE product_id = $1`, id)
		if err != nil {
			return false, fmt.Errorf("delete %d: %w", id, err)
		}
		n, err := res.RowsAffected()
		return n == 1, err
	default: // UPDATE
		id := w.pool.pick(rng)
		res, err := db.ExecContext(ctx, `UPDATE products SET units_available = $2, price_amount = $3 WHERE product_id = $1`,
			id, rng.IntN(1000), price(rng))
		if err != nil {
			return false, fmt.Errorf("update %d: %w", id, err)
		}
		n, err := res.RowsAffected() // 0: deleted meanwhile
		return n == 1, err
	}
}

const insertProduct = `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
	VALUES ($1, $2, $3, $4, $5) RETURNING product_id`

// price returns a random price amount as text, e.g. "12.50".
func price(rng *rand.Rand) string {
	return fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100))
}

// productPool is the writers' shared set of live products.
type productPool struct {
	mu  sync.Mutex
	ids []int64
}

func (p *productPool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ids)
}

func (p *productPool) add(id int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids = append(p.ids, id)
}

// pick returns a random product, leaving it in the pool.
func (p *productPool) pick(rng *rand.Rand) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[rng.IntN(len(p.ids))]
}

// take removes a random product from the pool and returns it.
func (p *productPool) take(rng *rand.Rand) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := rng.IntN(len(p.ids))
	id := p.ids[i]
	p.ids[i] = p.ids[len(p.ids)-1]
	p.ids = p.ids[:len(p.ids)-1]
	return id
}

// sessions returns n connections of db of their own (a session each, for
// transactions the test holds open or runs side by side), closed when the
// test ends.
func sessions(t testing.TB, ctx context.Context, db *sql.DB, n int) []*sql.Conn {
	t.Helper()
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}
