package broker

import (
	"flag"
	"os"
)

// Credentials are the NATS user name and password a program connects with
// (NATS_USER, NATS_PASSWORD). The zero value connects without any, which
// only a server without authorization accepts.
type Credentials struct {
	User     string // NATS_USER
	Password string // NATS_PASSWORD
}

// Register defines -nats-user and -nats-password on fs, their defaults taken
// from NATS_USER and NATS_PASSWORD. The password's value never shows in
// -help output.
func (c *Credentials) Register(fs *flag.FlagSet) {
	c.User = os.Getenv("NATS_USER")
	c.Password = os.Getenv("NATS_PASSWORD")
	fs.StringVar(&c.User, "nats-user", c.User, "NATS user name (env NATS_USER); unset: connect without credentials")
	fs.Var(secretFlag{&c.Password}, "nats-password", "password of the NATS user (env NATS_PASSWORD)")
}

// secretFlag is a string flag that never shows its value: flag.PrintDefaults
// prints a flag's default, which for a password comes from the environment.
type secretFlag struct{ p *string }

// String returns "" so that no value is ever printed.
func (secretFlag) String() string { return "" }

// Set stores the flag's value.
func (s secretFlag) Set(v string) error {
	*s.p = v
	return nil
}
