package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/pgserver"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestPostgresParallel gives two parallel tests a database each and checks
// that both are migrated and different.
func TestPostgresParallel(t *testing.T) {
	names := make([]string, 2)
	t.Run("group", func(t *testing.T) {
		for i := range names {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				pg := Postgres(t)
				if !strings.HasPrefix(pg.Name, namePrefix) {
					t.Errorf("Name = %q, want prefix %q", pg.Name, namePrefix)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				var current string
				var products, changes *string
				if err := pg.DB.QueryRowContext(ctx,
					`SELECT current_database(), to_regclass('products')::text, to_regclass('product_changes')::text`).
					Scan(&current, &products, &changes); err != nil {
					t.Fatal(err)
				}
				if current != pg.Name || products == nil || changes == nil {
					t.Errorf("database %q has products %v, product_changes %v; want %q with both", current, products, changes, pg.Name)
				}
				names[i] = pg.Name
			})
		}
	})
	if names[0] == "" || names[0] == names[1] {
		t.Errorf("parallel tests got databases %q and %q, want two different ones", names[0], names[1])
	}
}

// TestPostgresIsolatedAndDropped checks that a test's writes stay in its
// database (through the change-log trigger the migration installs), and that
// the database is gone once the test has ended.
func TestPostgresIsolatedAndDropped(t *testing.T) {
	t.Parallel()
	observer := Postgres(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	var droppedName string
	t.Run("writer", func(t *testing.T) {
		pg := Postgres(t)
		droppedName = pg.Name
		if _, err := pg.DB.ExecContext(ctx, `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
			VALUES ('Acme', 'Anvil', 12.50, 'EUR', 3)`); err != nil {
			t.Fatalf("insert: %v", err)
		}
		var changes int
		if err := pg.DB.QueryRowContext(ctx, `SELECT count(*) FROM product_changes`).Scan(&changes); err != nil || changes != 1 {
			t.Errorf("product_changes rows = %d, %v; want 1 written by the trigger", changes, err)
		}
		var otherProducts int
		if err := observer.DB.QueryRowContext(ctx, `SELECT count(*) FROM products`).Scan(&otherProducts); err != nil || otherProducts != 0 {
			t.Errorf("products in another test's database = %d, %v; want 0", otherProducts, err)
		}
	})

	var exists bool
	if err := observer.DB.QueryRowContext(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, droppedName).
		Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s still exists after its test ended", droppedName)
	}
}

// TestPostgresPrivateMode checks, when PRODUCTWATCH_TEST_PG=private, that the
// databases are on a private cluster and not on the machine's server.
func TestPostgresPrivateMode(t *testing.T) {
	t.Parallel()
	if os.Getenv(modeEnv) != "private" {
		t.Skipf("%s is not \"private\"", modeEnv)
	}
	pg := Postgres(t)
	u, err := url.Parse(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if u.Port() == "5432" {
		t.Errorf("DSN %s is on port 5432, want a private cluster", pg.DSN)
	}
	shared.mu.Lock()
	cluster := shared.cluster
	shared.mu.Unlock()
	if cluster == nil || u.Port() != fmt.Sprint(cluster.Port()) {
		t.Errorf("DSN %s is not on the private cluster %v", pg.DSN, cluster)
	}
}

func TestChooseServer(t *testing.T) {
	t.Parallel()
	up := func(context.Context, string) error { return nil }
	down := func(context.Context, string) error { return errors.New("connection refused") }
	tests := []struct {
		name      string
		env       map[string]string
		reachable func(context.Context, string) error
		wantKind  serverKind
		wantDSN   string
		wantErr   bool
	}{
		{name: "local server up", reachable: up, wantKind: serverLocal, wantDSN: pgserver.LocalDSN},
		{name: "local server down", reachable: down, wantKind: serverPrivate},
		{
			name:      "DATABASE_URL wins over the local server",
			env:       map[string]string{"DATABASE_URL": "postgres://ci@db/x"},
			reachable: up, wantKind: serverFromEnv, wantDSN: "postgres://ci@db/x",
		},
		{
			name:      "private forced over everything",
			env:       map[string]string{modeEnv: "private", "DATABASE_URL": "postgres://ci@db/x"},
			reachable: up, wantKind: serverPrivate,
		},
		{name: "unknown mode", env: map[string]string{modeEnv: "docker"}, reachable: up, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			kind, dsn, err := chooseServer(t.Context(), func(k string) string { return tt.env[k] }, tt.reachable)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("chooseServer = %v, %q, nil; want an error", kind, dsn)
				}
				return
			}
			if err != nil || kind != tt.wantKind || dsn != tt.wantDSN {
				t.Fatalf("chooseServer = %v, %q, %v; want %v, %q", kind, dsn, err, tt.wantKind, tt.wantDSN)
			}
		})
	}
}

// TestNATS does a JetStream round trip: create a stream, publish, get.
func TestNATS(t *testing.T) {
	t.Parallel()
	ns := NATS(t)
	if os.Getenv("NATS_URL") == "" && ns.Server == nil {
		t.Fatal("no embedded server without NATS_URL")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	_, js := ConnectJS(t, ns.URL)
	// A name of its own, in case NATS_URL makes tests share a server.
	streamName := strings.ToUpper(uniqueName())
	subject := strings.ToLower(streamName) + ".product"
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{subject}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, streamName); err != nil {
			t.Errorf("delete stream: %v", err)
		}
	})
	ack, err := js.Publish(ctx, subject, []byte(`{"productId":1}`))
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	msg, err := stream.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("get message %d: %v", ack.Sequence, err)
	}
	if string(msg.Data) != `{"productId":1}` || msg.Subject != subject {
		t.Errorf("got %s %q, want %s %q", msg.Subject, msg.Data, subject, `{"productId":1}`)
	}
}
