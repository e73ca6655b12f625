package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/change"
)

// StreamName is the JetStream stream that holds every product change, on
// subjects product.<id>.
const StreamName = "PRODUCTS"

// StreamOptions are the operator's knobs of the PRODUCTS stream.
type StreamOptions struct {
	// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id (the
	// change's seq) to drop a republished change. Default 2 minutes.
	DuplicateWindow time.Duration
	// MaxAge is how long changes stay in the stream. Default 24 hours.
	MaxAge time.Duration
	// History is how many changes per product the stream keeps (the last
	// one is the product's current state). Default 8.
	History int64
	// Replicas is the number of copies in a NATS cluster. Default 1.
	Replicas int
}

// DefaultStreamOptions returns the defaults documented on [StreamOptions].
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{DuplicateWindow: 2 * time.Minute, MaxAge: 24 * time.Hour, History: 8, Replicas: 1}
}

// StreamConfig returns the configuration of the PRODUCTS stream: file
// storage, limits retention, direct get allowed (so the latest state of a
// product can be read by subject from any replica).
func StreamConfig(o StreamOptions) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              StreamName,
		Description:       "productwatch: every committed product change, on product.<id>, Nats-Msg-Id = change seq",
		Subjects:          []string{change.SubjectPrefix + "*"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		MaxAge:            o.MaxAge,
		MaxMsgsPerSubject: o.History,
		Duplicates:        o.DuplicateWindow,
		Replicas:          o.Replicas,
		AllowDirect:       true,
	}
}

// EnsureStream creates the PRODUCTS stream, or updates it to o when it
// exists.
func EnsureStream(ctx context.Context, js jetstream.StreamManager, o StreamOptions) (jetstream.Stream, error) {
	stream, err := js.CreateOrUpdateStream(ctx, StreamConfig(o))
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", StreamName, err)
	}
	return stream, nil
}

// Hooks are optional callbacks of Connect. They run on nats.go's goroutines
// and must not block.
type Hooks struct {
	OnReconnect    func()                       // after each reconnect
	OnSlowConsumer func(sub *nats.Subscription) // messages of sub were dropped
}

// Connect connects to the NATS servers in url (comma-separated) as creds
// and keeps reconnecting forever, logging every disconnect, failed reconnect
// and reconnect.
//
// When the servers cannot be reached at all, the first connection is retried
// in the background (RetryOnFailedConnect), so a process can start before
// NATS does. When a server answers but refuses the credentials, Connect
// fails at once with an error naming NATS_USER and NATS_PASSWORD: that is a
// configuration mistake, not an outage. Later authorization errors (say, the
// server's users changed while connected) are logged and retried, never
// given up on, so fixing the server's configuration is enough to recover.
func Connect(url, name string, creds Credentials, logger *slog.Logger, hooks Hooks) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: the connection was closed on purpose
				logger.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if isAuthError(err) {
				logger.Error("NATS refused the credentials; check NATS_USER and NATS_PASSWORD", "user", creds.User, "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("NATS reconnected", "url", c.ConnectedUrlRedacted())
			if hooks.OnReconnect != nil {
				hooks.OnReconnect()
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("NATS error", "subject", subject, "err", err)
			if errors.Is(err, nats.ErrSlowConsumer) && hooks.OnSlowConsumer != nil {
				hooks.OnSlowConsumer(sub)
			}
		}),
	}
	if creds.User != "" || creds.Password != "" {
		opts = append(opts, nats.UserInfo(creds.User, creds.Password))
	}
	// One attempt first, to tell refused credentials from an unreachable
	// server; only the latter is worth waiting for.
	nc, err := nats.Connect(url, opts...)
	if err == nil {
		return nc, nil
	}
	if isAuthError(err) {
		return nil, fmt.Errorf("connect to NATS %s as user %q: %w (check NATS_USER and NATS_PASSWORD)", url, creds.User, err)
	}
	logger.Warn("NATS not reachable yet; connecting in the background", "url", url, "err", err)
	nc, err = nats.Connect(url, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	return nc, nil
}

// isAuthError reports whether err is a server's refusal of the credentials.
func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}
