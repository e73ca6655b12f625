package procstat

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	cases := []struct {
		name string
		stat string
		want Stat
		ok   bool
	}{
		{"plain", "1234 (gateway) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0",
			Stat{State: 'S', StartTime: 100, CPU: 3 * time.Second}, true},
		{"a command name with spaces and parentheses", "77 (a (b) c) Z 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0",
			Stat{State: 'Z', StartTime: 5, CPU: 100 * time.Millisecond}, true},
		{"truncated", "77 (x) R 1 2", Stat{}, false},
		{"no start time", "77 (x) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0", Stat{}, false},
		{"no command", "77 x R", Stat{}, false},
		{"cpu not a number", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 3 0 0 20 0 1 0 5 0 0", Stat{}, false},
		{"start not a number", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 3 0 0 20 0 1 0 -5 0 0", Stat{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.stat))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if got != tc.want {
				t.Errorf("stat = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := "Name:\tgateway\nVmPeak:\t 900 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\nThreads:\t9\n"
	rss, peak, err := parseStatusMemory([]byte(status))
	if err != nil || rss != 70000 || peak != 81234 {
		t.Errorf("= %d, %d, %v; want 70000, 81234, nil", rss, peak, err)
	}
	if _, _, err := parseStatusMemory([]byte("VmRSS:\tlots kB\n")); err == nil {
		t.Error("a malformed VmRSS gave no error")
	}
}

func TestParseMachineCPU(t *testing.T) {
	data := "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 50 5 25 500 10 3 2 0 0 0\ncpu1 50 5 25 500 10 2 3 0 0 0\nintr 1 2\n"
	busy, cpus, err := parseMachineCPU([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if want := 1700 * time.Millisecond; busy != want || cpus != 2 { // 100+10+50+5+5 ticks
		t.Errorf("= %v, %d; want %v, 2", busy, cpus, want)
	}
	if _, _, err := parseMachineCPU([]byte("intr 1\n")); err == nil {
		t.Error("no cpu line gave no error")
	}
}

// TestReadSelf reads this very process: it has used some CPU and memory.
func TestReadSelf(t *testing.T) {
	// Burn CPU until a tick of it shows (10 ms), for 10 s at most.
	var (
		s   Sample
		err error
	)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if s, err = Read(os.Getpid()); err != nil {
			t.Fatal(err)
		}
		if s.CPU > 0 {
			break
		}
	}
	if s.CPU <= 0 || s.RSS <= 0 || s.PeakRSS < s.RSS {
		t.Errorf("Read(self) = %+v: want CPU > 0 and 0 < RSS <= PeakRSS", s)
	}
	if _, err := Read(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Read(missing) err = %v, want ErrNoProcess", err)
	}
	if _, _, err := MachineCPU(); err != nil {
		t.Errorf("MachineCPU: %v", err)
	}
}
