package main

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/lib/pq"
)

// catchUp reads from PostgreSQL what a client needs to catch up: the current
// state of products (as SNAPSHOT messages, in the change events' field
// names) and, for deleted ones, their DELETE event from the change log.
type catchUp struct {
	db *sql.DB
}

// catchUpMsg is one message to deliver: an event-shaped JSON with its
// product and version.
type catchUpMsg struct {
	productID, version int64
	data               []byte
}

// catchUpResult is what load found.
type catchUpResult struct {
	messages []catchUpMsg
	notFound []int64 // asked for a snapshot, but the product does not exist
	resync   []int64 // the client had a version, the product is gone and its delete was pruned
}

// load answers a subscribe with snapshot and/or versions: for each product
// that exists and is newer than the client's version (or when a snapshot is
// asked), a SNAPSHOT; for each that is gone and that the client knew, its
// DELETE event while the change log keeps it, else a resync.
func (cu *catchUp) load(ctx context.Context, ids []int64, versions map[int64]int64, snapshot bool) (catchUpResult, error) {
	current, gone, err := cu.current(ctx, ids)
	if err != nil {
		return catchUpResult{}, err
	}
	var res catchUpResult
	for _, id := range ids {
		have, known := versions[id]
		known = known && have > 0
		if m, ok := current[id]; ok {
			if (snapshot || known) && m.version > have {
				res.messages = append(res.messages, m)
			}
			continue
		}
		switch m, ok := gone[id]; {
		case ok && known:
			if m.version > have {
				res.messages = append(res.messages, m)
			}
		case known:
			res.resync = append(res.resync, id)
		default:
			res.notFound = append(res.notFound, id)
		}
	}
	return res, nil
}

// current reads the state of ids: SNAPSHOT messages for those that exist,
// and the last DELETE event of those that do not (when the log has it).
func (cu *catchUp) current(ctx context.Context, ids []int64) (current, gone map[int64]catchUpMsg, err error) {
	current = make(map[int64]catchUpMsg, len(ids))
	gone = make(map[int64]catchUpMsg)
	rows, err := cu.db.QueryContext(ctx,
		`SELECT product_id, version, snapshot_event(p)
		 FROM products p WHERE product_id = ANY($1)`, pq.Array(ids))
	if err != nil {
		return nil, nil, fmt.Errorf("read products: %w", err)
	}
	if err := scanMsgs(rows, current); err != nil {
		return nil, nil, fmt.Errorf("read products: %w", err)
	}
	var missing []int64
	for _, id := range ids {
		if _, ok := current[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return current, gone, nil
	}
	rows, err = cu.db.QueryContext(ctx,
		`SELECT DISTINCT ON (product_id) product_id, version, event::text
		 FROM product_changes WHERE product_id = ANY($1) AND action = 'DELETE'
		 ORDER BY product_id, seq DESC`, pq.Array(missing))
	if err != nil {
		return nil, nil, fmt.Errorf("read deletes: %w", err)
	}
	if err := scanMsgs(rows, gone); err != nil {
		return nil, nil, fmt.Errorf("read deletes: %w", err)
	}
	return current, gone, nil
}

func scanMsgs(rows *sql.Rows, into map[int64]catchUpMsg) error {
	defer rows.Close()
	for rows.Next() {
		var m catchUpMsg
		if err := rows.Scan(&m.productID, &m.version, &m.data); err != nil {
			return err
		}
		into[m.productID] = m
	}
	return rows.Err()
}
