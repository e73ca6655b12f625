package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a program a test runs as a subprocess (a real bridge or
// gateway binary), stopped with SIGTERM when the test ends.
type Process struct {
	Cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// StartProcess starts the program at path with env added to the test's
// environment, its stdout and stderr kept (Output), and stops it when the
// test ends: SIGTERM, then SIGKILL after 15 s. When the test failed, the
// output is logged under name.
func StartProcess(t testing.TB, name, path string, env ...string) *Process {
	t.Helper()
	p := &Process{Cmd: exec.Command(path), done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = &p.out, &p.out
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
			t.Logf("%s output:\n%s", name, p.Output())
		}
	})
	return p
}

// Output returns what the process has written so far (stdout and stderr).
func (p *Process) Output() string { return p.out.String() }

// Exited returns a channel closed when the process has exited; Err then
// returns its exit error.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Err returns the process's exit error once Exited is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// lockedBuffer is a bytes.Buffer safe for a writing process and a reading
// test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
