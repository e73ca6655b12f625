package main

import (
	"context"
	"os"
	"time"

	"github.com/productwatch/productwatch/pkg/procstat"
)

// procUsage is what one process (or group of processes) used during a
// scenario's measured window.
type procUsage struct {
	CPUSeconds float64 `json:"cpuSeconds"`
	// PeakRSSMiB: the process's peak resident memory since it started
	// (VmHWM; the programs start fresh for every scenario). For the
	// PostgreSQL backends, the largest of them (their RSS counts the
	// shared buffers they touched).
	PeakRSSMiB float64 `json:"peakRssMiB"`
	RSSMiB     float64 `json:"rssMiB"`
	Processes  int     `json:"processes,omitempty"`
	Note       string  `json:"note,omitempty"`
}

// usageSnapshot is a reading of every process of the system under test and
// of the machine.
type usageSnapshot struct {
	at       time.Time
	gateway  procstat.Sample
	bridge   procstat.Sample
	self     procstat.Sample
	backends map[int]procstat.Sample
	machine  time.Duration
	cpus     int
	errs     []string
}

// snapshot reads the gateway, the bridge (NATS runs inside it), the
// PostgreSQL backends of the scenario's database, this process and the
// machine.
func snapshot(ctx context.Context, s *system) usageSnapshot {
	u := usageSnapshot{at: time.Now(), backends: map[int]procstat.Sample{}}
	var err error
	if u.gateway, err = s.gateway.sample(); err != nil {
		u.errs = append(u.errs, "gateway: "+err.Error())
	}
	if u.bridge, err = s.bridge.sample(); err != nil {
		u.errs = append(u.errs, "bridge: "+err.Error())
	}
	if u.self, err = procstat.Read(os.Getpid()); err != nil {
		u.errs = append(u.errs, "loadgen: "+err.Error())
	}
	pids, err := s.backendPIDs(ctx)
	if err != nil {
		u.errs = append(u.errs, "backends: "+err.Error())
	}
	for _, pid := range pids {
		if b, err := procstat.Read(pid); err == nil {
			u.backends[pid] = b
		}
	}
	if u.machine, u.cpus, err = procstat.MachineCPU(); err != nil {
		u.errs = append(u.errs, "machine: "+err.Error())
	}
	return u
}

// usageReport is the resource use of a scenario's window.
type usageReport struct {
	WindowSeconds float64   `json:"windowSeconds"`
	Gateway       procUsage `json:"gateway"`
	// Bridge includes NATS: it runs embedded in the bridge, as in `make run`.
	Bridge   procUsage `json:"bridgeWithEmbeddedNats"`
	Postgres procUsage `json:"postgresBackends"`
	Loadgen  procUsage `json:"loadgen"`
	// MachineBusyCPUSeconds: every processor's busy time in the window;
	// OthersCPUSeconds: what is left after the processes above, i.e. what
	// everything else on the machine used meanwhile (PostgreSQL's own
	// background processes included).
	MachineBusyCPUSeconds float64  `json:"machineBusyCpuSeconds"`
	OthersCPUSeconds      float64  `json:"othersCpuSeconds"`
	CPUs                  int      `json:"cpus"`
	LoadAverage           string   `json:"loadAverageAtEnd"`
	Errors                []string `json:"errors,omitempty"`
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// usageBetween returns what was used from a to b.
func usageBetween(a, b usageSnapshot) usageReport {
	r := usageReport{WindowSeconds: b.at.Sub(a.at).Seconds(), CPUs: b.cpus, Errors: append(a.errs, b.errs...)}
	proc := func(x, y procstat.Sample) procUsage {
		return procUsage{CPUSeconds: (y.CPU - x.CPU).Seconds(), PeakRSSMiB: mib(y.PeakRSS), RSSMiB: mib(y.RSS)}
	}
	r.Gateway = proc(a.gateway, b.gateway)
	r.Bridge = proc(a.bridge, b.bridge)
	r.Loadgen = proc(a.self, b.self)
	r.Postgres.Note = "backends of the scenario's database (a backend that ended within the window is not counted)"
	for pid, y := range b.backends {
		x := a.backends[pid] // zero for a backend that started within the window
		r.Postgres.CPUSeconds += (y.CPU - x.CPU).Seconds()
		r.Postgres.PeakRSSMiB = max(r.Postgres.PeakRSSMiB, mib(y.PeakRSS))
		r.Postgres.RSSMiB += mib(y.RSS)
		r.Postgres.Processes++
	}
	r.MachineBusyCPUSeconds = (b.machine - a.machine).Seconds()
	r.OthersCPUSeconds = max(0, r.MachineBusyCPUSeconds-r.Gateway.CPUSeconds-r.Bridge.CPUSeconds-
		r.Loadgen.CPUSeconds-r.Postgres.CPUSeconds)
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.LoadAverage = string(data[:min(len(data), 14)])
	}
	return r
}
