package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/productwatch/productwatch/pkg/change"
)

// changeRow is one row of the change log, as the bridge forwards it.
type changeRow struct {
	seq       int64
	productID int64
	changedAt time.Time
	event     []byte // the event JSON exactly as the trigger built it
}

// asyncPublisher is the part of JetStream the publisher uses.
type asyncPublisher interface {
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// lastBySubject reads the newest message of a subject (direct get).
type lastBySubject interface {
	GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
}

// publisher sends change rows to JetStream: asynchronously, at most
// maxInFlight unacknowledged, and per product strictly one at a time, so a
// product's changes reach the stream in version order even when a publish
// fails and is retried. It is used by one goroutine at a time.
type publisher struct {
	js          asyncPublisher
	stream      lastBySubject
	maxInFlight int
	logger      *slog.Logger
	metrics     *bridgeMetrics
	stalls      *stallWatch // nil: not watched

	// reused between waves; owned by the publishing goroutine
	inWave  map[int64]bool
	blocked map[int64]bool
}

func newPublisher(js asyncPublisher, stream lastBySubject, maxInFlight int, logger *slog.Logger, metrics *bridgeMetrics, stalls *stallWatch) *publisher {
	return &publisher{js: js, stream: stream, maxInFlight: maxInFlight, logger: logger, metrics: metrics, stalls: stalls,
		inWave: make(map[int64]bool), blocked: make(map[int64]bool)}
}

// publish sends rows, which are in seq order, and returns once JetStream has
// acknowledged every one of them, retrying with backoff until then. It only
// fails when ctx ends. When verify reports true for a row's seq, the stream
// is asked first whether the row is already there (it may have been
// published before a crash or a lost acknowledgement, longer ago than the
// duplicate window), and the row is skipped if it is.
func (p *publisher) publish(ctx context.Context, rows []changeRow, verify func(seq int64) bool) error {
	pending := rows
	for len(pending) > 0 {
		wave, rest := p.nextWave(pending)
		if err := p.sendWave(ctx, wave, verify); err != nil {
			return err
		}
		pending = rest
	}
	return nil
}

// nextWave takes from rows, in order, at most maxInFlight rows of distinct
// products; a row whose product already has one in the wave waits for the
// next wave, and so does every later row of that product.
func (p *publisher) nextWave(rows []changeRow) (wave, rest []changeRow) {
	clear(p.inWave)
	clear(p.blocked)
	for i, r := range rows {
		if len(wave) == p.maxInFlight {
			return wave, append(rest, rows[i:]...)
		}
		if p.inWave[r.productID] || p.blocked[r.productID] {
			p.blocked[r.productID] = true
			rest = append(rest, r)
			continue
		}
		p.inWave[r.productID] = true
		wave = append(wave, r)
	}
	return wave, rest
}

// sendWave publishes rows (one per product) and waits for every
// acknowledgement, republishing the failed ones (after asking the stream
// whether they arrived after all) until none is left.
func (p *publisher) sendWave(ctx context.Context, rows []changeRow, verify func(seq int64) bool) error {
	backoff := 50 * time.Millisecond
	defer p.stalls.done()
	for attempt := 0; len(rows) > 0; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
		}
		kept, err := p.skipPublished(ctx, rows, attempt > 0, verify)
		if err != nil {
			// Keep rows as they are: every one of them is still unpublished.
			p.logger.Warn("checking the stream before republishing failed; retrying", "err", err)
			p.stalls.failed(err)
			continue
		}
		rows = kept
		futures := make([]jetstream.PubAckFuture, len(rows))
		failed := rows[:0:0]
		for i, r := range rows {
			futures[i], err = p.js.PublishMsgAsync(newMsg(r))
			if err != nil {
				failed = append(failed, rows[i:]...)
				futures = futures[:i]
				break
			}
		}
		for i, f := range futures {
			select {
			case ack := <-f.Ok():
				p.metrics.published(rows[i], ack.Duplicate)
			case err = <-f.Err():
				failed = append(failed, rows[i])
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if len(failed) > 0 {
			p.metrics.publishFailures.Add(float64(len(failed)))
			p.logger.Warn("JetStream publish failed; retrying", "failed", len(failed), "first_seq", failed[0].seq, "err", err, "retry_in", backoff)
			p.stalls.failed(fmt.Errorf("publishing %d changes from seq %d: %w", len(failed), failed[0].seq, err))
		}
		rows = failed
	}
	return nil
}

// skipPublished drops the rows the stream already holds, when always is set
// or verify asks for the row's seq. The rows of a wave are of distinct
// products, so their checks are independent: they run concurrently (up to
// 32 at a time), which keeps a restarted bridge's first batches (thousands
// of checks) from taking a round trip each in turn.
func (p *publisher) skipPublished(ctx context.Context, rows []changeRow, always bool, verify func(seq int64) bool) ([]changeRow, error) {
	check := make([]bool, len(rows))
	there := make([]bool, len(rows))
	group, gctx := errgroup.WithContext(ctx)
	group.SetLimit(32)
	for i, r := range rows {
		if !always && (verify == nil || !verify(r.seq)) {
			continue
		}
		check[i] = true
		group.Go(func() error {
			in, err := p.inStream(gctx, r)
			there[i] = in
			return err
		})
	}
	if err := group.Wait(); err != nil {
		return nil, err
	}
	kept := rows[:0:0]
	for i, r := range rows {
		if check[i] && there[i] {
			p.metrics.skippedPublished.Inc()
			continue
		}
		kept = append(kept, r)
	}
	return kept, nil
}

// inStream reports whether the stream already holds r: the newest message of
// r's subject carries a seq of r's or later (a product's changes are
// published in order, so an older one is there if a newer one is).
//
// The newest message may not be the bridge's: something published on the
// subject before NATS was locked down, or a publisher given the bridge's
// permissions by mistake (no seq in Nats-Msg-Id, a body that is no change,
// or one that is not the change its Nats-Msg-Id names). Such a message is
// logged and counted (productwatch_bridge_foreign_messages_total), and r
// counts as not there: it is published again, which at worst stores a
// change twice (readers drop a version they have) and puts the product's
// true state back on top of the subject. Guessing "there" instead could lose
// the change, and failing would stall every product in the wave.
func (p *publisher) inStream(ctx context.Context, r changeRow) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	subject := change.Subject(r.productID)
	msg, err := p.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("last message of %s: %w", subject, err)
	}
	seq, why := publishedSeq(msg, r)
	if why != "" {
		p.metrics.foreignMessages.Inc()
		p.logger.Warn("the stream's last message on a product subject was not published by the bridge; publishing the change over it",
			"subject", subject, "stream_seq", msg.Sequence, "msg_id", msg.Header.Get(jetstream.MsgIDHeader),
			"why", why, "change_seq", r.seq)
		return false, nil
	}
	return seq >= r.seq, nil
}

// publishedSeq returns the change seq of msg, the newest message on the
// subject of r's product, if the bridge published it: its Nats-Msg-Id is a
// seq and its body the change event of that seq and product (byte for byte
// r's event when the seq is r's). Otherwise why says what is wrong with it.
//
// A message crafted to pass (a plausible event under a plausible seq) is
// beyond this check: that takes the bridge's own publish permission, which
// is what NATS's lock-down is for.
func publishedSeq(msg *jetstream.RawStreamMsg, r changeRow) (seq int64, why string) {
	id := msg.Header.Get(jetstream.MsgIDHeader)
	seq, err := strconv.ParseInt(id, 10, 64)
	if err != nil || seq < 1 {
		return 0, "no change seq in " + jetstream.MsgIDHeader
	}
	var ev struct {
		Seq       *int64 `json:"seq"`
		ProductID *int64 `json:"productId"`
	}
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Seq == nil || ev.ProductID == nil {
		return 0, "the body is not a change event"
	}
	if *ev.Seq != seq || *ev.ProductID != r.productID {
		return 0, fmt.Sprintf("the body is change %d of product %d, not what %s and the subject say", *ev.Seq, *ev.ProductID, jetstream.MsgIDHeader)
	}
	if seq == r.seq && !bytes.Equal(msg.Data, r.event) {
		return 0, fmt.Sprintf("the body differs from change %d", seq)
	}
	return seq, ""
}

// newMsg builds the JetStream message of a change: its subject, the event
// bytes as they are, and the seq as Nats-Msg-Id for deduplication.
func newMsg(r changeRow) *nats.Msg {
	return &nats.Msg{
		Subject: change.Subject(r.productID),
		Data:    r.event,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{strconv.FormatInt(r.seq, 10)}},
	}
}
