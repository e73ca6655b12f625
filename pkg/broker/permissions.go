package broker

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// The NATS users of a productwatch deployment. Every NATS server that
// productwatch uses (the bridge's embedded one, the compose and Kubernetes
// clusters, `make cluster`) defines these three users with the permissions
// of [Roles], and no anonymous access.
const (
	// BridgeUser publishes the changes and manages the PRODUCTS stream.
	BridgeUser = "bridge"
	// GatewayUser only receives changes.
	GatewayUser = "gateway"
	// DebugUser is for people watching with the nats CLI: read-only.
	DebugUser = "debug"
)

// Permissions say what a NATS user may publish and subscribe to. A subject
// that matches a Deny pattern is refused even when an Allow pattern matches;
// when Allow is empty, everything not denied is allowed (nats-server's
// rule), so every productwatch role lists what it may do in Allow.
type Permissions struct {
	PublishAllow   []string
	PublishDeny    []string
	SubscribeAllow []string
	SubscribeDeny  []string
}

// Role is a NATS user of productwatch and what it may do.
type Role struct {
	// User is the user name.
	User string
	// ConfVar is the variable deploy/nats/permissions.conf defines the
	// permissions in, for a nats-server configuration to refer to as
	// permissions: $<ConfVar>.
	ConfVar string
	// Permissions are the subjects the user may use.
	Permissions Permissions
}

// The subjects of the JetStream API of the PRODUCTS stream.
const (
	jsAPI    = "$JS.API."
	jsStream = jsAPI + "STREAM."
)

// Roles returns the permissions of productwatch's NATS users. This is the
// one place they are defined: the embedded server uses them, and
// deploy/nats/permissions.conf (checked against them by a test) carries them
// to every other nats-server.
//
// bridge publishes product.> and uses the JetStream API of the PRODUCTS
// stream: create and update it (the bridge applies the STREAM_* settings at
// start), read its info and its messages (the bridge asks the stream whether
// a change is already there before republishing it). It cannot purge or
// delete the stream, nor touch any other. It receives only its inbox
// (request replies and publish acknowledgements).
//
// gateway subscribes to product.> and its inbox and publishes nothing: the
// gateway only receives core NATS messages and flushes (a PING, not a
// publish), and its replies would go to its own inbox.
//
// debug is read-only for the nats CLI. What natscli v0.5.0 sends, as traced
// on the embedded server: `nats sub` only subscribes; `nats stream info`
// publishes $JS.API.STREAM.INFO.PRODUCTS; `nats stream get --last-for`
// STREAM.INFO and $JS.API.STREAM.MSG.GET.PRODUCTS; `nats stream ls`
// $JS.API.STREAM.LIST; `nats stream view` STREAM.INFO, then pages through a
// pull consumer it creates ($JS.API.CONSUMER.CREATE.PRODUCTS.stream_pager_<n>.>,
// the last token being its filter), fetches from
// ($JS.API.CONSUMER.MSG.NEXT.PRODUCTS.stream_pager_<n>), acknowledges
// ($JS.ACK.PRODUCTS.stream_pager_<n>.…) and deletes
// ($JS.API.CONSUMER.DELETE.PRODUCTS.stream_pager_<n>). Consumers of a
// limits-retention stream remove nothing from it, and nats.go's ordered
// consumers use the same subjects. Publishing on product subjects and every
// stream-changing call (create, update, delete, purge, message delete,
// snapshot, restore) are denied explicitly, besides not being allowed.
func Roles() []Role {
	return []Role{
		{User: BridgeUser, ConfVar: "PRODUCTWATCH_BRIDGE", Permissions: Permissions{
			PublishAllow: []string{
				"product.>",
				jsStream + "CREATE." + StreamName,
				jsStream + "UPDATE." + StreamName,
				jsStream + "INFO." + StreamName,
				jsStream + "MSG.GET." + StreamName,
				jsAPI + "DIRECT.GET." + StreamName,
				jsAPI + "DIRECT.GET." + StreamName + ".>",
			},
			SubscribeAllow: []string{"_INBOX.>"},
		}},
		{User: GatewayUser, ConfVar: "PRODUCTWATCH_GATEWAY", Permissions: Permissions{
			PublishDeny:    []string{">"},
			SubscribeAllow: []string{"product.>", "_INBOX.>"},
		}},
		{User: DebugUser, ConfVar: "PRODUCTWATCH_DEBUG", Permissions: Permissions{
			PublishAllow: []string{
				jsAPI + "INFO",
				jsStream + "NAMES",
				jsStream + "LIST",
				jsStream + "INFO." + StreamName,
				jsStream + "MSG.GET." + StreamName,
				jsAPI + "DIRECT.GET." + StreamName,
				jsAPI + "DIRECT.GET." + StreamName + ".>",
				jsAPI + "CONSUMER.CREATE." + StreamName,
				jsAPI + "CONSUMER.CREATE." + StreamName + ".>",
				jsAPI + "CONSUMER.MSG.NEXT." + StreamName + ".*",
				jsAPI + "CONSUMER.INFO." + StreamName + ".*",
				jsAPI + "CONSUMER.NAMES." + StreamName,
				jsAPI + "CONSUMER.LIST." + StreamName,
				jsAPI + "CONSUMER.DELETE." + StreamName + ".*",
				"$JS.ACK." + StreamName + ".>",
			},
			PublishDeny: []string{
				"product.>",
				jsStream + "CREATE.>",
				jsStream + "UPDATE.>",
				jsStream + "DELETE.>",
				jsStream + "PURGE.>",
				jsStream + "MSG.DELETE.>",
				jsStream + "SNAPSHOT.>",
				jsStream + "RESTORE.>",
			},
			SubscribeAllow: []string{"product.>", "_INBOX.>"},
		}},
	}
}

// RoleOf returns the role of user, and false when productwatch has no such
// user.
func RoleOf(user string) (Role, bool) {
	for _, r := range Roles() {
		if r.User == user {
			return r, true
		}
	}
	return Role{}, false
}

// serverPermissions converts p to nats-server's form.
func (p Permissions) serverPermissions() *server.Permissions {
	sp := &server.Permissions{}
	if len(p.PublishAllow)+len(p.PublishDeny) > 0 {
		sp.Publish = &server.SubjectPermission{Allow: p.PublishAllow, Deny: p.PublishDeny}
	}
	if len(p.SubscribeAllow)+len(p.SubscribeDeny) > 0 {
		sp.Subscribe = &server.SubjectPermission{Allow: p.SubscribeAllow, Deny: p.SubscribeDeny}
	}
	return sp
}

// PermissionsConf returns [Roles] as a nats-server configuration snippet:
// one variable per role (Role.ConfVar) holding its permissions, meant to be
// included in an authorization block (deploy/nats/permissions.conf is this
// text; deploy/nats/auth.conf shows the use).
func PermissionsConf() string {
	var b strings.Builder
	b.WriteString("# productwatch's NATS permissions, one variable per user, for an authorization\n" +
		"# block to include (see auth.conf next to this file). Generated from\n" +
		"# pkg/broker/permissions.go, which the embedded server uses; do not edit by hand:\n" +
		"#   go test ./pkg/broker -run TestPermissionsConf -update\n" +
		"# rewrites it, and the test fails while the two disagree.\n")
	for _, r := range Roles() {
		fmt.Fprintf(&b, "\n# user %s\n%s = {\n", r.User, r.ConfVar)
		writeSubjectPermission(&b, "publish", r.Permissions.PublishAllow, r.Permissions.PublishDeny)
		writeSubjectPermission(&b, "subscribe", r.Permissions.SubscribeAllow, r.Permissions.SubscribeDeny)
		b.WriteString("}\n")
	}
	return b.String()
}

// writeSubjectPermission writes one publish or subscribe block.
func writeSubjectPermission(b *strings.Builder, name string, allow, deny []string) {
	if len(allow)+len(deny) == 0 {
		return
	}
	fmt.Fprintf(b, "  %s = {\n", name)
	for _, list := range []struct {
		key      string
		subjects []string
	}{{"allow", allow}, {"deny", deny}} {
		if len(list.subjects) == 0 {
			continue
		}
		fmt.Fprintf(b, "    %s = [\n", list.key)
		for _, s := range list.subjects {
			fmt.Fprintf(b, "      %q\n", s)
		}
		b.WriteString("    ]\n")
	}
	b.WriteString("  }\n")
}
