package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// TestPublishesInProcess runs the bridge in this process and checks that
// inserts, updates and deletes made before and after it starts all reach
// the stream, each once.
func TestPublishesInProcess(t *testing.T) {
	pg := testenv.Postgres(t)
	nt := testenv.NATS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL, cfg.NATSURL, cfg.MetricsAddr = pg.DSN, nt.URL, metricsAddr
	cfg.Stream.DuplicateWindow = time.Minute

	exec := func(q string) {
		t.Helper()
		if _, err := pg.DB.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
	      SELECT 'M', 'P' || i, 1, 'EUR', i FROM generate_series(1, 50) i`)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testenv.Logger(t)) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	exec(`UPDATE products SET units_available = units_available + 1 WHERE product_id <= 10`)
	exec(`DELETE FROM products WHERE product_id = 50`)

	nc, err := nats.Connect(nt.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		stream, err := js.Stream(context.Background(), broker.StreamName)
		if err == nil {
			info, err := stream.Info(context.Background())
			if err == nil && info.State.Msgs == 61 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream did not reach 61 messages: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
}
