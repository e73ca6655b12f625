// Package change defines the change event that flows from PostgreSQL through
// NATS to the browsers, the names it travels under, and the decoding of the
// notification the trigger sends.
//
// The event is built once, by the trigger notify_event_on_products_update
// (see migrations/), in the API's field names. Programs forward its bytes as
// they are; [Event] exists for tests, tools and the rare reader that needs a
// field.
package change

import (
	"bytes"
	"encoding/json"
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
	return string(AppendSubject(make([]byte, 0, len(SubjectPrefix)+20), productID))
}

// AppendSubject appends the subject of productID to dst, without allocating
// when dst has room.
func AppendSubject(dst []byte, productID int64) []byte {
	dst = append(dst, SubjectPrefix...)
	return strconv.AppendInt(dst, productID, 10)
}

// Action says what happened to the row.
type Action string

// The actions of a change, as the trigger names them (TG_OP).
const (
	Insert Action = "INSERT"
	Update Action = "UPDATE"
	Delete Action = "DELETE"
)

// Event is a change event as published on product.<id>. For a delete,
// Product is the last state and Version is one more than its version.
type Event struct {
	Seq       int64           `json:"seq"`
	Action    Action          `json:"action"`
	ProductID int64           `json:"productId"`
	Version   int64           `json:"version"`
	ChangedAt time.Time       `json:"changedAt"`
	Product   json.RawMessage `json:"product"`
}

// Notification is the payload of a NOTIFY on [Channel]: either the whole
// event, or, when the event is too large for NOTIFY (8000 bytes), only a
// reference {"seq":…,"productId":…,"ref":true} to read from the change log.
type Notification struct {
	Seq       int64 `json:"seq"`
	ProductID int64 `json:"productId"`
	Ref       bool  `json:"ref"`
}

// versionKey is how the trigger writes the event's version: right after
// productId and before the product object, so its first occurrence is the
// top-level one (TestEventVersion holds the trigger to that).
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

// changedAtKey is how the trigger writes the commit-time clock, in UTC with
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
