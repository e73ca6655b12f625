package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// slowUpdater stands in for the database: each update takes delay and
// returns the product's next version; every failEvery-th one fails.
type slowUpdater struct {
	mu        *sync.Mutex
	versions  map[int64]int64
	calls     *int
	delay     time.Duration
	failEvery int
}

func (u *slowUpdater) update(ctx context.Context, product int64) (int64, error) {
	time.Sleep(u.delay) // the system under test being slow
	u.mu.Lock()
	defer u.mu.Unlock()
	*u.calls++
	if u.failEvery > 0 && *u.calls%u.failEvery == 0 {
		return 0, errors.New("refused")
	}
	u.versions[product]++
	return u.versions[product], nil
}

func (u *slowUpdater) close() {}

// TestWriteOpenLoop: a system slower than the schedule makes the writes late
// (the lag says by how much), never fewer; every commit is recorded with its
// version, in version order per product.
func TestWriteOpenLoop(t *testing.T) {
	var (
		mu    sync.Mutex
		calls int
	)
	versions := map[int64]int64{1: 1, 2: 1}
	newUpdater := func(context.Context) (updater, error) {
		return &slowUpdater{mu: &mu, versions: versions, calls: &calls, delay: 5 * time.Millisecond, failEvery: 10}, nil
	}
	// 100 changes scheduled over 200 ms; one connection needs 500 ms for them.
	res, err := write(context.Background(), writeOptions{rate: 500, duration: 200 * time.Millisecond,
		products: []int64{1, 2}, connections: 1, via: "sql", seed: 1}, newUpdater)
	if err != nil {
		t.Fatal(err)
	}
	if res.Scheduled != 100 || res.Committed != 90 || res.Failed != 10 || res.FirstError != "refused" {
		t.Errorf("scheduled %d, committed %d, failed %d (%q); want 100, 90, 10 (refused)",
			res.Scheduled, res.Committed, res.Failed, res.FirstError)
	}
	if res.ScheduleLag.Max < 200 {
		t.Errorf("schedule lag max %.1f ms: the last changes should start about 300 ms late", res.ScheduleLag.Max)
	}
	total := 0
	for id, list := range res.commits {
		total += len(list)
		for i := 1; i < len(list); i++ {
			if list[i].Version != list[i-1].Version+1 || list[i].WriterClock < list[i-1].WriterClock {
				t.Fatalf("product %d commits out of order at %d: %+v then %+v", id, i, list[i-1], list[i])
			}
		}
		if got := res.finals()[id]; got != versions[id] {
			t.Errorf("final version of %d = %d, want %d", id, got, versions[id])
		}
	}
	if total != 90 {
		t.Errorf("%d commits recorded, want 90", total)
	}
}

// TestWriteStopsWithContext: cancelling stops the schedule.
func TestWriteStopsWithContext(t *testing.T) {
	var (
		mu    sync.Mutex
		calls int
	)
	newUpdater := func(context.Context) (updater, error) {
		return &slowUpdater{mu: &mu, versions: map[int64]int64{}, calls: &calls}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	res, err := write(ctx, writeOptions{rate: 100, duration: time.Hour, products: []int64{1}, connections: 2}, newUpdater)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's", err)
	}
	if res.Scheduled > 20 {
		t.Errorf("scheduled %d changes in 100 ms at 100/s", res.Scheduled)
	}
}
