package main

// verifyStream: the stream PRODUCTS checked against the change log, the
// bridge's whole contract in one comparison.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/productwatch/productwatch/pkg/broker"
	"github.com/productwatch/productwatch/pkg/change"
	"github.com/productwatch/productwatch/pkg/testenv"
)

// streamMsg is one message of PRODUCTS.
type streamMsg struct {
	streamSeq uint64
	subject   string
	msgID     string // the Nats-Msg-Id header
	data      []byte
}

// loggedChange is one row of product_changes.
type loggedChange struct {
	seq, productID, version int64
	event                   string // event::text, the bytes to publish
}

// verifyTimeout bounds reading the stream and the change log.
const verifyTimeout = 2 * time.Minute

// verifyStream reads every message of PRODUCTS and every row of
// product_changes and fails the test, with the differences, unless
//   - the Nats-Msg-Id headers are exactly the change log's seqs, each once;
//   - each message's data is its change's event::text, byte for byte;
//   - each message's subject is product.<the change's product id>;
//   - per subject, the versions in the data strictly increase in stream order.
func verifyStream(t testing.TB, natsURL string, db *sql.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), verifyTimeout)
	defer cancel()
	nc, err := nats.Connect(natsURL, nats.Name("productwatch-bridge-verify"))
	if err != nil {
		t.Fatalf("verify: connect to %s: %v", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := readStream(ctx, js)
	if err != nil {
		t.Fatalf("verify: read stream: %v", err)
	}
	changes, err := readChanges(ctx, db)
	if err != nil {
		t.Fatalf("verify: read change log: %v", err)
	}
	if report := diffStream(msgs, changes); report != "" {
		t.Errorf("stream %s does not match the change log (%d messages, %d changes):\n%s",
			broker.StreamName, len(msgs), len(changes), report)
		return
	}
	t.Logf("verified: %d messages in %s are the %d changes of the log, once each, in version order per product",
		len(msgs), broker.StreamName, len(changes))
}

// fetchBatch is how many messages readStream asks for at a time.
const fetchBatch = 1000

// readStream returns every message of PRODUCTS up to its last sequence at
// the time of the call, in stream order; none if the stream does not exist.
func readStream(ctx context.Context, js jetstream.JetStream) ([]streamMsg, error) {
	stream, err := js.Stream(ctx, broker.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, broker.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer: %w", err)
	}
	msgs := make([]streamMsg, 0, info.State.Msgs)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read %d of %d messages: %w", len(msgs), info.State.Msgs, err)
		}
		batch, err := cons.Fetch(fetchBatch, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("metadata: %w", err)
			}
			msgs = append(msgs, streamMsg{
				streamSeq: meta.Sequence.Stream,
				subject:   m.Subject(),
				msgID:     m.Headers().Get(jetstream.MsgIDHeader),
				data:      m.Data(),
			})
			if meta.Sequence.Stream >= last {
				return msgs, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("fetch: %w", err)
		}
	}
}

// readChanges returns every row of product_changes by seq.
func readChanges(ctx context.Context, db *sql.DB) (map[int64]loggedChange, error) {
	rows, err := db.QueryContext(ctx, `SELECT seq, product_id, version, event::text FROM product_changes`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	changes := make(map[int64]loggedChange)
	for rows.Next() {
		var c loggedChange
		if err := rows.Scan(&c.seq, &c.productID, &c.version, &c.event); err != nil {
			return nil, err
		}
		changes[c.seq] = c
	}
	return changes, rows.Err()
}

// examples is how many cases of each kind of difference a report lists.
const examples = 20

// diffStream compares the stream with the change log and describes every
// kind of difference, or returns "" when they agree.
func diffStream(msgs []streamMsg, changes map[int64]loggedChange) string {
	var (
		seen       = make(map[int64][]uint64, len(msgs)) // seq -> stream sequences
		badID      []string
		unknown    []string
		badData    []string
		badSubject []string
		outOfOrder []string
		lastOf     = make(map[string]struct { // subject -> last version seen
			version   int64
			seq       int64
			streamSeq uint64
		})
	)
	for _, m := range msgs {
		seq, err := strconv.ParseInt(m.msgID, 10, 64)
		if err != nil || seq <= 0 {
			badID = append(badID, fmt.Sprintf("stream seq %d (%s): Nats-Msg-Id %q is not a change seq", m.streamSeq, m.subject, m.msgID))
		} else {
			seen[seq] = append(seen[seq], m.streamSeq)
			if c, ok := changes[seq]; !ok {
				unknown = append(unknown, fmt.Sprintf("stream seq %d: seq %d (%s) is not in product_changes", m.streamSeq, seq, m.subject))
			} else {
				if string(m.data) != c.event {
					badData = append(badData, fmt.Sprintf("seq %d (stream seq %d): data differs from event::text: %s",
						seq, m.streamSeq, describeDiff(m.data, c.event)))
				}
				if want := change.Subject(c.productID); m.subject != want {
					badSubject = append(badSubject, fmt.Sprintf("seq %d (stream seq %d): subject %s, want %s", seq, m.streamSeq, m.subject, want))
				}
			}
		}
		var ev struct {
			Seq       int64 `json:"seq"`
			ProductID int64 `json:"productId"`
			Version   int64 `json:"version"`
		}
		if err := json.Unmarshal(m.data, &ev); err != nil {
			badData = append(badData, fmt.Sprintf("stream seq %d (%s): data is not a change event: %v", m.streamSeq, m.subject, err))
			continue
		}
		if want := change.Subject(ev.ProductID); m.subject != want {
			badSubject = append(badSubject, fmt.Sprintf("stream seq %d: event of product %d on subject %s", m.streamSeq, ev.ProductID, m.subject))
		}
		if prev, ok := lastOf[m.subject]; ok && ev.Version <= prev.version {
			outOfOrder = append(outOfOrder, fmt.Sprintf("%s: version %d (seq %d, stream seq %d) after version %d (seq %d, stream seq %d)",
				m.subject, ev.Version, ev.Seq, m.streamSeq, prev.version, prev.seq, prev.streamSeq))
		}
		lastOf[m.subject] = struct {
			version   int64
			seq       int64
			streamSeq uint64
		}{ev.Version, ev.Seq, m.streamSeq}
	}

	var missing []int64
	for seq := range changes {
		if len(seen[seq]) == 0 {
			missing = append(missing, seq)
		}
	}
	slices.Sort(missing)
	var duplicates []string
	dupSeqs := make([]int64, 0)
	for seq, at := range seen {
		if len(at) > 1 {
			dupSeqs = append(dupSeqs, seq)
		}
	}
	slices.Sort(dupSeqs)
	for _, seq := range dupSeqs {
		duplicates = append(duplicates, fmt.Sprintf("seq %d %d times, at stream seqs %v", seq, len(seen[seq]), seen[seq]))
	}

	var b strings.Builder
	if len(missing) > 0 {
		fmt.Fprintf(&b, "  missing: %d committed changes never published: seqs %s\n", len(missing), seqRanges(missing, 3*examples))
	}
	section(&b, "duplicated", duplicates)
	section(&b, "not in the change log", unknown)
	section(&b, "bad Nats-Msg-Id", badID)
	section(&b, "data differs", badData)
	section(&b, "wrong subject", badSubject)
	section(&b, "out of version order", outOfOrder)
	return b.String()
}

// section writes a kind of difference with up to examples cases.
func section(b *strings.Builder, kind string, cases []string) {
	if len(cases) == 0 {
		return
	}
	fmt.Fprintf(b, "  %s: %d\n", kind, len(cases))
	for i, c := range cases {
		if i == examples {
			fmt.Fprintf(b, "    … and %d more\n", len(cases)-examples)
			break
		}
		fmt.Fprintf(b, "    %s\n", c)
	}
}

// seqRanges formats sorted seqs as ranges ("3-7, 9"), at most limit of them.
func seqRanges(seqs []int64, limit int) string {
	var parts []string
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if len(parts) == limit {
			parts = append(parts, fmt.Sprintf("… (%d more seqs)", len(seqs)-i))
			break
		}
		if i == j {
			parts = append(parts, strconv.FormatInt(seqs[i], 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", seqs[i], seqs[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// describeDiff says where got first differs from want.
func describeDiff(got []byte, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	excerpt := func(s string) string {
		end := min(len(s), i+40)
		return strconv.Quote(s[i:end])
	}
	return fmt.Sprintf("%d bytes against %d, first difference at byte %d: %s, want %s",
		len(got), len(want), i, excerpt(string(got)), excerpt(want))
}

// TestDiffStream shows that the check finds each kind of difference: a
// verification that cannot fail proves nothing.
func TestDiffStream(t *testing.T) {
	t.Parallel()
	ev := func(seq, id, version int64) string {
		return fmt.Sprintf(`{"seq":%d,"action":"UPDATE","productId":%d,"version":%d,"product":{}}`, seq, id, version)
	}
	log := map[int64]loggedChange{
		1: {1, 7, 1, ev(1, 7, 1)},
		2: {2, 7, 2, ev(2, 7, 2)},
		3: {3, 8, 1, ev(3, 8, 1)},
	}
	msg := func(streamSeq uint64, seq int64) streamMsg {
		c := log[seq]
		return streamMsg{streamSeq, change.Subject(c.productID), strconv.FormatInt(seq, 10), []byte(c.event)}
	}
	good := []streamMsg{msg(1, 1), msg(2, 3), msg(3, 2)}
	tests := []struct {
		name string
		msgs []streamMsg
		want string // in the report; "" for no report
	}{
		{"every change once, in order", good, ""},
		{"missing", []streamMsg{msg(1, 1), msg(2, 3)}, "missing: 1 committed changes never published: seqs 2"},
		{"duplicate", append(slices.Clone(good), msg(4, 3)), "seq 3 2 times, at stream seqs [2 4]"},
		{"out of order", []streamMsg{msg(1, 2), msg(2, 1), msg(3, 3)}, "product.7: version 1 (seq 1, stream seq 2) after version 2"},
		{"data altered", []streamMsg{msg(1, 1), {2, "product.8", "3", []byte(ev(3, 8, 1) + " ")}, msg(3, 2)}, "data differs"},
		{"wrong subject", []streamMsg{msg(1, 1), {2, "product.9", "3", []byte(ev(3, 8, 1))}, msg(3, 2)}, "seq 3 (stream seq 2): subject product.9, want product.8"},
		{"no Nats-Msg-Id", []streamMsg{msg(1, 1), {2, "product.8", "", []byte(ev(3, 8, 1))}, msg(3, 2)}, `Nats-Msg-Id "" is not a change seq`},
		{"unknown seq", append(slices.Clone(good), streamMsg{4, "product.8", "99", []byte(ev(99, 8, 2))}), "seq 99 (product.8) is not in product_changes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := diffStream(tt.msgs, log)
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Errorf("diffStream = %q, want it to contain %q", got, tt.want)
			}
		})
	}
	if got := seqRanges([]int64{1, 2, 3, 5, 7, 8}, 10); got != "1-3, 5, 7-8" {
		t.Errorf("seqRanges = %q", got)
	}
}

// TestVerifyStreamEmpty runs the real check, without a bridge, on an empty
// change log and a stream that does not exist, then on one committed change
// that nothing published: the first must pass, the second is a difference.
func TestVerifyStreamEmpty(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ns := natsForBridge(t)
	verifyStream(t, ns.URL, pg.DB)

	testenv.SeedProducts(t, pg.DB, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, js := connectJS(t, ns.URL)
	msgs, err := readStream(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := readChanges(ctx, pg.DB)
	if err != nil {
		t.Fatal(err)
	}
	if got := diffStream(msgs, changes); !strings.Contains(got, "missing: 1 committed changes never published: seqs 1") {
		t.Errorf("an unpublished change was not reported: %q", got)
	}
}
