package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// trustedProxies are the load balancers whose X-Forwarded-For the gateway
// believes (TRUSTED_PROXIES). The zero value trusts nobody: the client
// address is the socket's.
type trustedProxies []netip.Prefix

// parseTrustedProxies parses TRUSTED_PROXIES: comma-separated CIDRs or bare
// addresses (a bare address is a /32 or /128).
func parseTrustedProxies(s string) (trustedProxies, error) {
	var out trustedProxies
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "/") {
			a, err := netip.ParseAddr(part)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an address", part)
			}
			part = a.Unmap().String() + "/" + fmt.Sprint(a.Unmap().BitLen())
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR: %w", part, err)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (t trustedProxies) trusts(a netip.Addr) bool {
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr returns the address the per-client limits count against: the
// socket's remote IP; when that is a trusted proxy, the rightmost
// X-Forwarded-For entry that is not a trusted proxy (entries to its left
// were written by the client and prove nothing). When every entry is
// trusted, the leftmost one; when an entry cannot be parsed, the last
// trusted hop (a proxy that forwards garbage is the client we can name).
func (t trustedProxies) clientAddr(r *http.Request) netip.Addr {
	peer := remoteIP(r.RemoteAddr)
	if len(t) == 0 || !peer.IsValid() || !t.trusts(peer) {
		return peer
	}
	return t.fromForwardedFor(peer, r.Header.Values("X-Forwarded-For"))
}

// fromForwardedFor walks the X-Forwarded-For values (all header lines, in
// order) from the right, starting at the trusted peer.
func (t trustedProxies) fromForwardedFor(peer netip.Addr, values []string) netip.Addr {
	client := peer
	for i := len(values) - 1; i >= 0; i-- {
		entries := strings.Split(values[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			e := strings.TrimSpace(entries[j])
			if e == "" {
				continue
			}
			a, ok := parseForwardedAddr(e)
			if !ok {
				return client
			}
			client = a
			if !t.trusts(a) {
				return a
			}
		}
	}
	return client
}

// parseForwardedAddr parses one X-Forwarded-For entry: an IPv4 or IPv6
// address, optionally with a port ("1.2.3.4:5678", "[::1]:80").
func parseForwardedAddr(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// remoteIP returns the IP of an http.Request's RemoteAddr ("ip:port").
func remoteIP(remoteAddr string) netip.Addr {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.WithZone("").Unmap()
}

// addrKey is what per-address limits count by: an IPv4 address, or the /64
// network of an IPv6 one (one subscriber line usually gets a whole /64, so
// counting single IPv6 addresses would let one client have 2^64 of them).
func addrKey(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown"
	}
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
