package main

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lib/pq"
)

// snapshot is the part of a PostgreSQL snapshot the relay reasons with:
// every transaction with an id below xmin has ended. It also carries how
// many backends of the database were waiting for a heavyweight lock on an
// object (in practice: for the lock a notifying transaction takes at
// commit) when the read ran, if the read was asked to count them (-1 if
// not), and, if the read was asked for it, localXmin (0 if not).
//
// xmin is the whole cluster's: a transaction that writes in another
// database holds it back as long as it runs, although it can neither take
// a seq nor read the wake-up flag. localXmin is this database's: every
// transaction with an id below it that held a lock on products or
// product_changes (which every writer of a change does, from before it
// takes its seq and reads the flag until it ends) had ended when the read
// *finished*. Rows such a transaction committed after the read's snapshot
// was taken are not in that read, so localXmin speaks for the reads that
// follow, not for its own (see relay.horizon).
type snapshot struct {
	xmin          uint64
	notifyWaiters int
	localXmin     uint64
}

// gap is a range of seqs that the log did not show although later seqs were
// visible: they belong to transactions still in flight, or to transactions
// that rolled back (sequences do not roll back). bound is a transaction id
// taken right after the read that first saw the gap: the transactions that
// took those seqs had their ids before, so once every transaction below
// bound has ended (a snapshot's xmin reaches it), whatever of the gap is
// still invisible never will be visible.
type gap struct {
	lo, hi int64
	bound  uint64
}

// logReader reads the change log and keeps the bridge's state in the
// database, on a connection of its own (session settings, no pool churn). A
// broken connection is closed and a new one opened on the next call.
type logReader struct {
	db       *sql.DB
	conn     *sql.Conn // nil when closed
	readStmt *sql.Stmt // readQuery, prepared on conn
}

// open takes a connection from the pool, unless one is open. The session
// commits asynchronously: it only writes the cursor, and a cursor lost in a
// database crash only means checking a few changes against the stream again.
func (lr *logReader) open(ctx context.Context) error {
	if lr.conn != nil {
		return nil
	}
	conn, err := lr.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("change log connection: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `SET synchronous_commit = off`); err != nil {
		conn.Close()
		return fmt.Errorf("change log connection: %w", err)
	}
	stmt, err := conn.PrepareContext(ctx, readQuery)
	if err != nil {
		conn.Close()
		return fmt.Errorf("prepare the change log read: %w", err)
	}
	lr.conn, lr.readStmt = conn, stmt
	return nil
}

// close discards the connection.
func (lr *logReader) close() {
	if lr.conn != nil {
		lr.readStmt.Close()
		// Never back to the pool: it may be broken, and its session commits
		// asynchronously, which no other user of the pool should inherit.
		_ = lr.conn.Raw(func(any) error { return driver.ErrBadConn })
		lr.conn.Close()
		lr.conn = nil
	}
}

// readQuery reads, in ONE statement and so in one snapshot, that
// snapshot's xmin (the row whose seq is NULL), the visible changes inside
// the gaps ($3, $4: their bounds), and up to $2 changes above $1. One
// statement is one round trip: the relay's latency is mostly round trips
// (BENCHMARKS.md). pg_current_snapshot() is the statement's own snapshot.
// The branches' order is not guaranteed; read sorts.
//
// When $5 is true, the snapshot row also counts the backends of this
// database waiting for a lock of type "object": a transaction that has
// called pg_notify takes such a lock (on database 0) at commit and holds it
// until its commit is flushed, so writers queueing on it are writers that
// NOTIFY slows down. (The count sees only the backends whose wait events
// the bridge's role may read: its own role's, or all with
// pg_read_all_stats.) An uncorrelated subquery in a CASE is evaluated only
// when its branch is taken, so a false $5 costs nothing.
//
// When $6 is true, the snapshot row's text also carries, after a space,
// the snapshot's xmax and the transaction ids (32-bit, as pg_locks shows
// them) of the transactions that hold or wait for a lock on products or
// product_changes in this database, from one reading of pg_locks (which
// every role may read; a materialised CTE, so that both kinds of lock come
// from the same reading): parseSnapshot makes localXmin of them.
const readQuery = `
SELECT NULL::bigint,
       CASE WHEN $5 THEN (SELECT count(*) FROM pg_stat_get_activity(NULL) a
                           WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
                             AND a.wait_event_type = 'Lock' AND a.wait_event = 'object') END,
       NULL::timestamptz,
       pg_snapshot_xmin(pg_current_snapshot())::text || CASE WHEN $6 THEN ' ' || (
           WITH locks AS MATERIALIZED (
                    SELECT locktype, database, relation, virtualtransaction, transactionid, mode, granted FROM pg_locks),
                writers AS (
                    SELECT DISTINCT virtualtransaction FROM locks
                     WHERE locktype = 'relation'
                       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND relation IN (to_regclass('products'), to_regclass('product_changes')))
           SELECT pg_snapshot_xmax(pg_current_snapshot())::text || ' ' || coalesce(string_agg(l.transactionid::text, ','), '')
             FROM locks l JOIN writers w USING (virtualtransaction)
            WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted) ELSE '' END
UNION ALL
SELECT c.seq, c.product_id, c.changed_at, c.event::text
  FROM product_changes c JOIN unnest($3::bigint[], $4::bigint[]) AS g(lo, hi) ON c.seq BETWEEN g.lo AND g.hi
UNION ALL
SELECT * FROM (SELECT seq, product_id, changed_at, event::text FROM product_changes
                WHERE seq > $1 ORDER BY seq LIMIT $2) AS above`

// read returns, in one snapshot: the snapshot, the visible changes in the
// gaps (all of them), and up to limit visible changes above high, each in
// seq order. countWaiters asks for snapshot.notifyWaiters, local for
// snapshot.localXmin.
func (lr *logReader) read(ctx context.Context, high int64, gaps []gap, limit int, countWaiters, local bool) (snap snapshot, gapRows, rows []changeRow, err error) {
	los, his := make([]int64, len(gaps)), make([]int64, len(gaps))
	for i, g := range gaps {
		los[i], his[i] = g.lo, g.hi
	}
	rs, err := lr.readStmt.QueryContext(ctx, high, limit, pq.Array(los), pq.Array(his), countWaiters, local)
	if err != nil {
		return snapshot{}, nil, nil, fmt.Errorf("read change log after %d: %w", high, err)
	}
	defer rs.Close()
	gotSnapshot := false
	for rs.Next() {
		var seq, productID sql.NullInt64
		var changedAt sql.NullTime
		var text []byte
		if err := rs.Scan(&seq, &productID, &changedAt, &text); err != nil {
			return snapshot{}, nil, nil, fmt.Errorf("read change log: %w", err)
		}
		if !seq.Valid {
			if snap, err = parseSnapshot(text); err != nil {
				return snapshot{}, nil, nil, err
			}
			snap.notifyWaiters = -1
			if productID.Valid {
				snap.notifyWaiters = int(productID.Int64)
			}
			gotSnapshot = true
			continue
		}
		r := changeRow{seq: seq.Int64, productID: productID.Int64, changedAt: changedAt.Time, event: text}
		if r.seq > high {
			rows = append(rows, r)
		} else {
			gapRows = append(gapRows, r)
		}
	}
	if err := rs.Err(); err != nil {
		return snapshot{}, nil, nil, fmt.Errorf("read change log: %w", err)
	}
	if !gotSnapshot {
		return snapshot{}, nil, nil, fmt.Errorf("read change log: no snapshot row")
	}
	bySeq := func(a, b changeRow) int { return cmp.Compare(a.seq, b.seq) }
	slices.SortFunc(gapRows, bySeq)
	slices.SortFunc(rows, bySeq)
	return snap, gapRows, rows, nil
}

// parseSnapshot parses the snapshot row's text: xmin, and when asked for,
// xmax and the 32-bit ids of this database's writers, of which it makes
// localXmin: the oldest of them, or xmax when there are none (every
// transaction below xmax that is not running has ended). Each 32-bit id is
// widened to 64 bits next to xmax, which every running transaction's id is
// within 2^31 of (PostgreSQL's wraparound limit).
func parseSnapshot(text []byte) (snapshot, error) {
	var snap snapshot
	fields := strings.Split(string(text), " ")
	if len(fields) != 1 && len(fields) != 3 {
		return snapshot{}, fmt.Errorf("snapshot row %q: want xmin, or xmin, xmax and writers", text)
	}
	var err error
	if snap.xmin, err = strconv.ParseUint(fields[0], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot xmin %q: %w", text, err)
	}
	if len(fields) == 1 {
		return snap, nil
	}
	xmax, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		return snapshot{}, fmt.Errorf("snapshot xmax %q: %w", text, err)
	}
	snap.localXmin = xmax
	if fields[2] == "" {
		return snap, nil
	}
	for _, f := range strings.Split(fields[2], ",") {
		xid, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return snapshot{}, fmt.Errorf("writer's transaction id %q: %w", f, err)
		}
		snap.localXmin = min(snap.localXmin, widenXid(uint32(xid), xmax))
	}
	return snap, nil
}

// widenXid returns the 64-bit transaction id whose low 32 bits are xid and
// which is nearest to ref.
func widenXid(xid uint32, ref uint64) uint64 {
	behind := uint32(ref) - xid // how far xid is behind ref, modulo 2^32
	if behind < 1<<31 {
		if uint64(behind) > ref {
			return 0 // before the first transaction id: cannot be; the oldest there is
		}
		return ref - uint64(behind)
	}
	return ref + uint64(-behind)
}

// loadCursor reads the persisted cursor and published high.
func (lr *logReader) loadCursor(ctx context.Context) (cursor, publishedHigh int64, err error) {
	err = lr.conn.QueryRowContext(ctx, `SELECT cursor_seq, published_high FROM bridge_cursor WHERE id = 1`).Scan(&cursor, &publishedHigh)
	if err != nil {
		return 0, 0, fmt.Errorf("load bridge cursor: %w", err)
	}
	return cursor, publishedHigh, nil
}

// saveCursor persists the cursor (asynchronously committed, see open).
func (lr *logReader) saveCursor(ctx context.Context, cursor, publishedHigh int64) error {
	_, err := lr.conn.ExecContext(ctx,
		`UPDATE bridge_cursor SET cursor_seq = $1, published_high = greatest(published_high, $2), updated_at = now() WHERE id = 1`,
		cursor, publishedHigh)
	if err != nil {
		return fmt.Errorf("save bridge cursor %d: %w", cursor, err)
	}
	return nil
}

// setWakeup asks writers to NOTIFY (true) or not (false). The flag is a
// sequence, changed with setval, which takes effect at once and for every
// transaction (see migrations/00002_bridge.sql).
func (lr *logReader) setWakeup(ctx context.Context, wanted bool) (uint64, error) {
	value := 1
	if wanted {
		value = 2
	}
	if _, err := lr.conn.ExecContext(ctx, `SELECT setval('product_change_wakeup', $1)`, value); err != nil {
		return 0, fmt.Errorf("set wake-up flag: %w", err)
	}
	// Every writer that may have read the old value had its transaction id
	// before the switch, so below an id taken now.
	return lr.nextXid(ctx)
}

// nextXid returns a transaction id taken now, in a transaction of its own:
// every transaction that got its id before this call has a smaller one.
// (A snapshot's xmax does not give that bound: it is one past the latest
// *completed* transaction, and a running transaction with a later id is in
// neither its xip list nor below it.)
func (lr *logReader) nextXid(ctx context.Context) (uint64, error) {
	var xid string
	if err := lr.conn.QueryRowContext(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return 0, fmt.Errorf("take a transaction id: %w", err)
	}
	n, err := strconv.ParseUint(xid, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("transaction id %q: %w", xid, err)
	}
	return n, nil
}
