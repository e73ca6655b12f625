// Package procstat reads Linux processes from /proc: state, start time and
// CPU time (user + system) from /proc/<pid>/stat, resident memory, current
// and peak, from /proc/<pid>/status, and the machine's busy time. The load
// generator and the benchmarks sample the processes of the system under test
// before and after a run; make cluster checks that a recorded PID is still
// the process it started. The one parser of those files in the repository.
package procstat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (the kernel exports a
// fixed value to user space whatever its internal HZ).
const clockTicks = 100

// Sample is one reading of a process.
type Sample struct {
	PID int
	// CPU is user + system time since the process started.
	CPU time.Duration
	// RSS and PeakRSS (VmRSS, VmHWM) in KiB.
	RSS, PeakRSS int64
}

// ErrNoProcess is returned (wrapped) when the process does not exist (any
// more).
var ErrNoProcess = errors.New("no such process")

// Stat is what /proc/<pid>/stat says of a process.
type Stat struct {
	// State is the state letter: R running, S sleeping, Z zombie, X dead…
	State byte
	// StartTime is when the process started, in clock ticks since boot:
	// with the PID, it names one process (a PID is reused, this pair not).
	StartTime uint64
	// CPU is user + system time since the process started.
	CPU time.Duration
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Stat{}, fmt.Errorf("process %d: %w", pid, ErrNoProcess)
		}
		return Stat{}, err
	}
	st, err := parseStat(data)
	if err != nil {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// Read samples process pid.
func Read(pid int) (Sample, error) {
	s := Sample{PID: pid}
	st, err := ReadStat(pid)
	if err != nil {
		return s, err
	}
	s.CPU = st.CPU
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return s, fmt.Errorf("process %d: %w", pid, ErrNoProcess)
		}
		return s, err
	}
	s.RSS, s.PeakRSS, err = parseStatusMemory(status)
	if err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return s, nil
}

// parseStat parses the contents of /proc/<pid>/stat. The second field, the
// command name in parentheses, may hold spaces and parentheses itself, so
// fields are counted from the last ')'.
func parseStat(stat []byte) (Stat, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return Stat{}, errors.New("no command name")
	}
	// After ") ": field 3 (state) is index 0, so utime (14) is 11, stime
	// 12, starttime (22) 19.
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 20 {
		return Stat{}, fmt.Errorf("%d fields after the command name, want at least 20", len(fields))
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return Stat{}, fmt.Errorf("cpu ticks %q: %w", f, err)
		}
		ticks += n
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("start time %q: %w", fields[19], err)
	}
	return Stat{State: fields[0][0], StartTime: start, CPU: time.Duration(ticks) * time.Second / clockTicks}, nil
}

// parseStatusMemory returns VmRSS and VmHWM (KiB) from /proc/<pid>/status.
// A kernel thread or a zombie has neither: both are 0 then.
func parseStatusMemory(status []byte) (rss, peak int64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &rss
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &peak
		default:
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return 0, 0, fmt.Errorf("malformed %q", line)
		}
		if *dst, err = strconv.ParseInt(fields[1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("%q: %w", line, err)
		}
	}
	return rss, peak, sc.Err()
}

// MachineCPU returns the CPU time all processors spent busy (everything
// but idle and iowait) since boot, and how many processors there are, from
// /proc/stat. The difference between two readings minus the system under
// test's own CPU is what everything else on the machine used meanwhile.
func MachineCPU() (busy time.Duration, cpus int, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseMachineCPU(data)
}

func parseMachineCPU(data []byte) (busy time.Duration, cpus int, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	found := false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		if fields[0] != "cpu" {
			cpus++
			continue
		}
		found = true
		// user nice system idle iowait irq softirq steal [guest guest_nice]
		// (guest time is already counted in user).
		for i, f := range fields[1:] {
			if i == 3 || i == 4 || i >= 8 {
				continue
			}
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("/proc/stat cpu field %q: %w", f, err)
			}
			busy += time.Duration(n) * time.Second / clockTicks
		}
	}
	if !found {
		return 0, 0, errors.New("/proc/stat has no cpu line")
	}
	return busy, cpus, sc.Err()
}
