package testenv

import (
	"context"
	"database/sql"
	"testing"
	"time"
)

// SeedProducts inserts n products ("Maker", "Seed <i>", 10.00EUR, 100 units)
// into db in one statement and returns their ids, in insertion order. Each
// insert goes through the trigger, so the change log gets n INSERTs.
func SeedProducts(t testing.TB, db *sql.DB, n int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		SELECT 'Maker', 'Seed ' || g, 10.00, 'EUR', 100 FROM generate_series(1, $1) g ORDER BY g RETURNING product_id`, n)
	if err != nil {
		t.Fatalf("seed products: %v", err)
	}
	defer rows.Close()
	ids := make([]int64, 0, n)
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatalf("seed products: %v", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("seed products: %v", err)
	}
	return ids
}
