package schema_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/productwatch/productwatch/pkg/postgres"
	"github.com/productwatch/productwatch/pkg/schema"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestMigrateEmpty applies the migrations to an empty database from several
// goroutines at once (as replicas starting together do): each migration is
// applied once, every caller ends at the latest version, and Check agrees.
func TestMigrateEmpty(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pg.DB.Exec(`DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
	m, err := schema.New(pg.DB, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Check(ctx); err == nil {
		t.Fatal("Check on an empty database reported current")
	}

	const replicas = 4
	versions := make([]int64, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			db, err := postgres.Open(pg.DSN, 2)
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			versions[i], errs[i] = schema.Migrate(ctx, db, nil)
		})
	}
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil || versions[i] < 1 || versions[i] != versions[0] {
			t.Errorf("replica %d: version %d, %v", i, versions[i], errs[i])
		}
	}
	var applied int
	if err := pg.DB.QueryRow(`SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if int64(applied) != versions[0] {
		t.Errorf("%d migrations recorded, want %d (each once)", applied, versions[0])
	}
	if err := m.Check(ctx); err != nil {
		t.Errorf("Check after migrating: %v", err)
	}
}

// TestDownUp: every migration can be rolled back and applied again.
func TestDownUp(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	m, err := schema.New(pg.DB, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.DownTo(ctx, 0); err != nil {
		t.Fatalf("down: %v", err)
	}
	if err := m.Check(ctx); !errors.Is(err, schema.ErrPending) {
		t.Fatalf("Check after down = %v, want ErrPending", err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if _, err := pg.DB.Exec(`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available) VALUES ('a','b',1,'EUR',1)`); err != nil {
		t.Errorf("schema unusable after down and up: %v", err)
	}
}

// TestUpRetryingStopsWithContext: against a database that never answers,
// UpRetrying keeps trying until its context ends, then returns that error.
func TestUpRetryingStopsWithContext(t *testing.T) {
	db, err := postgres.Open("postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	m, err := schema.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.UpRetrying(ctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("UpRetrying = %v, want context.Canceled", err)
	}
}
