//go:build !linux

package main

import "syscall"

// childProcAttr has nothing to add outside Linux (no parent-death signal):
// a bridge may outlive a test process that dies without cleaning up.
func childProcAttr() *syscall.SysProcAttr { return nil }
