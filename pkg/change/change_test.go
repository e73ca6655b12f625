package change

import (
	"math"
	"testing"
	"time"
)

func TestSubject(t *testing.T) {
	tests := []struct {
		id   int64
		want string
	}{{1, "product.1"}, {42, "product.42"}, {math.MaxInt64, "product.9223372036854775807"}}
	for _, tc := range tests {
		if got := Subject(tc.id); got != tc.want {
			t.Errorf("Subject(%d) = %q, want %q", tc.id, got, tc.want)
		}
	}
}

func TestProductID(t *testing.T) {
	tests := []struct {
		subject string
		want    int64
		ok      bool
	}{
		{"product.1", 1, true},
		{"product.9223372036854775807", math.MaxInt64, true},
		{"product.9223372036854775808", 0, false},
		{"product.*", 0, false},
		{"product.>", 0, false},
		{"product.", 0, false},
		{"product.0", 0, false},
		{"product.01", 0, false},
		{"product.+1", 0, false},
		{"product.-1", 0, false},
		{"product.1.2", 0, false},
		{"products.1", 0, false},
		{"other.1", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		if got, ok := ProductID(tc.subject); got != tc.want || ok != tc.ok {
			t.Errorf("ProductID(%q) = %d %v, want %d %v", tc.subject, got, ok, tc.want, tc.ok)
		}
		if tc.ok && Subject(tc.want) != tc.subject {
			t.Errorf("Subject(%d) = %q, not %q", tc.want, Subject(tc.want), tc.subject)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { ProductID("product.12345") }); allocs != 0 {
		t.Errorf("ProductID allocates %v times", allocs)
	}
}

func TestEventVersion(t *testing.T) {
	tests := []struct {
		event string
		want  int64
		ok    bool
	}{
		{`{"seq":1,"action":"UPDATE","productId":1,"version":7,"changedAt":"x","product":{"version":7}}`, 7, true},
		{`{"seq":1,"action":"DELETE","productId":1,"version":8,"changedAt":"x","product":{"version":7}}`, 8, true},
		{`{"action":"SNAPSHOT","productId":1,"version":9223372036854775807,"product":{}}`, 9223372036854775807, true},
		{`{"seq":1,"productId":1,"version":"7"}`, 0, false},
		{`{"seq":1}`, 0, false},
		{`{"a":1,"version":12}`, 12, true},
	}
	for _, tc := range tests {
		got, ok := EventVersion([]byte(tc.event))
		if got != tc.want || ok != tc.ok {
			t.Errorf("EventVersion(%s) = %d %v, want %d %v", tc.event, got, ok, tc.want, tc.ok)
		}
	}
	ev := []byte(tests[0].event)
	if allocs := testing.AllocsPerRun(100, func() { EventVersion(ev) }); allocs != 0 {
		t.Errorf("EventVersion allocates %v times", allocs)
	}
}

func TestChangedAt(t *testing.T) {
	ev := []byte(`{"seq":1,"action":"UPDATE","productId":1,"version":7,"changedAt":"2026-11-25T01:02:03.456789Z","product":{"updatedAt":"2000-01-01T00:00:00.000000Z"}}`)
	at, ok := ChangedAt(ev)
	want, _ := time.Parse(time.RFC3339Nano, "2026-11-25T01:02:03.456789Z")
	if !ok || !at.Equal(want) {
		t.Errorf("ChangedAt = %v %v, want %v", at, ok, want)
	}
	for _, bad := range []string{`{"action":"SNAPSHOT"}`, `{"changedAt":"2026-11-25"}`, `{"changedAt":"2026-11-25T01:02:03.45678xZ"}`} {
		if _, ok := ChangedAt([]byte(bad)); ok {
			t.Errorf("ChangedAt(%s) accepted", bad)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { ChangedAt(ev) }); allocs != 0 {
		t.Errorf("ChangedAt allocates %v times", allocs)
	}
}
