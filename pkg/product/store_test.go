package product

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// listen LISTENs on the change channel of pg's database with lib/pq's
// Listener, the way the bridge does, and returns its notifications.
func listen(t *testing.T, dsn string) <-chan *pq.Notification {
	t.Helper()
	l := pq.NewListener(dsn, 10*time.Millisecond, time.Second, nil)
	t.Cleanup(func() { l.Close() })
	if err := l.Listen(change.Channel); err != nil {
		t.Fatal(err)
	}
	return l.Notify
}

// notification is the payload of a NOTIFY on change.Channel: the event, or
// for one too large to notify a reference {"seq":…,"productId":…,"ref":true}.
type notification struct {
	Seq       int64 `json:"seq"`
	ProductID int64 `json:"productId"`
	Ref       bool  `json:"ref"`
}

// event is the change event's envelope, as the trigger writes it.
type event struct {
	Seq       int64           `json:"seq"`
	Action    change.Action   `json:"action"`
	ProductID int64           `json:"productId"`
	Version   int64           `json:"version"`
	ChangedAt time.Time       `json:"changedAt"`
	Product   json.RawMessage `json:"product"`
}

func nextNotification(t *testing.T, ch <-chan *pq.Notification) notification {
	t.Helper()
	for {
		select {
		case n := <-ch:
			if n == nil { // a reconnect; not expected here, but not a notification either
				continue
			}
			var got notification
			if err := json.Unmarshal([]byte(n.Extra), &got); err != nil {
				t.Fatalf("notification %q: %v", n.Extra, err)
			}
			return got
		case <-time.After(10 * time.Second):
			t.Fatal("no notification within 10s")
		}
	}
}

// logRow is a row of product_changes.
type logRow struct {
	Seq, ProductID, Version int64
	Action                  string
	Event                   string
}

func changeLog(t *testing.T, s *Store) []logRow {
	t.Helper()
	rows, err := s.db.Query(`SELECT seq, product_id, version, action, event FROM product_changes ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []logRow
	for rows.Next() {
		var r logRow
		if err := rows.Scan(&r.Seq, &r.ProductID, &r.Version, &r.Action, &r.Event); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// TestTrigger: INSERT, UPDATE and DELETE each write exactly one change row,
// with the event's seq, action and version, and send that event once.
func TestTrigger(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	s := NewStore(pg.DB)
	notes := listen(t, pg.DSN)
	ctx := context.Background()

	created, err := s.Create(ctx, Fields{"Apple", "MacBook", Price{"500", "EUR"}, 6})
	if err != nil {
		t.Fatal(err)
	}
	updated, err := s.Replace(ctx, created.ID, Fields{"Apple", "MacBook", Price{"450.00", "EUR"}, 5}, Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, created.ID, Precondition{Versions: []int64{2}}); err != nil {
		t.Fatal(err)
	}

	log := changeLog(t, s)
	if len(log) != 3 {
		t.Fatalf("change log has %d rows, want 3: %+v", len(log), log)
	}
	want := []struct {
		action         change.Action
		version        int64
		productVersion int64
	}{{change.Insert, 1, 1}, {change.Update, 2, 2}, {change.Delete, 3, 2}}
	for i, w := range want {
		row := log[i]
		var ev event
		if err := json.Unmarshal([]byte(row.Event), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Seq != row.Seq || string(ev.Action) != row.Action || ev.Action != w.action ||
			ev.Version != row.Version || ev.Version != w.version || ev.ProductID != created.ID || ev.ChangedAt.IsZero() {
			t.Errorf("row %d: %+v, event %+v, want %s version %d", i, row, ev, w.action, w.version)
		}
		if v, ok := change.EventVersion([]byte(row.Event)); !ok || v != row.Version {
			t.Errorf("row %d: EventVersion = %d %v, want %d: the trigger's field order changed", i, v, ok, row.Version)
		}
		var p struct {
			Version      int64  `json:"version"`
			PricePerUnit string `json:"pricePerUnit"`
		}
		if err := json.Unmarshal(ev.Product, &p); err != nil || p.Version != w.productVersion {
			t.Errorf("row %d product %s: version %d, want %d (%v)", i, ev.Product, p.Version, w.productVersion, err)
		}
		n := nextNotification(t, notes)
		if n.Seq != row.Seq || n.Ref {
			t.Errorf("notification %d = %+v, want the event of seq %d", i, n, row.Seq)
		}
	}
	// The REST body and the event's product are the same bytes.
	var ev event
	_ = json.Unmarshal([]byte(log[1].Event), &ev)
	if string(ev.Product) != string(updated.JSON) {
		t.Errorf("event product %s differs from the stored JSON %s", ev.Product, updated.JSON)
	}
	select {
	case n := <-notes:
		t.Errorf("unexpected extra notification %+v", n)
	default:
	}
}

// TestLargeEvent: an event over 7999 bytes does not fail the transaction; the
// notification is a reference and the log keeps the whole event.
func TestLargeEvent(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	s := NewStore(pg.DB)
	notes := listen(t, pg.DSN)
	big := strings.Repeat("€\"\\", MaxTextLength/3) // multi-byte and escaped: a large event
	r, err := s.Create(context.Background(), Fields{big, big, Price{"1", "EUR"}, 1})
	if err != nil {
		t.Fatal(err)
	}
	n := nextNotification(t, notes)
	log := changeLog(t, s)
	if len(log) != 1 || !n.Ref || n.Seq != log[0].Seq || n.ProductID != r.ID {
		t.Fatalf("notification %+v, log %d rows", n, len(log))
	}
	if len(log[0].Event) < 8000 {
		t.Fatalf("event only %d bytes", len(log[0].Event))
	}
	var ev event
	if err := json.Unmarshal([]byte(log[0].Event), &ev); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Manufacturer string `json:"manufacturer"`
	}
	if err := json.Unmarshal(ev.Product, &p); err != nil || p.Manufacturer != big {
		t.Errorf("event does not carry the whole manufacturer (%v)", err)
	}
}

func TestStoreErrors(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	s := NewStore(pg.DB)
	ctx := context.Background()
	r, err := s.Create(ctx, Fields{"A", "B", Price{"1", "EUR"}, 1})
	if err != nil {
		t.Fatal(err)
	}
	f := Fields{"A", "B", Price{"2", "EUR"}, 1}
	stale := Precondition{Versions: []int64{5}}
	var verr *VersionError
	if _, err := s.Replace(ctx, r.ID, f, stale); !errors.As(err, &verr) || verr.Current != 1 || !errors.Is(err, ErrPreconditionFailed) {
		t.Errorf("Replace stale = %v", err)
	}
	if _, err := s.Patch(ctx, r.ID, Patch{}, stale); !errors.Is(err, ErrPreconditionFailed) {
		t.Errorf("Patch stale = %v", err)
	}
	if err := s.Delete(ctx, r.ID, stale); !errors.Is(err, ErrPreconditionFailed) {
		t.Errorf("Delete stale = %v", err)
	}
	for name, err := range map[string]error{
		"get":     func() error { _, err := s.Get(ctx, 999); return err }(),
		"replace": func() error { _, err := s.Replace(ctx, 999, f, Precondition{}); return err }(),
		"patch":   func() error { _, err := s.Patch(ctx, 999, Patch{}, Precondition{}); return err }(),
		"delete":  s.Delete(ctx, 999, Precondition{}),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s of a missing product = %v", name, err)
		}
	}
	if _, err := s.List(ctx, 0, 0); err == nil {
		t.Error("List with limit 0 accepted")
	}
	if n := len(changeLog(t, s)); n != 1 {
		t.Errorf("%d changes, want 1", n)
	}

	// A closed store prepares nothing more (a request that outlived the
	// shutdown would leak the statement): a single-row query runs
	// unprepared, the others fail.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, r.ID); err != nil {
		t.Errorf("Get after Close = %v", err)
	}
	if _, err := s.List(ctx, 0, 10); !errors.Is(err, errStoreClosed) {
		t.Errorf("List after Close = %v, want errStoreClosed", err)
	}
	if n := len(s.stmts); n != 0 {
		t.Errorf("%d statements prepared after Close", n)
	}
}

// TestStoreKeepsEachDeadline: with the table locked, a request with a short
// deadline fails at its own deadline, not after another request's long
// prepare (the first statement of a fresh Store waits for the lock).
func TestStoreKeepsEachDeadline(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	s := NewStore(pg.DB)
	t.Cleanup(func() { s.Close() })
	tx, err := pg.DB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`LOCK TABLE products IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	longDone := make(chan struct{})
	go func() {
		defer close(longDone)
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		defer cancel()
		_, _ = s.Get(ctx, 1)
	}()
	// Let the long request start preparing: wait until its backend waits
	// for the lock.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var waiting int
		if err := pg.DB.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the long request never waited for the lock")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = s.Get(ctx, 1)
	waited := time.Since(start)
	if err == nil || waited > 3*time.Second {
		t.Errorf("short request: %v after %v, want a deadline error after about 300ms", err, waited)
	}
	_ = tx.Rollback()
	<-longDone
}
