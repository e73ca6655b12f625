package main

import "testing"

// TestParseSnapshot: the snapshot row's text, with and without this
// database's writers, including ids that PostgreSQL's 32-bit counter
// wrapped around.
func TestParseSnapshot(t *testing.T) {
	const wrapped = 1<<32 + 10 // an xmax past the first wraparound; its low bits are 10
	tests := []struct {
		text      string
		xmin      uint64
		localXmin uint64
	}{
		{text: "123", xmin: 123},
		{text: "123 200 ", xmin: 123, localXmin: 200},
		{text: "123 200 199,150,180", xmin: 123, localXmin: 150},
		{text: "123 200 250", xmin: 123, localXmin: 200}, // got its id after the snapshot
		{text: "5 4294967306 4294967290", xmin: 5, localXmin: 1<<32 - 6},
		{text: "5 4294967306 5", xmin: 5, localXmin: 1<<32 + 5},
		{text: "5 4294967306 12", xmin: 5, localXmin: wrapped}, // ahead of xmax
		{text: "3 4 4294967295", xmin: 3, localXmin: 0},        // cannot be: the oldest there is
	}
	for _, tc := range tests {
		snap, err := parseSnapshot([]byte(tc.text))
		if err != nil {
			t.Errorf("parseSnapshot(%q): %v", tc.text, err)
			continue
		}
		if snap.xmin != tc.xmin || snap.localXmin != tc.localXmin {
			t.Errorf("parseSnapshot(%q) = xmin %d, localXmin %d; want %d, %d", tc.text, snap.xmin, snap.localXmin, tc.xmin, tc.localXmin)
		}
	}
	for _, bad := range []string{"", "x", "1 2", "1 x 3", "1 2 x", "1 2 3,", "1 2 4294967296", "1 2 3 4"} {
		if snap, err := parseSnapshot([]byte(bad)); err == nil {
			t.Errorf("parseSnapshot(%q) = %+v, want an error", bad, snap)
		}
	}
}
