//go:build linux

package main

import "syscall"

// childProcAttr makes the kernel kill a bridge process when the test process
// dies (a -timeout panic, say), so that no bridge outlives its test run.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
