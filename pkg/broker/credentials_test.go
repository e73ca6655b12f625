package broker

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"github.com/productwatch/productwatch/pkg/envflag"
)

func TestCredentialsRegister(t *testing.T) {
	t.Setenv("NATS_USER", "envuser")
	t.Setenv("NATS_PASSWORD", "envsecret")
	tests := []struct {
		name string
		args []string
		want Credentials
	}{
		{"environment", nil, Credentials{User: "envuser", Password: "envsecret"}},
		{"flags win", []string{"-nats-user", "flaguser", "-nats-password", "flagsecret"}, Credentials{User: "flaguser", Password: "flagsecret"}},
		{"empty flag clears", []string{"-nats-password", ""}, Credentials{User: "envuser"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Credentials
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			c.Register(envflag.New(fs))
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if c != tt.want {
				t.Errorf("got %+v, want %+v", c, tt.want)
			}
		})
	}
}

// TestCredentialsHelpHidesPassword checks that -help shows the user name
// from the environment but never the password.
func TestCredentialsHelpHidesPassword(t *testing.T) {
	t.Setenv("NATS_USER", "envuser")
	t.Setenv("NATS_PASSWORD", "envsecret")
	var c Credentials
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	c.Register(envflag.New(fs))
	fs.PrintDefaults()
	if !strings.Contains(out.String(), "NATS_PASSWORD") || !strings.Contains(out.String(), "envuser") {
		t.Errorf("help does not document the flags:\n%s", out.String())
	}
	if strings.Contains(out.String(), "envsecret") {
		t.Errorf("help shows the password:\n%s", out.String())
	}
}
