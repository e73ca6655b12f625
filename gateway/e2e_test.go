package main

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// startBridge runs the real bridge against pg and n until the test ends.
func startBridge(t *testing.T, pg *testenv.PG, n *testenv.NATSServer) *testenv.Process {
	t.Helper()
	path := testenv.Program(t, "bridge")
	metrics := testenv.FreeAddr(t)
	p := testenv.StartProcess(t, "bridge", path, "DATABASE_URL="+pg.DSN, "NATS_URL="+n.URL, "METRICS_ADDR="+metrics,
		"NATS_USER="+n.Bridge.User, "NATS_PASSWORD="+n.Bridge.Password,
		"LOG_FORMAT=text", "LOG_LEVEL=warn", "SAFETY_POLL_INTERVAL=200ms")
	waitReady(t, "the bridge", "http://"+metrics)
	return p
}

// waitReady waits until base/readyz answers 200.
func waitReady(t testing.TB, what, base string) {
	t.Helper()
	testenv.WaitUntil(t, 10*time.Second, what+" to be ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// TestResumeOnOtherGateway is the full path twice over: REST on gateway A,
// PostgreSQL, the real bridge, NATS, gateway B. A client watches on A,
// leaves, changes and a delete happen, it comes back to B with its versions
// and gets exactly what it missed, then live changes made through A.
func TestResumeOnOtherGateway(t *testing.T) {
	t.Parallel()
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	startBridge(t, pg, n)
	a := newWSGateway(t, pg, n, nil)
	b := newWSGateway(t, pg, n, nil)
	p1, p2, p3 := a.create(t, macbook), a.create(t, macbook), a.create(t, macbook)
	ids := fmt.Sprintf("[%d,%d,%d]", p1.ProductID, p2.ProductID, p3.ProductID)

	onA := a.dial(t, nil)
	onA.send(`{"command":"subscribe","productIDs":` + ids + `,"snapshot":true}`)
	onA.expect("ack")
	have := map[int64]int64{}
	for range 3 {
		// The snapshot, or the INSERT itself when the bridge delivers it
		// first (then the equal-version snapshot is dropped).
		m := onA.next()
		if m.Action != "SNAPSHOT" && m.Action != "INSERT" || m.Version != 1 {
			t.Fatalf("initial state: %s", m.raw)
		}
		have[m.ProductID] = m.Version
	}
	a.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", p1.ProductID), `{"unitsAvailable":3}`)
	if m := onA.expect("UPDATE"); m.ProductID != p1.ProductID || m.Version != 2 {
		t.Fatalf("live on A: %s", m.raw)
	}
	have[p1.ProductID] = 2
	onA.ws.CloseNow()

	// Away: p1 moves on twice, p2 is deleted, p3 stays.
	a.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", p1.ProductID), `{"unitsAvailable":2}`)
	a.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", p1.ProductID), `{"unitsAvailable":1}`)
	a.write(t, http.MethodDelete, fmt.Sprintf("/products/%d", p2.ProductID), "")

	onB := b.dial(t, nil)
	onB.send(fmt.Sprintf(`{"command":"subscribe","productIDs":%s,"versions":{"%d":%d,"%d":%d,"%d":%d}}`, ids,
		p1.ProductID, have[p1.ProductID], p2.ProductID, have[p2.ProductID], p3.ProductID, have[p3.ProductID]))
	onB.expect("ack")
	// What was missed: p1 up to v4 (as a snapshot, or as the live updates
	// the bridge may still be delivering), p2's DELETE; nothing of p3; and
	// per product only increasing versions.
	last := map[int64]int64{}
	for last[p1.ProductID] < 4 || last[p2.ProductID] < 2 {
		m := onB.next()
		switch {
		case m.ProductID == p3.ProductID:
			t.Fatalf("p3 had not changed, yet: %s", m.raw)
		case m.Version <= last[m.ProductID]:
			t.Fatalf("version went back: %s after v%d", m.raw, last[m.ProductID])
		case m.ProductID == p2.ProductID && m.Action != "DELETE":
			t.Fatalf("p2 on resume: %s", m.raw)
		}
		last[m.ProductID] = m.Version
	}
	// Then live changes, made through the other gateway, and nothing stale:
	// the next message is p3's new version.
	a.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", p3.ProductID), `{"unitsAvailable":9}`)
	if m := onB.next(); m.Action != "UPDATE" || m.ProductID != p3.ProductID || m.Version != 2 {
		t.Fatalf("live on B: %s", m.raw)
	}
}

// TestNATSRestartUnderLoad: NATS restarts while products change; once it
// is back, every client holds every product's final version (what was
// published while the gateway was cut off comes from the re-sync).
func TestNATSRestartUnderLoad(t *testing.T) {
	t.Parallel()
	pg, n := testenv.Postgres(t), testenv.NATS(t)
	if n.Server == nil {
		t.Skip("NATS_URL is an external server: it cannot be restarted from here")
	}
	startBridge(t, pg, n)
	g := newWSGateway(t, pg, n, nil)
	const products = 20
	var ids []int64
	for range products {
		ids = append(ids, g.create(t, macbook).ProductID)
	}
	var mu sync.Mutex // guards latest
	clients := []*wsClient{g.dial(t, nil), g.dial(t, nil)}
	latest := make([]map[int64]int64, len(clients))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i, c := range clients {
		c.send(`{"command":"subscribe","productIDs":` + commaList(ids) + `,"snapshot":true}`)
		c.expect("ack")
		latest[i] = map[int64]int64{}
		wg.Go(func() {
			for {
				m, err := c.read()
				if err != nil {
					select {
					case <-stop:
					default:
						t.Errorf("client %d: %v", i, err)
					}
					return
				}
				mu.Lock()
				if m.ProductID != 0 && m.Version > latest[i][m.ProductID] {
					latest[i][m.ProductID] = m.Version
				}
				mu.Unlock()
			}
		})
	}
	writes := func(rounds int) {
		for r := range rounds {
			for _, id := range ids {
				g.write(t, http.MethodPatch, fmt.Sprintf("/products/%d", id), fmt.Sprintf(`{"unitsAvailable":%d}`, r))
			}
		}
	}
	writes(3)
	n.RestartWith(t, func() {
		// While NATS is down the gateway says it is not ready.
		testenv.WaitUntil(t, 10*time.Second, "the gateway to report NATS down", func() bool {
			r := g.opsGet(t, "/readyz")
			return r.Status == http.StatusServiceUnavailable && strings.Contains(string(r.Body), `"nats":"NATS`) &&
				g.do(t, request{Method: http.MethodGet, Path: "/readyz"}).Status == http.StatusServiceUnavailable
		})
		writes(3) // changes made while NATS is down
	})
	testenv.WaitUntil(t, 10*time.Second, "the gateway to be ready again", func() bool {
		return g.do(t, request{Method: http.MethodGet, Path: "/readyz"}).Status == http.StatusOK
	})
	writes(2)

	want := map[int64]int64{}
	rows, err := pg.DB.Query(`SELECT product_id, version FROM products`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		want[id] = v
	}
	rows.Close()
	missing := func() string {
		mu.Lock()
		defer mu.Unlock()
		for i := range clients {
			for id, v := range want {
				if latest[i][id] != v {
					return fmt.Sprintf("client %d: product %d at version %d, want %d", i, id, latest[i][id], v)
				}
			}
		}
		return ""
	}
	deadline := time.Now().Add(20 * time.Second)
	for missing() != "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	if m := missing(); m != "" {
		t.Error(m)
	}
	close(stop)
	for _, c := range clients {
		c.ws.CloseNow()
	}
	wg.Wait()
}

func commaList(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return "[" + strings.Join(parts, ",") + "]"
}
