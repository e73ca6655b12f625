package main

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/productwatch/productwatch/deploy/loadgen/tally"
)

func TestParseEvent(t *testing.T) {
	event := []byte(`{"seq":123,"action":"UPDATE","productId":42,"version":7,"changedAt":"2026-11-25T01:02:03.456789Z",` +
		`"product":{"productId":42,"manufacturer":"A","productName":"B","pricePerUnit":"500EUR","unitsAvailable":6,"version":7,"updatedAt":"2026-11-25T01:02:03.456712Z"}}`)
	f, ok := parseEvent(event)
	want := time.Date(2026, 11, 25, 1, 2, 3, 456789000, time.UTC).UnixNano()
	if !ok || f.ProductID != 42 || f.Version != 7 || f.ChangedAt != want {
		t.Errorf("parseEvent = %+v, %v; want product 42 version 7 changedAt %d", f, ok, want)
	}
	snapshot := []byte(`{"action":"SNAPSHOT","productId":3,"version":2,"product":{"productId":3,"version":2}}`)
	if f, ok := parseEvent(snapshot); !ok || f.ProductID != 3 || f.Version != 2 || f.ChangedAt != 0 {
		t.Errorf("parseEvent(snapshot) = %+v, %v", f, ok)
	}
	for _, bad := range []string{`{"type":"ack"}`, `{"productId":x,"version":1}`, `{"productId":1}`, ``,
		`{"productId":9999999999999999999,"version":1}`} {
		if f, ok := parseEvent([]byte(bad)); ok {
			t.Errorf("parseEvent(%q) = %+v, ok", bad, f)
		}
	}
}

func TestSplitEvents(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		want      []string
		ok        bool
	}{
		{"two", `[{"productId":1,"version":2},{"productId":1,"version":3}]`, []string{`{"productId":1,"version":2}`, `{"productId":1,"version":3}`}, true},
		{"nested and strings", `[{"p":{"n":"a}],[{\"x"},"v":1}, {"p":"\\"}]`, []string{`{"p":{"n":"a}],[{\"x"},"v":1}`, `{"p":"\\"}`}, true},
		{"empty", `[]`, nil, false}, // the gateway never sends one
		{"object", `{"productId":1}`, nil, false},
		{"unclosed", `[{"a":1}`, []string{`{"a":1}`}, false},
		{"not objects", `[1,2]`, nil, false},
		{"trailing bytes", `[{"a":1}]x`, []string{`{"a":1}`}, false},
		{"nested array", `[[{"a":1}]]`, nil, false},
		{"mismatched", `[{]`, nil, false},
		{"string outside", `["a"]`, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			ok := splitEvents([]byte(tc.msg), func(ev []byte) { got = append(got, string(ev)) })
			if ok != tc.ok || strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("splitEvents(%s) = %q, %v; want %q, %v", tc.msg, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestClientHandleBatch(t *testing.T) {
	c := newClient(nil, []int64{1}, 0)
	c.handle([]byte(`[{"seq":1,"action":"UPDATE","productId":1,"version":5,"product":{}},{"seq":2,"action":"UPDATE","productId":1,"version":6,"product":{}}]`), 4)
	c.handle([]byte(`{"seq":3,"action":"UPDATE","productId":1,"version":7,"product":{}}`), 5)
	c.handle([]byte(`[{"seq":4,"action":"UPDATE","productId":1,"version":8,"product":{}`), 6)
	frames, errs, _ := c.result()
	want := []tally.Frame{{ProductID: 1, Version: 5, Received: 4}, {ProductID: 1, Version: 6, Received: 4}, {ProductID: 1, Version: 7, Received: 5}}
	if len(frames) != len(want) || frames[0] != want[0] || frames[1] != want[1] || frames[2] != want[2] {
		t.Errorf("frames = %+v, want %+v", frames, want)
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "unreadable") {
		t.Errorf("errors = %q, want the broken batch", errs)
	}
	if m, e := c.messages.Load(), c.events.Load(); m != 3 || e != 3 {
		t.Errorf("%d messages, %d events; want 3 and 3", m, e)
	}
}

func TestClientHandle(t *testing.T) {
	c := newClient(nil, []int64{1}, 0)
	c.handle([]byte(`{"type":"ack","command":"subscribe","productIDs":[1]}`), 1)
	select {
	case <-c.acked:
	default:
		t.Fatal("the ack was not noticed")
	}
	c.handle([]byte(`{"type":"ack","command":"subscribe","productIDs":[1]}`), 2) // a second ack must not panic
	c.handle([]byte(`{"type":"error","code":"invalid_json","message":"x"}`), 3)
	c.handle([]byte(`{"seq":1,"action":"UPDATE","productId":1,"version":5,"product":{}}`), 4)
	c.handle([]byte(`garbage`), 5)
	frames, errs, _ := c.result()
	if len(frames) != 1 || frames[0] != (tally.Frame{ProductID: 1, Version: 5, Received: 4}) {
		t.Errorf("frames = %+v", frames)
	}
	if len(errs) != 2 || !strings.Contains(errs[0], "invalid_json") || !strings.Contains(errs[1], "unreadable") {
		t.Errorf("errors = %q", errs)
	}
	if !c.holds(map[int64]int64{1: 5}) || c.holds(map[int64]int64{1: 6}) {
		t.Error("holds disagrees with the newest version received (5)")
	}
}

func TestSubscribeCommand(t *testing.T) {
	if got, want := string(subscribeCommand([]int64{1, 20, 300})), `{"command":"subscribe","productIDs":[1,20,300]}`; got != want {
		t.Errorf("subscribeCommand = %s, want %s", got, want)
	}
}

func TestPickDistinct(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ids := pickDistinct(rng, 10000, 10)
	if len(ids) != 10 {
		t.Fatalf("%d ids, want 10", len(ids))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] || ids[i] < 1 || ids[i] > 10000 {
			t.Fatalf("ids not distinct, sorted and in 1..10000: %v", ids)
		}
	}
	if got := pickDistinct(rng, 3, 10); len(got) != 3 {
		t.Errorf("pickDistinct(3 of 10) = %v, want all 3", got)
	}
}

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
BenchmarkBridgeWritePath/log-only-2         	       1	 150000 ns/op	      6558 updates/s
    bench_test.go:240: 20000 updates in 3s
BenchmarkBridgeWritePath/productwatch-2     	       1	 230000 ns/op	         4.5 ack_p99_le_ms	      4281 updates/s	        65.30 %log-only	        25.5 p50_ms
BenchmarkBridgeWritePath/productwatch-rate=1000
BenchmarkBridgeWritePath/productwatch-rate=1000-2         	       1	 1000000 ns/op	      1000 updates/s	         3.38 p50_ms	        10.0 p99_ms
PASS
`
	got := parseBenchOutput(out)
	if len(got) != 3 {
		t.Fatalf("parsed %d variants, want 3: %v", len(got), got)
	}
	if got["log-only"]["updates/s"] != 6558 || got["productwatch"]["%log-only"] != 65.3 ||
		got["productwatch-rate=1000"]["p99_ms"] != 10 {
		t.Errorf("parseBenchOutput = %v", got)
	}
}

func TestMetricsParsing(t *testing.T) {
	page := "productwatch_ws_connections 3\nproductwatch_ws_clients_dropped_total{reason=\"slow\"} 2\n" +
		"productwatch_ws_delivery_latency_seconds_bucket{le=\"0.1\"} 9\nother 1\n"
	if v := metricValue(page, `productwatch_ws_clients_dropped_total{reason="slow"}`); v != 2 {
		t.Errorf("metricValue = %v, want 2", v)
	}
	c := counters(page, "productwatch_ws_")
	if len(c) != 2 || c["productwatch_ws_connections"] != 3 {
		t.Errorf("counters = %v, want the two productwatch_ws_ series without buckets", c)
	}
	d := delta(map[string]float64{"a_total": 1, "b_connections": 5}, map[string]float64{"a_total": 4, "b_connections": 5, "c": 0})
	if len(d) != 2 || d["a_total"] != 3 {
		t.Errorf("delta = %v", d)
	}
}

func TestWriteMarkdownAndPlot(t *testing.T) {
	lat := tally.NewLatencies()
	for i := range 1000 {
		tally.RecordNanos(lat.Commit, int64(i+1)*int64(time.Millisecond/100))
	}
	res := &result{Scenario: scenario{Name: "S1", Clients: 2}, Writes: &writeResult{Committed: 10},
		Readers: &tally.Client{Expected: 20, Delivered: 20}, ReadersComplete: 2, latencies: lat,
		CommitLatency: tally.Summarize(lat.Commit), Usage: &usageReport{WindowSeconds: 1}}
	rep := &report{Commit: "abc", Results: []*result{res, {Scenario: scenario{Name: "S6"}, Error: "boom"}}}
	var buf bytes.Buffer
	writeMarkdown(&buf, rep)
	for _, want := range []string{"| S1 | 10 | 20 / 20 | 2 / 2 | 0 | 0 | 0 |", "- S6: **boom**"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, buf.String())
		}
	}
	path := filepath.Join(t.TempDir(), "latency.png")
	if err := writePlot(path, rep.Results); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(data, []byte("\x89PNG")) {
		t.Fatalf("no PNG written: %v", err)
	}
}

// TestFanoutSmall runs a small scenario end to end against the real
// programs, PostgreSQL and NATS: 3 clients on 2 products at 40 changes/s
// for 2 s. Whatever the gateway conflates, nothing may be duplicated,
// stale or wasted, and every client must end up holding the last version.
func TestFanoutSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the programs")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, prog := range []string{"bridge", "gateway"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, prog), "./"+prog)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./%s: %v\n%s", prog, err, out)
		}
	}
	// A state directory traversable by the postgres user, should a private
	// cluster be needed (t.TempDir is 0700).
	state, err := os.MkdirTemp("", "loadgen-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(state, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dbs, err := openDatabase(ctx, state, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dbs.close(context.Background())
		os.RemoveAll(state)
	})
	sc := scenario{Name: "test", Clients: 3, Watch: 2, Products: 2, Rate: 40, duration: 2 * time.Second}
	opts := runOptions{binDir: bin, stateDir: state, outDir: t.TempDir(), via: "sql", writers: 2, drain: 10 * time.Second, commit: "test"}
	res, err := runFanout(ctx, dbs, sc, opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	a := res.Readers
	t.Logf("committed %d, readers %+v, commit->client %+v", res.Writes.Committed, *a, res.CommitLatency)
	if res.Writes.Committed != 80 || res.Writes.Failed != 0 {
		t.Errorf("writes = %+v, want 80 committed", res.Writes)
	}
	if a.Expected != 3*80 || a.Delivered == 0 || a.Duplicates != 0 || a.OutOfOrder != 0 || a.Wasted != 0 || a.NeverFresh != 0 {
		t.Errorf("readers = %+v: want 240 expected, some delivered, none duplicated, stale, wasted or never fresh", *a)
	}
	if res.CommitLatency.Count != a.Delivered || res.Freshness.Count != a.Expected {
		t.Errorf("latency samples %d (want %d), freshness samples %d (want %d)",
			res.CommitLatency.Count, a.Delivered, res.Freshness.Count, a.Expected)
	}
	if res.Usage == nil || res.Usage.Gateway.CPUSeconds <= 0 || res.Usage.Bridge.PeakRSSMiB <= 0 {
		t.Errorf("usage = %+v: want the gateway's CPU and the bridge's memory", res.Usage)
	}
}

// FuzzParseEvent: whatever the gateway sends, reading an event's fields
// never panics, and what it reads back is what the bytes say.
func FuzzParseEvent(f *testing.F) {
	for _, seed := range []string{
		`{"seq":1,"action":"UPDATE","productId":42,"version":7,"changedAt":"2026-11-25T01:02:03.456789Z","product":{"productId":42,"version":7}}`,
		`{"action":"SNAPSHOT","productId":3,"version":2,"product":{}}`,
		`{"type":"ack","command":"subscribe","productIDs":[1]}`,
		`{"productId":99999999999999999999,"version":1}`,
		`"productId":`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		fr, ok := parseEvent(msg)
		if !ok {
			return
		}
		if !bytes.Contains(msg, []byte(`"productId":`)) || !bytes.Contains(msg, []byte(`,"version":`)) {
			t.Fatalf("parseEvent(%q) = %+v without productId or version", msg, fr)
		}
		if fr.Version < 0 || fr.ProductID < 0 {
			t.Fatalf("parseEvent(%q) = %+v: negative", msg, fr)
		}
	})
}

// FuzzSplitEvents: whatever the gateway sends, splitting a batch never
// panics, every element is a balanced {…} taken from the message in order,
// and a well-formed array of the elements found gives them back.
func FuzzSplitEvents(f *testing.F) {
	for _, seed := range []string{
		`[{"productId":1,"version":2},{"productId":1,"version":3}]`,
		`[{"p":{"n":"a}],[{\"x"},"v":1}, {"p":"\\"}]`,
		`[{"a":1}`, `[[{"a":1}]]`, `[1]`, `[]`, `[`, `[{"a":"\`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var got [][]byte
		ok := splitEvents(msg, func(ev []byte) { got = append(got, ev) })
		at := 0
		for _, ev := range got {
			if len(ev) < 2 || ev[0] != '{' || ev[len(ev)-1] != '}' {
				t.Fatalf("splitEvents(%q) gave %q, not an object", msg, ev)
			}
			i := bytes.Index(msg[at:], ev)
			if i < 0 {
				t.Fatalf("splitEvents(%q) gave %q, not in order", msg, ev)
			}
			at += i + len(ev)
		}
		if ok {
			rebuilt := append([]byte{'['}, bytes.Join(got, []byte{','})...)
			rebuilt = append(rebuilt, ']')
			var again [][]byte
			if !splitEvents(rebuilt, func(ev []byte) { again = append(again, ev) }) || len(again) != len(got) {
				t.Fatalf("splitEvents(%q) accepted %d elements, but not their clean array %q", msg, len(got), rebuilt)
			}
		}
	})
}
