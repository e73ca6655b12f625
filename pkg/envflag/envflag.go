// Package envflag defines command-line flags whose defaults come from
// environment variables, so that every setting of productwatch can be given
// either way: the flag wins over the variable, the variable over the built-in
// default.
package envflag

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Set defines flags on a FlagSet and remembers the first environment value
// that could not be parsed, reported by Err. A Set is not safe for concurrent
// use; it is meant for a program's start.
type Set struct {
	fs  *flag.FlagSet
	err error
}

// New returns a Set that defines its flags on fs.
func New(fs *flag.FlagSet) *Set { return &Set{fs: fs} }

// Err returns the first environment variable that failed to parse, if any.
// Call it after fs.Parse.
func (s *Set) Err() error { return s.err }

func usage(env, text string) string { return fmt.Sprintf("%s (env %s)", text, env) }

func (s *Set) fail(env, value string, err error) {
	if s.err == nil {
		s.err = fmt.Errorf("environment variable %s=%q: %w", env, value, err)
	}
}

// String defines a string flag name, default from env or def.
func (s *Set) String(p *string, name, env, def, text string) {
	if v, ok := os.LookupEnv(env); ok {
		def = v
	}
	s.fs.StringVar(p, name, def, usage(env, text))
}

// Bool defines a bool flag name, default from env (strconv.ParseBool) or def.
func (s *Set) Bool(p *bool, name, env string, def bool, text string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(env, v, err)
		} else {
			def = b
		}
	}
	s.fs.BoolVar(p, name, def, usage(env, text))
}

// Int defines an int flag name, default from env or def.
func (s *Set) Int(p *int, name, env string, def int, text string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			s.fail(env, v, err)
		} else {
			def = n
		}
	}
	s.fs.IntVar(p, name, def, usage(env, text))
}

// Int64 defines an int64 flag name, default from env or def.
func (s *Set) Int64(p *int64, name, env string, def int64, text string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.fail(env, v, err)
		} else {
			def = n
		}
	}
	s.fs.Int64Var(p, name, def, usage(env, text))
}

// Duration defines a duration flag name (time.ParseDuration: "10s"), default
// from env or def.
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, text string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			s.fail(env, v, err)
		} else {
			def = d
		}
	}
	s.fs.DurationVar(p, name, def, usage(env, text))
}

// Float64 defines a float64 flag name, default from env or def.
func (s *Set) Float64(p *float64, name, env string, def float64, text string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			s.fail(env, v, err)
		} else {
			def = f
		}
	}
	s.fs.Float64Var(p, name, def, usage(env, text))
}

// Secret defines a string flag name for a password or token, default from
// env or empty, whose value never shows: flag.PrintDefaults prints a flag's
// default, which here would be the secret taken from the environment.
func (s *Set) Secret(p *string, name, env, text string) {
	*p = os.Getenv(env)
	s.fs.Var(secretValue{p}, name, usage(env, text))
}

// secretValue is a flag.Value that prints nothing.
type secretValue struct{ p *string }

// String returns "" so that no value is ever printed (flag also calls it on
// a zero secretValue, whose p is nil).
func (secretValue) String() string { return "" }

// Set stores the flag's value.
func (v secretValue) Set(s string) error {
	*v.p = s
	return nil
}

// Parse parses args with the FlagSet, then reports the first environment
// variable that could not be parsed, if any (Err): one error for both.
func (s *Set) Parse(args []string) error {
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	return s.err
}
