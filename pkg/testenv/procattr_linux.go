//go:build linux

package testenv

import "syscall"

// childProcAttr makes the kernel kill a program when the test process
// dies (a -timeout panic, say), so that none outlives its test run.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
