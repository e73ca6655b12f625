package postgres_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/productwatch/productwatch/pkg/postgres"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestOpen(t *testing.T) {
	pg := testenv.Postgres(t)
	db, err := postgres.Open(pg.DSN, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Parameters of every kind the store passes travel in one round trip.
	var text string
	var n int64
	err = db.QueryRowContext(context.Background(), `SELECT $1::text || $2::numeric::text, $3::bigint + 1`, "12.50", "1", int64(41)).Scan(&text, &n)
	if err != nil || text != "12.501" || n != 42 {
		t.Errorf("query = %q %d %v", text, n, err)
	}
	if db.Stats().MaxOpenConnections != 2 {
		t.Errorf("max open connections %d", db.Stats().MaxOpenConnections)
	}
}

func TestOpenBadDSN(t *testing.T) {
	if _, err := postgres.Open("postgres://%zz", 1); err == nil {
		t.Error("malformed DSN accepted")
	}
}

// TestTimeouts: the pool's sessions carry statement_timeout and lock_timeout,
// and a statement waiting on a lock fails fast instead of waiting forever.
func TestTimeouts(t *testing.T) {
	pg := testenv.Postgres(t)
	db, err := postgres.Open(pg.DSN, 2, postgres.WithStatementTimeout(1500*time.Millisecond), postgres.WithLockTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	var st, lt string
	if err := db.QueryRowContext(ctx, `SELECT current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&st, &lt); err != nil {
		t.Fatal(err)
	}
	if st != "1500ms" || lt != "200ms" {
		t.Errorf("statement_timeout %q, lock_timeout %q", st, lt)
	}
	// Hold a lock on a table from another pool, then touch it.
	tx, err := pg.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `LOCK TABLE products IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = db.ExecContext(ctx, `SELECT count(*) FROM products`)
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "55P03" {
		t.Fatalf("query under the lock: %v, want lock_timeout (55P03)", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("waited %v for a 200ms lock timeout", waited)
	}
	if _, err := db.ExecContext(ctx, `SELECT pg_sleep(3)`); !errors.As(err, &pqErr) || pqErr.Code != "57014" {
		t.Errorf("a 3 s statement: %v, want statement_timeout (57014)", err)
	}
}

func TestNoTimeoutsByDefault(t *testing.T) {
	pg := testenv.Postgres(t)
	db, err := postgres.Open(pg.DSN, 1, postgres.WithStatementTimeout(0))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st string
	if err := db.QueryRow(`SELECT current_setting('statement_timeout')`).Scan(&st); err != nil || st != "0" {
		t.Errorf("statement_timeout %q %v, want the server's 0", st, err)
	}
}
