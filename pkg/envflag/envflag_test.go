package envflag

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string
		wantDur time.Duration
		wantErr bool
	}{
		{name: "default", want: "def", wantDur: time.Second},
		{name: "env", env: map[string]string{"PW_S": "env", "PW_D": "5s"}, want: "env", wantDur: 5 * time.Second},
		{name: "flag beats env", env: map[string]string{"PW_S": "env"}, args: []string{"-s", "flag", "-d", "2m"}, want: "flag", wantDur: 2 * time.Minute},
		{name: "bad env duration", env: map[string]string{"PW_D": "soon"}, want: "def", wantDur: time.Second, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			set := New(fs)
			var s string
			var d time.Duration
			set.String(&s, "s", "PW_S", "def", "a string")
			set.Duration(&d, "d", "PW_D", time.Second, "a duration")
			err := set.Parse(tc.args)
			if s != tc.want || d != tc.wantDur {
				t.Errorf("got %q %v, want %q %v", s, d, tc.want, tc.wantDur)
			}
			if (err != nil) != tc.wantErr || (set.Err() != nil) != tc.wantErr {
				t.Errorf("Parse = %v, Err() = %v, want error %v", err, set.Err(), tc.wantErr)
			}
		})
	}
}

func TestBoolIntEnv(t *testing.T) {
	t.Setenv("PW_B", "true")
	t.Setenv("PW_I", "42")
	t.Setenv("PW_I64", "x")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	set := New(fs)
	var b bool
	var i int
	var i64 int64
	set.Bool(&b, "b", "PW_B", false, "")
	set.Int(&i, "i", "PW_I", 1, "")
	set.Int64(&i64, "i64", "PW_I64", 7, "")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if !b || i != 42 || i64 != 7 {
		t.Errorf("got %v %d %d", b, i, i64)
	}
	if set.Err() == nil {
		t.Error("bad PW_I64 not reported")
	}
}

// TestSecret: the environment's value, a flag over it, and never the value
// in -help output.
func TestSecret(t *testing.T) {
	t.Setenv("PW_SECRET", "from-the-environment")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	set := New(fs)
	var secret string
	set.Secret(&secret, "secret", "PW_SECRET", "a password")
	if secret != "from-the-environment" {
		t.Errorf("from the environment: %q", secret)
	}
	fs.PrintDefaults()
	if strings.Contains(help.String(), "from-the-environment") || !strings.Contains(help.String(), "PW_SECRET") {
		t.Errorf("help output:\n%s", help.String())
	}
	if err := fs.Parse([]string{"-secret", "from-a-flag"}); err != nil || secret != "from-a-flag" {
		t.Errorf("flag: %q, %v", secret, err)
	}
}
