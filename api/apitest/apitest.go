// Package apitest checks HTTP exchanges against productwatch's REST contract,
// the OpenAPI document [api.OpenAPI], from tests anywhere in the module.
//
// A test that talks to a real gateway hands each request and the response it
// got to [Validator.Check]; an answer whose route, status, headers or body the
// document does not describe fails the test. The document is thereby tested
// against the implementation on every run, and cannot silently drift from it.
//
// The package uses kin-openapi; only test binaries link it.
package apitest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/productwatch/productwatch/api"
)

// maxBodyExcerpt is how much of a body a failure message quotes.
const maxBodyExcerpt = 2 << 10

// contract is the parsed document, the router over its operations and the
// API-wide answers to requests outside them. All are read-only once built,
// so every Validator of a test binary shares one.
type contract struct {
	doc    *openapi3.T
	router routers.Router
	// noSuchRoute and methodNotAllowed are the document's answers to a path
	// it does not list (404) and to a method a listed path does not support
	// (405), from components/responses: no operation refers to them.
	noSuchRoute, methodNotAllowed *openapi3.ResponseRef
}

// Names, in the document's components/responses, of the API-wide answers to
// requests that no operation matches.
const (
	noSuchRouteResponse      = "NoSuchRoute"
	methodNotAllowedResponse = "MethodNotAllowed"
)

// loadContract parses, validates and routes api.OpenAPI on first use. It is
// package-level so that a test binary pays for the document once, however
// many validators its tests build; the value it memoizes is never modified.
var loadContract = sync.OnceValues(func() (*contract, error) {
	return parseContract(api.OpenAPI)
})

// parseContract loads and validates an OpenAPI document from data, which
// must not refer to other files, and builds its router.
func parseContract(data []byte) (*contract, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("load OpenAPI document: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("validate OpenAPI document: %w", err)
	}
	// gorillamux rather than routers/legacy: the document's only server is
	// the relative "/", which gorillamux turns into a path-only route that
	// matches requests for any scheme and host (httptest servers listen on
	// random ports), whereas legacy matches the server URL against the
	// request's full URL and so only routes requests without a host.
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route OpenAPI document: %w", err)
	}
	c := &contract{doc: doc, router: router}
	if doc.Components != nil {
		c.noSuchRoute = doc.Components.Responses[noSuchRouteResponse]
		c.methodNotAllowed = doc.Components.Responses[methodNotAllowedResponse]
	}
	return c, nil
}

// Validator checks requests and responses against [api.OpenAPI]. Build one
// with [NewValidator]. A Validator is safe for concurrent use, so parallel
// tests may share one.
type Validator struct {
	contract *contract
}

// NewValidator returns a Validator for [api.OpenAPI]. The document is loaded
// and validated once per test binary; if it is invalid, NewValidator fails t
// with the reason.
func NewValidator(t testing.TB) *Validator {
	t.Helper()
	c, err := loadContract()
	if err != nil {
		t.Fatalf("apitest: api/openapi.yaml: %v", err)
		return nil
	}
	return &Validator{contract: c}
}

// Check fails t unless the document describes the exchange: req's method and
// path must be a documented operation, and resp's status code must be one of
// its documented responses, whose headers (ETag, Location, …), Content-Type
// and body must match. body is the response body as the caller read it;
// resp.Body is not read. req is only inspected (its body is not read either),
// so a request whose body was already sent can be passed as it is.
//
// A request that matches no operation fails, with one exception: the
// document's API-wide answers, components/responses NoSuchRoute (404
// not_found, for a path it does not list) and MethodNotAllowed (405
// method_not_allowed with Allow, for a method a listed path does not
// support), are the only answers allowed to such requests, so tests can check
// them too.
//
// Requests are not validated, so that tests can check how the gateway answers
// bad requests (no token, malformed JSON, unknown ids); use [Validator.CheckRequest]
// for that. Check reports problems with t.Errorf, so the test goes on.
func (v *Validator) Check(t testing.TB, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	if err := v.checkResponse(req, resp, body); err != nil {
		t.Errorf("apitest: %s %s answered %d, which api/openapi.yaml does not allow: %v\nresponse body: %s",
			req.Method, req.URL.RequestURI(), resp.StatusCode, err, excerpt(body))
	}
}

// CheckRequest fails t unless req, with body as its body, is a request the
// document accepts: a documented operation with valid path, query and header
// parameters, a documented Content-Type, and a body that matches its schema.
// Any "Authorization: Bearer <token>" satisfies the security requirement: the
// token itself is the gateway's business. req.Body is not read.
func (v *Validator) CheckRequest(t testing.TB, req *http.Request, body []byte) {
	t.Helper()
	if err := v.checkRequest(req, body); err != nil {
		t.Errorf("apitest: %s %s is not a request api/openapi.yaml accepts: %v\nrequest body: %s",
			req.Method, req.URL.RequestURI(), err, excerpt(body))
	}
}

// checkResponse is Check without t: nil when the document allows resp as
// the answer to req.
func (v *Validator) checkResponse(req *http.Request, resp *http.Response, body []byte) error {
	route, pathParams, err := v.findRoute(req)
	if err != nil {
		route, err = v.fallbackRoute(req, resp.StatusCode, err)
		if err != nil {
			return err
		}
	}
	responses := route.Operation.Responses
	documented := responses.Status(resp.StatusCode)
	if documented == nil {
		documented = responses.Default()
	}
	if documented == nil {
		return fmt.Errorf("status %d is not documented for %s %s (documented: %s)",
			resp.StatusCode, route.Method, route.Path, strings.Join(documentedStatuses(responses), ", "))
	}
	if len(documented.Value.Content) == 0 && len(body) > 0 {
		return fmt.Errorf("status %d of %s %s has no body in the document, but the response has %d bytes",
			resp.StatusCode, route.Method, route.Path, len(body))
	}
	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: pathParams,
			Route:      route,
		},
		Status:  resp.StatusCode,
		Header:  resp.Header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: validationOptions(),
	}
	if err := openapi3filter.ValidateResponse(context.Background(), input); err != nil {
		return fmt.Errorf("%s %s: %w", route.Method, route.Path, err)
	}
	return nil
}

// checkRequest is CheckRequest without t.
func (v *Validator) checkRequest(req *http.Request, body []byte) error {
	route, pathParams, err := v.findRoute(req)
	if err != nil {
		return err
	}
	// Validate a copy, since validation reads (and may rewrite) the body.
	clone := req.Clone(req.Context())
	clone.Body = io.NopCloser(bytes.NewReader(body))
	clone.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	clone.ContentLength = int64(len(body))
	if len(body) == 0 {
		clone.Body, clone.GetBody = http.NoBody, nil
	}
	options := validationOptions()
	options.AuthenticationFunc = acceptAnyBearer
	input := &openapi3filter.RequestValidationInput{
		Request:    clone,
		PathParams: pathParams,
		Route:      route,
		Options:    options,
	}
	if err := openapi3filter.ValidateRequest(context.Background(), input); err != nil {
		return fmt.Errorf("%s %s: %w", route.Method, route.Path, err)
	}
	return nil
}

// findRoute returns the documented operation req is for.
func (v *Validator) findRoute(req *http.Request) (*routers.Route, map[string]string, error) {
	route, pathParams, err := v.contract.router.FindRoute(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s is not an operation of the document: %w", req.Method, req.URL.Path, err)
	}
	return route, pathParams, nil
}

// fallbackRoute returns a pseudo-route for a request that no operation
// matches (routeErr says why) whose only response is the document's API-wide
// answer to such requests; an error if status is not that answer's.
func (v *Validator) fallbackRoute(req *http.Request, status int, routeErr error) (*routers.Route, error) {
	wantStatus, answer, name := http.StatusNotFound, v.contract.noSuchRoute, noSuchRouteResponse
	if errors.Is(routeErr, routers.ErrMethodNotAllowed) {
		wantStatus, answer, name = http.StatusMethodNotAllowed, v.contract.methodNotAllowed, methodNotAllowedResponse
	} else if !errors.Is(routeErr, routers.ErrPathNotFound) {
		return nil, routeErr
	}
	if answer == nil || status != wantStatus {
		return nil, fmt.Errorf("%w: the only answer the document allows is %d (components/responses/%s)", routeErr, wantStatus, name)
	}
	return &routers.Route{
		Spec:      v.contract.doc,
		Path:      req.URL.Path,
		PathItem:  &openapi3.PathItem{},
		Method:    req.Method,
		Operation: &openapi3.Operation{Responses: openapi3.NewResponses(openapi3.WithStatus(wantStatus, answer))},
	}, nil
}

// validationOptions are the kin-openapi options of every check: an
// undocumented status fails, every schema violation is reported (not just the
// first), messages leave out the schema dumps that would drown them, and the
// caller's request is never modified with defaults.
func validationOptions() *openapi3filter.Options {
	return &openapi3filter.Options{
		IncludeResponseStatus:   true,
		MultiError:              true,
		SkipSettingDefaults:     true,
		SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.DisableSchemaErrorDetails()},
	}
}

// errNoBearer is the failed security requirement of CheckRequest.
var errNoBearer = errors.New(`no "Authorization: Bearer <token>" header`)

// acceptAnyBearer is the authentication of CheckRequest: any non-empty bearer
// token satisfies an HTTP bearer scheme.
func acceptAnyBearer(_ context.Context, input *openapi3filter.AuthenticationInput) error {
	scheme := input.SecurityScheme
	if scheme.Type != "http" || !strings.EqualFold(scheme.Scheme, "bearer") {
		return fmt.Errorf("security scheme %q: apitest only knows HTTP bearer", input.SecuritySchemeName)
	}
	token, ok := strings.CutPrefix(input.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		return fmt.Errorf("security scheme %q: %w", input.SecuritySchemeName, errNoBearer)
	}
	return nil
}

// documentedStatuses lists the status codes of responses, sorted.
func documentedStatuses(responses *openapi3.Responses) []string {
	statuses := make([]string, 0, responses.Len())
	for status := range responses.Map() {
		statuses = append(statuses, status)
	}
	slices.Sort(statuses)
	return statuses
}

// excerpt renders at most maxBodyExcerpt bytes of body for a failure message.
func excerpt(body []byte) string {
	if len(body) == 0 {
		return "(empty)"
	}
	shown := body
	if len(shown) > maxBodyExcerpt {
		shown = shown[:maxBodyExcerpt]
	}
	text := string(shown)
	if !utf8.Valid(shown) {
		text = strconv.Quote(text)
	}
	if len(shown) < len(body) {
		text += fmt.Sprintf("… (%d more bytes)", len(body)-len(shown))
	}
	return text
}
