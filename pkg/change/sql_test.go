package change_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestSQLShapes holds the one author of the wire shapes, the SQL functions
// change_event, snapshot_event and change_notice (migrations/), to the
// contract: the field names of DESIGN.md, and the layout EventVersion and
// ChangedAt read without decoding.
func TestSQLShapes(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	if _, err := pg.DB.Exec(`INSERT INTO products (product_id, manufacturer, product_name, price_amount, price_currency, units_available)
		VALUES (7, 'Apple "A"', 'MacBook', 12.50, 'EUR', 3)`); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := pg.DB.Exec(`UPDATE products SET units_available = units_available + 1 WHERE product_id = 7`); err != nil {
			t.Fatal(err)
		}
	}
	var event, snapshot, notice, refNotice string
	changedAt := time.Date(2026, 11, 25, 1, 2, 3, 456789000, time.UTC)
	if err := pg.DB.QueryRow(`SELECT change_event(123, 'DELETE', 4, $1, p), snapshot_event(p),
	        change_notice(change_event(123, 'DELETE', 4, $1, p), 123, 7), change_notice(repeat('x', 8000), 124, 7)
		FROM products p WHERE product_id = 7`, changedAt).Scan(&event, &snapshot, &notice, &refNotice); err != nil {
		t.Fatal(err)
	}

	type product struct {
		ProductID      int64  `json:"productId"`
		Manufacturer   string `json:"manufacturer"`
		ProductName    string `json:"productName"`
		PricePerUnit   string `json:"pricePerUnit"`
		UnitsAvailable int64  `json:"unitsAvailable"`
		Version        int64  `json:"version"`
		UpdatedAt      string `json:"updatedAt"`
	}
	var ev struct {
		Seq       int64     `json:"seq"`
		Action    string    `json:"action"`
		ProductID int64     `json:"productId"`
		Version   int64     `json:"version"`
		ChangedAt time.Time `json:"changedAt"`
		Product   product   `json:"product"`
	}
	dec := json.NewDecoder(strings.NewReader(event))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		t.Fatalf("event %s: %v", event, err)
	}
	wantProduct := product{7, `Apple "A"`, "MacBook", "12.50EUR", 5, 3, ev.Product.UpdatedAt}
	if ev.Seq != 123 || ev.Action != string(change.Delete) || ev.ProductID != 7 || ev.Version != 4 ||
		!ev.ChangedAt.Equal(changedAt) || ev.Product != wantProduct {
		t.Errorf("event %s decoded as %+v", event, ev)
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000000Z", ev.Product.UpdatedAt); err != nil {
		t.Errorf("updatedAt %q: %v", ev.Product.UpdatedAt, err)
	}
	if v, ok := change.EventVersion([]byte(event)); !ok || v != 4 {
		t.Errorf("EventVersion(event) = %d %v, want 4 (the top-level version, not the product's 3)", v, ok)
	}
	if at, ok := change.ChangedAt([]byte(event)); !ok || !at.Equal(changedAt) {
		t.Errorf("ChangedAt(event) = %v %v, want %v", at, ok, changedAt)
	}

	var snap struct {
		Action    string  `json:"action"`
		ProductID int64   `json:"productId"`
		Version   int64   `json:"version"`
		Product   product `json:"product"`
	}
	dec = json.NewDecoder(strings.NewReader(snapshot))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&snap); err != nil {
		t.Fatalf("snapshot %s: %v", snapshot, err)
	}
	if snap.Action != "SNAPSHOT" || snap.ProductID != 7 || snap.Version != 3 || snap.Product != wantProduct {
		t.Errorf("snapshot %s decoded as %+v", snapshot, snap)
	}
	if v, ok := change.EventVersion([]byte(snapshot)); !ok || v != 3 {
		t.Errorf("EventVersion(snapshot) = %d %v, want 3", v, ok)
	}
	if _, ok := change.ChangedAt([]byte(snapshot)); ok {
		t.Errorf("ChangedAt(snapshot) found a clock in %s", snapshot)
	}

	if notice != event {
		t.Errorf("notice of a small event = %s, want the event", notice)
	}
	if refNotice != `{"seq":124,"productId":7,"ref":true}` {
		t.Errorf("notice of a large event = %s", refNotice)
	}
}
