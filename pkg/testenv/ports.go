package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
)

// FreeAddr returns a 127.0.0.1 address whose port is free now, for a server
// the test starts later (a subprocess, say) on that address.
//
// The port is picked below the kernel's ephemeral range (Linux's
// ip_local_port_range, 32768-60999 by default), not with port 0: a port
// from that range is what every outgoing connection and every "port 0"
// listener on the machine takes next, so on a busy machine it is often gone
// by the time the server binds it. Below the range only another explicit
// choice can take it. Without a range to read (not Linux), port 0 it is.
func FreeAddr(t testing.TB) string {
	t.Helper()
	if low, ok := ephemeralLow(); ok && low > 10000 {
		for range 200 {
			port := 10000 + rand.IntN(low-10000)
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				continue
			}
			addr := ln.Addr().String()
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			return addr
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// ephemeralLow returns the first port of the kernel's ephemeral range.
func ephemeralLow() (int, bool) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	var low, high int
	if _, err := fmt.Sscan(string(data), &low, &high); err != nil || low < 1 || low > high {
		return 0, false
	}
	return low, true
}
