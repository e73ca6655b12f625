package main

import (
	"context"
	"net/http"
	"net/url"
	"sync"

	"github.com/coder/websocket"
)

// Batched framing (opt-in, /websocket?batch=1): when several events wait
// for a connection, its writer sends them as one text message, a JSON array
// of the events' bytes as they came ("[" ev1 "," ev2 "]", nothing
// re-encoded), instead of one message each. A lone event goes as it is, a
// plain object, at once: nothing waits for company, so a batching client
// reads an array or an object. Answers (ack, error) are always messages of
// their own; events queued before an answer are sent before it. An array
// holds at most maxBatchMessages events and about maxBatchBytes bytes (it
// is closed once past that). Without the parameter nothing changes: one
// event per message, as the seed did.

// batchParam reads the batch query parameter of a /websocket request:
// absent, "0" or "false" is off; "1" or "true" is on; anything else is an
// error for the client.
func batchParam(query url.Values) (on bool, refusal *apiError) {
	if !query.Has("batch") {
		return false, nil
	}
	switch query.Get("batch") {
	case "0", "false":
		return false, nil
	case "1", "true", "":
		return true, nil
	}
	return false, &apiError{Status: http.StatusBadRequest, Code: codeInvalidParameter, Field: "batch",
		Message: `batch must be 1 (events batched into JSON arrays) or 0 (one event per message)`}
}

// eventArray collects the events of a batching connection's batch into one
// JSON array. Its buffer comes from the writers' pool for the batch and
// goes back after it, so a delivery allocates nothing and an idle
// connection holds no buffer. Owned by the writer goroutine.
type eventArray struct {
	pool   *sync.Pool // of *[]byte, shared with the corks
	buf    *[]byte    // "[" ev1 "," ev2 … while events > 0
	events int
}

// add appends an event.
func (a *eventArray) add(event []byte) {
	if a.buf == nil {
		a.buf = a.pool.Get().(*[]byte)
	}
	sep := byte(',')
	if a.events == 0 {
		*a.buf = (*a.buf)[:0]
		sep = '['
	}
	*a.buf = append(append(*a.buf, sep), event...)
	a.events++
}

// size is how many bytes the array holds so far.
func (a *eventArray) size() int {
	if a.events == 0 {
		return 0
	}
	return len(*a.buf)
}

// write sends what the array holds as one message — a lone event as it is,
// several as the array — into the connection's cork, and empties it.
func (a *eventArray) write(ws *websocket.Conn) error {
	if a.events == 0 {
		return nil
	}
	msg := *a.buf
	if a.events == 1 {
		msg = msg[1:] // the event itself, without the "["
	} else {
		*a.buf = append(*a.buf, ']')
		msg = *a.buf
	}
	a.events = 0
	// As in writeQueued: the frame only goes into the cork's buffer (it
	// copies), so the array's buffer can be reused at once.
	return ws.Write(context.Background(), websocket.MessageText, msg)
}

// release gives the buffer back to the pool (unless it grew too large to
// keep).
func (a *eventArray) release() {
	if a.buf == nil {
		return
	}
	if cap(*a.buf) <= poolBufferLimit {
		*a.buf = (*a.buf)[:0]
		a.pool.Put(a.buf)
	}
	a.buf, a.events = nil, 0
}
