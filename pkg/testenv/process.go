package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a program a test runs as a subprocess (a real bridge or
// gateway binary), stopped with SIGTERM when the test ends.
type Process struct {
	Cmd  *exec.Cmd
	out  LockedBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// StartProcess starts the program at path with env added to the test's
// environment (see [StartCommand]).
func StartProcess(t testing.TB, name, path string, env ...string) *Process {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	return StartCommand(t, name, cmd)
}

// StartCommand starts cmd (a program and its environment, made by the
// caller) with its stdout and stderr kept (Output), and stops it when the
// test ends: SIGTERM, then SIGKILL after 15 s. When the test failed, the tail
// of the output is logged under name. On Linux the process is killed when
// the test process dies, so that no program outlives its test run.
func StartCommand(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = &p.out, &p.out
	p.Cmd.SysProcAttr = childProcAttr()
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output (%s):\n%s", name, p.DescribeExit(), Tail(p.Output(), 200))
		}
	})
	return p
}

// Output returns what the process has written so far (stdout and stderr;
// past 32 MiB, the newer half).
func (p *Process) Output() string { return p.out.String() }

// Exited returns a channel closed when the process has exited; Err then
// returns its exit error.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Err returns the process's exit error once Exited is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// HasExited reports whether the process has exited.
func (p *Process) HasExited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// DescribeExit says how the process ended, or that it runs.
func (p *Process) DescribeExit() string {
	if !p.HasExited() {
		return "running"
	}
	if p.err == nil {
		return "exited with status 0"
	}
	return p.err.Error()
}

// Tail returns the last n lines of s, saying how many it left out.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	return fmt.Sprintf("[%d earlier lines left out]\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}

// maxOutput bounds what a Process keeps of its output.
const maxOutput = 32 << 20

// LockedBuffer collects output that goroutines or a process write while a
// test reads it (String); safe for concurrent use. Past 32 MiB it keeps the
// newer half. The zero value is ready to use.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > maxOutput {
		keep := b.buf.Bytes()[b.buf.Len()/2:]
		b.buf = *bytes.NewBuffer(append([]byte("[older output dropped]\n"), keep...))
	}
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
