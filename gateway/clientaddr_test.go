package main

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestClientAddr(t *testing.T) {
	proxies, err := parseTrustedProxies("127.0.0.1/32, 10.0.0.0/8, ::1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		trusted trustedProxies
		remote  string
		xff     []string
		want    string
	}{
		{"no proxies: the socket", nil, "192.0.2.7:5555", []string{"203.0.113.9"}, "192.0.2.7"},
		{"untrusted peer: XFF ignored", proxies, "192.0.2.7:5555", []string{"203.0.113.9"}, "192.0.2.7"},
		{"trusted peer, no XFF", proxies, "127.0.0.1:5555", nil, "127.0.0.1"},
		{"trusted peer: the client", proxies, "127.0.0.1:5555", []string{"203.0.113.9"}, "203.0.113.9"},
		{"spoofed left entries skipped", proxies, "127.0.0.1:5555", []string{"1.1.1.1, 203.0.113.9"}, "203.0.113.9"},
		{"trusted hops skipped", proxies, "127.0.0.1:5555", []string{"1.1.1.1, 203.0.113.9, 10.1.2.3"}, "203.0.113.9"},
		{"several header lines", proxies, "127.0.0.1:5555", []string{"1.1.1.1", "203.0.113.9, 10.1.2.3"}, "203.0.113.9"},
		{"all trusted: the leftmost", proxies, "127.0.0.1:5555", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},
		{"garbage: the last trusted hop", proxies, "127.0.0.1:5555", []string{"203.0.113.9, bogus, 10.0.0.2"}, "10.0.0.2"},
		{"with a port", proxies, "127.0.0.1:5555", []string{"203.0.113.9:443"}, "203.0.113.9"},
		{"IPv6 with a port", proxies, "[::1]:5555", []string{"[2001:db8::1]:443"}, "2001:db8::/64"},
		{"IPv4-mapped", proxies, "127.0.0.1:5555", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"IPv6 by /64", nil, "[2001:db8:1:2:3:4:5:6]:5555", nil, "2001:db8:1:2::/64"},
		{"empty entries", proxies, "127.0.0.1:5555", []string{" , 203.0.113.9 ,"}, "203.0.113.9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tc.remote, Header: http.Header{}}
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := addrKey(tc.trusted.clientAddr(r)); got != tc.want {
				t.Errorf("= %s, want %s", got, tc.want)
			}
		})
	}
}

func TestParseTrustedProxies(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "nope", "::1/129", "10.0.0.0/8, 1.2.3"} {
		if _, err := parseTrustedProxies(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	p, err := parseTrustedProxies("::ffff:10.0.0.0/104")
	if err != nil || !p.trusts(netip.MustParseAddr("10.1.2.3")) {
		t.Errorf("IPv4-mapped CIDR: %v %v", p, err)
	}
}

// FuzzForwardedFor: any X-Forwarded-For yields a valid address: the peer,
// or one of the header's entries, and never panics.
func FuzzForwardedFor(f *testing.F) {
	for _, seed := range []string{"203.0.113.9", "1.1.1.1, 203.0.113.9, 10.1.2.3", "[2001:db8::1]:443", "bogus", "", ",,,",
		"::ffff:203.0.113.9", "fe80::1%eth0", "10.0.0.1, 10.0.0.2", "1.2.3.4:99999"} {
		f.Add(seed)
	}
	proxies, err := parseTrustedProxies("127.0.0.1/32,10.0.0.0/8")
	if err != nil {
		f.Fatal(err)
	}
	peer := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, xff string) {
		got := proxies.fromForwardedFor(peer, []string{xff})
		if !got.IsValid() || got.Zone() != "" {
			t.Fatalf("%q gave %v", xff, got)
		}
		if got != peer && !strings.Contains(xff, got.String()) && !strings.Contains(strings.ToLower(xff), "::ffff:") {
			// Entries are parsed as written; the result is one of them
			// (IPv4-mapped ones unmapped).
			if a, ok := parseForwardedAddr(strings.TrimSpace(xff)); !ok || a != got {
				t.Fatalf("%q gave %v, which it does not name", xff, got)
			}
		}
	})
}

func TestCheckOriginPattern(t *testing.T) {
	for _, ok := range []string{"shop.example.com", "*.example.com", "localhost:*", "localhost", "*.shop.example.co.uk", "127.0.0.1:8443", "example.com:*"} {
		if err := checkOriginPattern(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"*", "**", "*.*", "*:*", "?*", "*.com", "shop.*", "*.*.*", "[a-z]*", "[a-", "*.co?", "**:443", "*.", "."} {
		if err := checkOriginPattern(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestConfigChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		ok   bool
	}{
		{"short token", map[string]string{"API_TOKEN": "a"}, false},
		{"15-byte token", map[string]string{"API_TOKEN": strings.Repeat("x", 15)}, false},
		{"16-byte token", map[string]string{"API_TOKEN": strings.Repeat("x", 16)}, true},
		{"no token", map[string]string{"API_TOKEN": ""}, true},
		{"bare wildcard origin", map[string]string{"ALLOWED_ORIGINS": "**"}, false},
		{"bad proxy CIDR", map[string]string{"TRUSTED_PROXIES": "10.0.0.0/40"}, false},
		{"negative lock timeout", map[string]string{"DB_LOCK_TIMEOUT": "-1s"}, false},
		{"zero catch-up timeout", map[string]string{"WS_CATCHUP_TIMEOUT": "0s"}, false},
		{"zero per-address limit", map[string]string{"WS_MAX_CONNECTIONS_PER_ADDR": "0"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if _, err := loadConfig(nil); (err == nil) != tc.ok {
				t.Errorf("loadConfig: %v", err)
			}
		})
	}
}
