package postgres_test

import (
	"context"
	"os"
	"testing"

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
