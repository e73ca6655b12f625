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

// EmbeddedPasswords are the passwords of the embedded server's gateway and
// debug users (NATS_EMBED_GATEWAY_PASSWORD, NATS_EMBED_DEBUG_PASSWORD). The
// bridge's own user is the bridge's NATS_USER and NATS_PASSWORD.
type EmbeddedPasswords struct {
	Gateway string // NATS_EMBED_GATEWAY_PASSWORD; empty: no gateway can connect
	Debug   string // NATS_EMBED_DEBUG_PASSWORD; empty: no debug user
}

// Register defines -nats-embed-gateway-password and
// -nats-embed-debug-password on fs, their defaults taken from the
// environment and never shown in -help output.
func (p *EmbeddedPasswords) Register(fs *flag.FlagSet) {
	p.Gateway = os.Getenv("NATS_EMBED_GATEWAY_PASSWORD")
	p.Debug = os.Getenv("NATS_EMBED_DEBUG_PASSWORD")
	fs.Var(secretFlag{&p.Gateway}, "nats-embed-gateway-password",
		"password of the embedded nats-server's gateway user (env NATS_EMBED_GATEWAY_PASSWORD); unset: no gateway can connect")
	fs.Var(secretFlag{&p.Debug}, "nats-embed-debug-password",
		"password of the embedded nats-server's read-only debug user, for the nats CLI (env NATS_EMBED_DEBUG_PASSWORD); unset: no such user")
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
