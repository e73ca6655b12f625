// Package protocol is the WebSocket protocol between browsers and gateways:
// decoding the commands clients send, with their limits, and encoding the
// acknowledgements and errors the gateway answers (api/asyncapi.yaml is the
// contract). Change events are not encoded here: gateways forward the bytes
// the bridge published.
package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"
)

// The commands a client may send.
const (
	Subscribe   = "subscribe"
	Unsubscribe = "unsubscribe"
)

// Error codes of the protocol, in {"type":"error","code":…}.
const (
	CodeInvalidJSON          = "invalid_json"           // not a JSON object
	CodeInvalidCommand       = "invalid_command"        // a field is missing, unknown or of the wrong type
	CodeUnknownCommand       = "unknown_command"        // "command" is not subscribe or unsubscribe
	CodeInvalidProductID     = "invalid_product_id"     // not an integer from 1 to 2^63-1
	CodeTooManyIDs           = "too_many_ids"           // more ids in one command than allowed
	CodeTooManySubscriptions = "too_many_subscriptions" // the connection would watch more than allowed
	CodeRateLimited          = "rate_limited"           // commands come faster than allowed
	CodeBinaryFrame          = "binary_frame"           // binary frames are not part of the protocol
	CodeNotFound             = "not_found"              // a snapshot was asked of a product that does not exist
	CodeResync               = "resync"                 // history was pruned: reload these products
	CodeUnavailable          = "unavailable"            // the gateway cannot serve the request now
)

// MaxIDLength bounds the "id" a client may attach to a command.
const MaxIDLength = 64

// Command is a decoded client command.
type Command struct {
	// ID is the client's correlation id exactly as sent (a JSON string or
	// number), echoed in the answer; nil when absent.
	ID json.RawMessage
	// Name is Subscribe or Unsubscribe.
	Name string
	// ProductIDs are the products, without duplicates, in ascending order.
	ProductIDs []int64
	// Snapshot asks for each product's current state before its changes.
	Snapshot bool
	// Versions are the versions the client already has, by product id
	// (resume: only what moved on since is sent). Every key is in ProductIDs.
	Versions map[int64]int64
	// All is a watch-all command ({"all":true}): every product, present
	// and future. ProductIDs, Snapshot and Versions are then empty (the
	// snapshot of all products is the REST list).
	All bool
	// Since is, for a watch-all subscribe, the highest change seq the
	// client has seen: every change with a higher seq is sent from the
	// change log. -1 when absent.
	Since int64
}

// Error is a refused command: its code, a message for people, and the id
// of the command when it could be read.
type Error struct {
	ID      json.RawMessage
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Decode parses one text frame as a command, strictly: a JSON object with
// the fields command, productIDs, and optionally id, snapshot and versions;
// at most maxIDs product ids. A watch-all command has "all":true instead of
// productIDs (and, with subscribe, optionally "since"; see decodeAll).
// Errors are *Error.
func Decode(data []byte, maxIDs int) (Command, error) {
	var obj map[string]json.RawMessage
	if !utf8.Valid(data) {
		return Command{}, &Error{Code: CodeInvalidJSON, Message: "frame is not valid UTF-8"}
	}
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		return Command{}, &Error{Code: CodeInvalidJSON, Message: `a command is a JSON object like {"command":"subscribe","productIDs":[1,2]}`}
	}
	cmd := Command{Since: -1}
	if raw, ok := obj["id"]; ok && !isNull(raw) {
		if len(raw) > MaxIDLength || (raw[0] != '"' && !isNumber(raw)) {
			return Command{}, &Error{Code: CodeInvalidCommand, Message: fmt.Sprintf("id must be a string or a number of at most %d bytes", MaxIDLength)}
		}
		cmd.ID = append(json.RawMessage(nil), raw...)
	}
	fail := func(code, format string, args ...any) (Command, error) {
		return Command{}, &Error{ID: cmd.ID, Code: code, Message: fmt.Sprintf(format, args...)}
	}
	for name := range obj {
		switch name {
		case "id", "command", "productIDs", "snapshot", "versions", "all", "since":
		default:
			return fail(CodeInvalidCommand, "unknown field %q (known: command, productIDs, all, id, snapshot, versions, since)", name)
		}
	}
	if err := json.Unmarshal(obj["command"], &cmd.Name); err != nil || cmd.Name == "" {
		return fail(CodeInvalidCommand, `"command" must be "subscribe" or "unsubscribe"`)
	}
	if cmd.Name != Subscribe && cmd.Name != Unsubscribe {
		return fail(CodeUnknownCommand, "unknown command %q: use subscribe or unsubscribe", truncate(cmd.Name, 40))
	}
	if raw, ok := obj["all"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &cmd.All); err != nil {
			return fail(CodeInvalidCommand, `"all" must be true or false`)
		}
	}
	if cmd.All {
		return decodeAll(obj, cmd, fail)
	}
	if raw, ok := obj["since"]; ok && !isNull(raw) {
		return fail(CodeInvalidCommand, `"since" only goes with {"command":"subscribe","all":true}`)
	}
	rawIDs, ok := obj["productIDs"]
	if !ok || isNull(rawIDs) {
		return fail(CodeInvalidCommand, `"productIDs" is required: an array of product ids`)
	}
	var numbers []json.RawMessage
	if err := json.Unmarshal(rawIDs, &numbers); err != nil {
		return fail(CodeInvalidProductID, `"productIDs" must be an array of integers`)
	}
	if len(numbers) > maxIDs {
		return fail(CodeTooManyIDs, "%d product ids in one command; at most %d", len(numbers), maxIDs)
	}
	seen := make(map[int64]bool, len(numbers))
	for _, n := range numbers {
		id, err := parseID(string(n))
		if err != nil {
			return fail(CodeInvalidProductID, "%v", err)
		}
		if !seen[id] {
			seen[id] = true
			cmd.ProductIDs = append(cmd.ProductIDs, id)
		}
	}
	sort.Slice(cmd.ProductIDs, func(i, j int) bool { return cmd.ProductIDs[i] < cmd.ProductIDs[j] })
	if raw, ok := obj["snapshot"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &cmd.Snapshot); err != nil {
			return fail(CodeInvalidCommand, `"snapshot" must be true or false`)
		}
	}
	if raw, ok := obj["versions"]; ok && !isNull(raw) {
		var versions map[string]json.RawMessage
		if err := json.Unmarshal(raw, &versions); err != nil {
			return fail(CodeInvalidCommand, `"versions" must be an object of product id to version, like {"1":7}`)
		}
		if cmd.Name != Subscribe && len(versions) > 0 {
			return fail(CodeInvalidCommand, `"versions" only goes with subscribe`)
		}
		cmd.Versions = make(map[int64]int64, len(versions))
		for key, value := range versions {
			id, err := parseID(key)
			if err != nil || !seen[id] {
				return fail(CodeInvalidCommand, "versions names %q, which is not one of productIDs", truncate(key, 24))
			}
			v, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || v < 0 {
				return fail(CodeInvalidCommand, "version of product %d must be a non-negative integer", id)
			}
			cmd.Versions[id] = v
		}
	}
	return cmd, nil
}

// decodeAll checks a watch-all command: productIDs, snapshot and versions
// do not go with it (the snapshot of everything is the REST list, and a
// resume is by seq); since, only with subscribe, is an integer >= 0.
func decodeAll(obj map[string]json.RawMessage, cmd Command, fail func(code, format string, args ...any) (Command, error)) (Command, error) {
	for _, name := range []string{"productIDs", "snapshot", "versions"} {
		if raw, ok := obj[name]; ok && !isNull(raw) {
			return fail(CodeInvalidCommand, `%q does not go with "all":true (the snapshot of all products is GET /products; resume with "since")`, name)
		}
	}
	raw, ok := obj["since"]
	if !ok || isNull(raw) {
		return cmd, nil
	}
	if cmd.Name != Subscribe {
		return fail(CodeInvalidCommand, `"since" only goes with subscribe`)
	}
	since, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || since < 0 {
		return fail(CodeInvalidCommand, `"since" must be a change seq: an integer from 0 to %d`, int64(math.MaxInt64))
	}
	cmd.Since = since
	return cmd, nil
}

// parseID parses a product id, a JSON integer (or, as an object key, its
// decimal text) from 1 to MaxInt64.
func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		return 0, fmt.Errorf("product id %s is not an integer from 1 to %d", truncate(s, 24), int64(math.MaxInt64))
	}
	return id, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func isNumber(raw json.RawMessage) bool {
	var n json.Number
	return json.Unmarshal(raw, &n) == nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// AppendAck appends {"type":"ack","id":…,"command":…,"productIDs":[…]} to dst.
func AppendAck(dst []byte, id json.RawMessage, command string, productIDs []int64) []byte {
	dst = append(dst, `{"type":"ack"`...)
	dst = appendID(dst, id)
	dst = append(dst, `,"command":`...)
	dst = strconv.AppendQuote(dst, command)
	dst = append(dst, `,"productIDs":`...)
	dst = appendIDs(dst, productIDs)
	return append(dst, '}')
}

// AppendAllAck appends the answer to a watch-all command,
// {"type":"ack","id":…,"command":…,"productIDs":[],"all":true}, with
// "since" when the subscribe resumes (since >= 0) and "seq" when position
// is > 0: the change log's newest seq when the subscription began, from
// which the client may resume if no change reaches it before it leaves.
func AppendAllAck(dst []byte, id json.RawMessage, command string, since, position int64) []byte {
	dst = append(dst, `{"type":"ack"`...)
	dst = appendID(dst, id)
	dst = append(dst, `,"command":`...)
	dst = strconv.AppendQuote(dst, command)
	dst = append(dst, `,"productIDs":[],"all":true`...)
	if since >= 0 {
		dst = append(dst, `,"since":`...)
		dst = strconv.AppendInt(dst, since, 10)
	}
	if position > 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendInt(dst, position, 10)
	}
	return append(dst, '}')
}

// AppendAllError appends an error about the watch-all subscription,
// {"type":"error","id":…,"code":…,"message":…,"all":true}: with
// CodeResync, the client must reload the product list (the change log no
// longer holds every change after its since) or resume with since (live
// changes may have been missed).
func AppendAllError(dst []byte, id json.RawMessage, code, message string) []byte {
	dst = AppendError(dst, id, code, message, nil)
	return append(dst[:len(dst)-1], `,"all":true}`...)
}

// AppendError appends {"type":"error","id":…,"code":…,"message":…} to dst,
// with "productIDs" when ids is not empty.
func AppendError(dst []byte, id json.RawMessage, code, message string, ids []int64) []byte {
	dst = append(dst, `{"type":"error"`...)
	dst = appendID(dst, id)
	dst = append(dst, `,"code":`...)
	dst = strconv.AppendQuote(dst, code)
	dst = append(dst, `,"message":`...)
	msg, _ := json.Marshal(message) // a string always marshals
	dst = append(dst, msg...)
	if len(ids) > 0 {
		dst = append(dst, `,"productIDs":`...)
		dst = appendIDs(dst, ids)
	}
	return append(dst, '}')
}

func appendID(dst []byte, id json.RawMessage) []byte {
	if len(id) == 0 {
		return dst
	}
	var compact bytes.Buffer
	if json.Compact(&compact, id) != nil {
		return dst
	}
	dst = append(dst, `,"id":`...)
	return append(dst, compact.Bytes()...)
}

func appendIDs(dst []byte, ids []int64) []byte {
	dst = append(dst, '[')
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, id, 10)
	}
	return append(dst, ']')
}
