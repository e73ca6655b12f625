package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/productwatch/productwatch/pkg/pgserver"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// benchProducts is how many products the write benchmarks spread over.
const benchProducts = 1000

// BenchmarkPutProduct measures the write path: PUT /products/{id} through the
// gateway's handler (routing, auth, decoding, validation) to PostgreSQL and
// back, with the trigger writing the change log. clients=16 matches the
// pgbench comparison below.
func BenchmarkPutProduct(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run("clients="+strconv.Itoa(clients), func(b *testing.B) {
			pg := testenv.Postgres(b)
			testenv.SeedProducts(b, pg.DB, benchProducts)
			cfg, err := loadConfig(nil)
			if err != nil {
				b.Fatal(err)
			}
			cfg.APIToken = testToken
			db, err := openDB(pg.DSN, defaultDBMaxConns) // the gateway's own pool settings
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			g, err := newGateway(cfg, db, nil, newResyncQueue(), testenv.Logger(b))
			if err != nil {
				b.Fatal(err)
			}
			var failures atomic.Int64
			put := func(rng *rand.Rand) {
				id := rng.IntN(benchProducts) + 1
				body := fmt.Sprintf(`{"manufacturer":"Apple","productName":"MacBook %d","pricePerUnit":"500EUR","unitsAvailable":%d}`, id, rng.IntN(100))
				req := httptest.NewRequest(http.MethodPut, "/products/"+strconv.Itoa(id), strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+testToken)
				rec := httptest.NewRecorder()
				g.handler.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					failures.Add(1)
				}
			}
			b.ResetTimer()
			if clients == 1 {
				rng := rand.New(rand.NewPCG(1, 2))
				for b.Loop() {
					put(rng)
				}
			} else {
				b.SetParallelism((clients + 1) / 2) // GOMAXPROCS (2 here) × this many goroutines
				b.RunParallel(func(pb *testing.PB) {
					rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
					for pb.Next() {
						put(rng)
					}
				})
			}
			b.StopTimer()
			if n := failures.Load(); n > 0 {
				b.Fatalf("%d PUTs failed", n)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}

// pgbenchUpdate is the statement PUT runs (product.Store.Replace), for pgbench.
const pgbenchUpdate = `\set id random(1, 1000)
\set units random(0, 99)
UPDATE products SET manufacturer = 'Apple', product_name = 'MacBook ' || :id, price_amount = '500',
       price_currency = 'EUR', units_available = :units
 WHERE product_id = :id AND (NULL::bigint[] IS NULL OR version = ANY(NULL::bigint[]))
 RETURNING version, product_json(products);
`

// BenchmarkPgbenchUpdate runs the same UPDATE as PUT with pgbench, on the same
// server, schema and trigger: the floor the HTTP write path is compared to.
// b.N transactions are spread over the clients.
func BenchmarkPgbenchUpdate(b *testing.B) {
	pgbench, err := pgserver.Tool("pgbench")
	if err != nil {
		b.Fatal(err)
	}
	for _, clients := range []int{1, 16} {
		b.Run("clients="+strconv.Itoa(clients), func(b *testing.B) {
			pg := testenv.Postgres(b)
			testenv.SeedProducts(b, pg.DB, benchProducts)
			script := filepath.Join(b.TempDir(), "put.sql")
			if err := os.WriteFile(script, []byte(pgbenchUpdate), 0o644); err != nil {
				b.Fatal(err)
			}
			perClient := max(1, (b.N+clients-1)/clients)
			b.ResetTimer()
			out, err := exec.CommandContext(context.Background(), pgbench, "-n", "-M", "prepared",
				"-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
				"-t", strconv.Itoa(perClient), "-f", script, pg.DSN).CombinedOutput()
			b.StopTimer()
			if err != nil {
				b.Fatalf("pgbench: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "number of failed transactions: 0") {
				b.Fatalf("pgbench reported failures:\n%s", out)
			}
			b.ReportMetric(float64(perClient*clients)/b.Elapsed().Seconds(), "updates/s")
		})
	}
}
