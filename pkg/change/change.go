// Package change defines the change event that flows from PostgreSQL through
// NATS to the browsers, the names it travels under, and the decoding of the
// notification the trigger sends.
//
// The event is built once, in the API's field names, by the SQL function
// change_event that the trigger calls (the SNAPSHOT message by
// snapshot_event, the NOTIFY payload by change_notice; see
// migrations/00003_event_functions.sql). Programs forward its bytes as they
// are and read the few fields they need with [EventVersion] and [ChangedAt].
package change

import (
	"bytes"
	"strconv"
	"time"
)

// Channel is the PostgreSQL NOTIFY channel the trigger wakes the bridge on.
const Channel = "product_change"

// SubjectPrefix starts every product subject; the JetStream stream PRODUCTS
// captures SubjectPrefix + "*".
const SubjectPrefix = "product."

// Subject returns the NATS subject of a product's changes, "product.<id>".
func Subject(productID int64) string {
	b := append(make([]byte, 0, len(SubjectPrefix)+20), SubjectPrefix...)
	return string(strconv.AppendInt(b, productID, 10))
}

// ProductID returns the product id of a subject as [Subject] writes it,
// "product.<id>". ok is false for any other subject: wildcards, signs,
// leading zeros, ids out of range. It does not allocate: the hub calls it
// for every message.
func ProductID(subject string) (id int64, ok bool) {
	if len(subject) <= len(SubjectPrefix) || subject[:len(SubjectPrefix)] != SubjectPrefix ||
		subject[len(SubjectPrefix)] < '1' || subject[len(SubjectPrefix)] > '9' {
		return 0, false
	}
	id, err := strconv.ParseInt(subject[len(SubjectPrefix):], 10, 64)
	if err != nil {
		return 0, false
	}
	return id, true
}

// Action says what happened to the row.
type Action string

// The actions of a change, as the trigger names them (TG_OP).
const (
	Insert Action = "INSERT"
	Update Action = "UPDATE"
	Delete Action = "DELETE"
)

// versionKey is how change_event and snapshot_event write the version:
// right after productId and before the product object, so its first
// occurrence is the top-level one (TestSQLShapes holds the SQL to that).
var versionKey = []byte(`,"version":`)

// EventVersion returns the version of an event or snapshot as the database
// encodes it, without decoding the JSON: gateways read it for every delivery
// to keep each client's versions increasing. ok is false when the bytes
// carry no version.
func EventVersion(event []byte) (version int64, ok bool) {
	i := bytes.Index(event, versionKey)
	if i < 0 {
		return 0, false
	}
	digits := event[i+len(versionKey):]
	n := 0
	for n < len(digits) && n < 19 && digits[n] >= '0' && digits[n] <= '9' {
		version = version*10 + int64(digits[n]-'0')
		n++
	}
	return version, n > 0 && (n == len(digits) || digits[n] < '0' || digits[n] > '9')
}

// changedAtKey is how change_event writes the commit-time clock, in UTC with
// microseconds: "changedAt":"2026-11-25T01:02:03.456789Z".
var changedAtKey = []byte(`"changedAt":"`)

// ChangedAt returns the changedAt of an event without decoding the JSON or
// allocating: gateways read it on every socket write for the delivery
// latency metric. ok is false when the event has none (snapshots) or it is
// not in the trigger's fixed layout.
func ChangedAt(event []byte) (at time.Time, ok bool) {
	i := bytes.Index(event, changedAtKey)
	if i < 0 {
		return time.Time{}, false
	}
	b := event[i+len(changedAtKey):]
	const layout = "2006-01-02T15:04:05.000000Z"
	if len(b) < len(layout) || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' || b[19] != '.' || b[26] != 'Z' {
		return time.Time{}, false
	}
	num := func(from, to int) (int, bool) {
		n := 0
		for _, c := range b[from:to] {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	var parts [7]int
	for k, r := range [7][2]int{{0, 4}, {5, 7}, {8, 10}, {11, 13}, {14, 16}, {17, 19}, {20, 26}} {
		n, good := num(r[0], r[1])
		if !good {
			return time.Time{}, false
		}
		parts[k] = n
	}
	return time.Date(parts[0], time.Month(parts[1]), parts[2], parts[3], parts[4], parts[5], parts[6]*1000, time.UTC), true
}
