package main

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"

	"github.com/productwatch/productwatch/pkg/product"
)

// Error codes of the REST API (api/openapi.yaml lists them). product's
// InputError codes (invalid_json, invalid_body, use_put) pass through as they
// are.
const (
	codeInvalidParameter     = "invalid_parameter"
	codeNotFound             = "not_found"
	codePreconditionFailed   = "precondition_failed"
	codeUnauthorized         = "unauthorized"
	codeBodyTooLarge         = "body_too_large"
	codeUnsupportedMediaType = "unsupported_media_type"
	codeMethodNotAllowed     = "method_not_allowed"
	codeInternal             = "internal"
	codeUnavailable          = "unavailable"
	codeTooManyConnections   = "too_many_connections"
	codeUpgradeRequired      = "upgrade_required"
)

// statusClientClosedRequest is the status recorded (in metrics and logs,
// never sent: nobody is listening) for a request whose client went away
// before the answer, as nginx's 499.
const statusClientClosedRequest = 499

// apiError is an error with its HTTP status and API error code.
type apiError struct {
	Status  int
	Code    string
	Field   string
	Message string
}

func (e *apiError) Error() string { return e.Message }

// errorBody is the JSON body of every error response.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
	} `json:"error"`
}

// classify maps any error a handler returns to its status and API error. It
// is the one place where errors become HTTP answers; the bool reports an
// unexpected failure that the caller logs. ctx is the request's: when the
// client went away the answer is 499 (whatever the error says), and when
// the request's deadline passed it is 503 unavailable.
func classify(ctx context.Context, err error) (*apiError, bool) {
	var api *apiError
	var input *product.InputError
	var tooLarge *http.MaxBytesError
	var pqErr *pq.Error
	var netErr net.Error
	var conflict *product.VersionError
	switch {
	case errors.As(err, &api): // before the client-gone check: a broken body is the client's 400 even if it left
		return api, false
	case errors.Is(ctx.Err(), context.Canceled), errors.Is(err, context.Canceled):
		return &apiError{Status: statusClientClosedRequest, Code: "client_closed_request", Message: "the client went away"}, false
	case errors.As(err, &input):
		return &apiError{Status: http.StatusBadRequest, Code: input.Code, Field: input.Field, Message: input.Message}, false
	case errors.As(err, &tooLarge):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codeBodyTooLarge,
			Message: "request body is larger than " + formatBytes(tooLarge.Limit)}, false
	case errors.Is(err, product.ErrNotFound):
		return &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: "no product with this id"}, false
	case errors.As(err, &conflict):
		return &apiError{Status: http.StatusPreconditionFailed, Code: codePreconditionFailed,
			Message: fmt.Sprintf(`If-Match does not match: the product is at version %d (ETag "%d")`, conflict.Current, conflict.Current)}, false
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &pqErr) && (pqErr.Code == "57014" || pqErr.Code == "55P03"): // statement_timeout, lock_timeout
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable,
			Message: "the database did not answer in time; retry later"}, true
	// Connection trouble (08), operator intervention such as a shutting-down
	// server (57), insufficient resources such as too many connections (53),
	// and serialization failures or deadlocks (40) pass: retry later.
	case errors.As(err, &pqErr) && retryableClass(pqErr.Code.Class()),
		errors.Is(err, driver.ErrBadConn), errors.As(err, &netErr):
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "the database is unavailable; retry later"}, true
	default:
		return &apiError{Status: http.StatusInternalServerError, Code: codeInternal, Message: "internal error"}, true
	}
}

// retryableClass reports whether a PostgreSQL error of this SQLSTATE class
// says the database cannot serve now rather than that the request is wrong.
func retryableClass(c pqerror.Class) bool {
	switch c {
	case "08", "57", "53", "40":
		return true
	}
	return false
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	default:
		return strconv.FormatInt(n, 10) + " bytes"
	}
}

// marshalError renders the JSON error body. "<", ">" and "&" stay as they
// are (a message may say "Bearer <API_TOKEN>"): the body is served as
// application/json with nosniff, never inlined into HTML.
func marshalError(e *apiError) []byte {
	var body errorBody
	body.Error.Code, body.Error.Message, body.Error.Field = e.Code, e.Message, e.Field
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(body) // cannot fail: strings only
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

// writeAPIError answers e on a plain net/http handler (outside echo).
func writeAPIError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_, _ = w.Write(marshalError(e))
}
