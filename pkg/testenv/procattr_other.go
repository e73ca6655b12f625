//go:build !linux

package testenv

import "syscall"

// childProcAttr has nothing to add outside Linux (no parent-death signal):
// a program may outlive a test process that dies without cleaning up.
func childProcAttr() *syscall.SysProcAttr { return nil }
