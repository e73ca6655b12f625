package broker

import "github.com/productwatch/productwatch/pkg/envflag"

// Credentials are the NATS user name and password a program connects with
// (NATS_USER, NATS_PASSWORD). The zero value connects without any, which
// only a server without authorization accepts.
type Credentials struct {
	User     string // NATS_USER
	Password string // NATS_PASSWORD
}

// Register defines -nats-user and -nats-password on set, their defaults
// taken from NATS_USER and NATS_PASSWORD. The password's value never shows
// in -help output.
func (c *Credentials) Register(set *envflag.Set) {
	set.String(&c.User, "nats-user", "NATS_USER", "", "NATS user name; unset: connect without credentials")
	set.Secret(&c.Password, "nats-password", "NATS_PASSWORD", "password of the NATS user")
}

// EmbeddedPasswords are the passwords of the embedded server's gateway and
// debug users (NATS_EMBED_GATEWAY_PASSWORD, NATS_EMBED_DEBUG_PASSWORD). The
// bridge's own user is the bridge's NATS_USER and NATS_PASSWORD.
type EmbeddedPasswords struct {
	Gateway string // NATS_EMBED_GATEWAY_PASSWORD; empty: no gateway can connect
	Debug   string // NATS_EMBED_DEBUG_PASSWORD; empty: no debug user
}

// Register defines -nats-embed-gateway-password and
// -nats-embed-debug-password on set, their defaults taken from the
// environment and never shown in -help output.
func (p *EmbeddedPasswords) Register(set *envflag.Set) {
	set.Secret(&p.Gateway, "nats-embed-gateway-password", "NATS_EMBED_GATEWAY_PASSWORD",
		"password of the embedded nats-server's gateway user; unset: no gateway can connect")
	set.Secret(&p.Debug, "nats-embed-debug-password", "NATS_EMBED_DEBUG_PASSWORD",
		"password of the embedded nats-server's read-only debug user, for the nats CLI; unset: no such user")
}
