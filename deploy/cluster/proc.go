package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/productwatch/productwatch/pkg/procstat"
)

// Proc is a process the cluster started, as recorded in the state file: its
// PID and the kernel's start time of that PID, so that a PID the kernel gave
// to another program since is never signalled.
type Proc struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // procstat.Stat.StartTime: clock ticks since boot
	Log       string `json:"log"`       // where its stdout and stderr go
}

// startProc starts path with args and env (added to ours) in a session of its
// own, so that it outlives this command and a Ctrl-C in the shell that ran
// `make cluster` does not reach it. Its output is appended to logPath.
//
// A goroutine waits for the child, so that one that dies while this process
// still runs (the chaos tests, or a failed start) does not stay a zombie.
func startProc(name, path string, args, env []string, logPath string) (Proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "--- %s: starting %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), path, strings.Join(args, " "))
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s (%s): %w", name, path, err)
	}
	go func() { _ = cmd.Wait() }()
	st, err := procstat.ReadStat(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	return Proc{Name: name, PID: cmd.Process.Pid, StartTime: st.StartTime, Log: logPath}, nil
}

// Alive reports whether the recorded process still runs: its PID exists, is
// not a zombie, and started when the recorded one did.
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := procstat.ReadStat(p.PID)
	return err == nil && st.State != 'Z' && st.State != 'X' && st.StartTime == p.StartTime
}

// signal sends sig to the process if it is still the one recorded.
func (p Proc) signal(sig syscall.Signal) error {
	if !p.Alive() {
		return errProcGone
	}
	err := syscall.Kill(p.PID, sig)
	if errors.Is(err, syscall.ESRCH) {
		return errProcGone
	}
	return err
}

// errProcGone is returned by signal when the process has already exited.
var errProcGone = errors.New("process has exited")

// Kill sends SIGKILL (the chaos tests' kill -9). A process already gone is
// not an error.
func (p Proc) Kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil && !errors.Is(err, errProcGone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// Stop sends SIGTERM and waits up to grace for the process to exit, then
// sends SIGKILL and waits a little more. A process already gone is not an
// error.
func (p Proc) Stop(ctx context.Context, grace time.Duration) error {
	if err := p.signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, errProcGone) {
			return nil
		}
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.PID, err)
	}
	if p.waitExit(ctx, grace) {
		return nil
	}
	if err := p.signal(syscall.SIGKILL); err != nil && !errors.Is(err, errProcGone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.Name, p.PID, err)
	}
	if p.waitExit(ctx, 5*time.Second) {
		return fmt.Errorf("%s (pid %d) did not stop within %v: killed", p.Name, p.PID, grace)
	}
	return fmt.Errorf("%s (pid %d) still runs after SIGKILL", p.Name, p.PID)
}

// waitExit polls until the process is gone or d (or ctx) has passed.
func (p Proc) waitExit(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.Alive() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return !p.Alive()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}
