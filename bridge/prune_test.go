package main

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestPrune: only changes that are both published (at or below the cursor)
// and older than the retention window go, batch by batch.
func TestPrune(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := pg.DB.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
	      SELECT 'M', 'P' || i, 1, 'EUR', i FROM generate_series(1, 10) i`) // seqs 1..10
	exec(`UPDATE product_changes SET changed_at = now() - interval '2 days' WHERE seq <= 8`)
	exec(`UPDATE bridge_cursor SET cursor_seq = 6`) // 7 and 8 are old but not published yet

	p := pruner{db: pg.DB, retention: 24 * time.Hour, interval: time.Hour, batch: 2,
		logger: testenv.Logger(t), metrics: newBridgeMetrics(prometheus.NewRegistry())}
	n, err := p.prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var left []int64
	rows, err := pg.DB.Query(`SELECT seq FROM product_changes ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			t.Fatal(err)
		}
		left = append(left, seq)
	}
	if n != 6 || len(left) != 4 || left[0] != 7 {
		t.Errorf("pruned %d, left %v; want 6 pruned and 7..10 left", n, left)
	}
}
