package apitest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// A well-formed product and product list, as the gateway renders them.
const (
	productJSON  = `{"productId":42,"manufacturer":"Acme","productName":"Skates","pricePerUnit":"12.50USD","unitsAvailable":12,"version":7,"updatedAt":"2026-11-25T01:02:03.456789Z"}`
	jsonUTF8     = "application/json; charset=utf-8"
	linkNextPage = `</products?after=42&limit=1>; rel="next"`
)

// exchange is one request and the response a test pretends to have got.
type exchange struct {
	method, target string
	status         int
	header         map[string]string
	body           string
}

// record builds the request and the response of e with httptest, as a
// handler would have written it.
func (e exchange) record() (*http.Request, *http.Response, []byte) {
	req := httptest.NewRequest(e.method, e.target, nil)
	rec := httptest.NewRecorder()
	for k, v := range e.header {
		rec.Header().Set(k, v)
	}
	rec.WriteHeader(e.status)
	_, _ = rec.WriteString(e.body)
	return req, rec.Result(), rec.Body.Bytes()
}

// jsonHeader returns a JSON Content-Type header plus extra key/value pairs.
func jsonHeader(kv ...string) map[string]string {
	h := map[string]string{"Content-Type": jsonUTF8}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return h
}

func errorJSON(code string) string {
	return `{"error":{"code":"` + code + `","message":"something went wrong"}}`
}

func TestCheckResponse(t *testing.T) {
	v := NewValidator(t)
	cases := []struct {
		name    string
		ex      exchange
		wantErr string // "" when the exchange conforms
	}{
		// Conforming answers.
		{name: "get product", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), productJSON}},
		{name: "get product, absolute URL on any host", ex: exchange{"GET", "http://127.0.0.1:39123/products/42", 200, jsonHeader("ETag", `"7"`), productJSON}},
		{name: "get product, plain application/json", ex: exchange{"GET", "/products/42", 200, map[string]string{"Content-Type": "application/json", "ETag": `"7"`}, productJSON}},
		{name: "get product with the largest id", ex: exchange{"GET", "/products/9223372036854775807", 200, jsonHeader("ETag", `"9223372036854775807"`),
			strings.Replace(strings.Replace(productJSON, `"productId":42`, `"productId":9223372036854775807`, 1), `"version":7`, `"version":9223372036854775807`, 1)}},
		{name: "get product not modified", ex: exchange{"GET", "/products/42", 304, map[string]string{"ETag": `"7"`}, ""}},
		{name: "get unknown product", ex: exchange{"GET", "/products/43", 404, jsonHeader(), errorJSON("not_found")}},
		{name: "get product with a bad id", ex: exchange{"GET", "/products/abc", 400, jsonHeader(),
			`{"error":{"code":"invalid_parameter","message":"product id must be an integer","field":"productId"}}`}},
		{name: "list full page", ex: exchange{"GET", "/products?limit=1", 200, jsonHeader("Link", linkNextPage),
			`{"products":[` + productJSON + `],"next":"/products?after=42&limit=1"}`}},
		{name: "list last page", ex: exchange{"GET", "/products?after=42", 200, jsonHeader(), `{"products":[]}`}},
		{name: "list with the database down", ex: exchange{"GET", "/products", 503, jsonHeader(), errorJSON("unavailable")}},
		{name: "create", ex: exchange{"POST", "/products", 201, jsonHeader("Location", "/products/42", "ETag", `"1"`),
			strings.Replace(productJSON, `"version":7`, `"version":1`, 1)}},
		{name: "create without token", ex: exchange{"POST", "/products", 401, jsonHeader("WWW-Authenticate", `Bearer realm="productwatch"`), errorJSON("unauthorized")}},
		{name: "create with a productId", ex: exchange{"POST", "/products", 400, jsonHeader(), errorJSON("use_put")}},
		{name: "create too large", ex: exchange{"POST", "/products", 413, jsonHeader(), errorJSON("body_too_large")}},
		{name: "create not JSON", ex: exchange{"POST", "/products", 415, jsonHeader(), errorJSON("unsupported_media_type")}},
		{name: "replace", ex: exchange{"PUT", "/products/42", 200, jsonHeader("ETag", `"7"`), productJSON}},
		{name: "replace stale version", ex: exchange{"PUT", "/products/42", 412, jsonHeader(), errorJSON("precondition_failed")}},
		{name: "patch", ex: exchange{"PATCH", "/products/42", 200, jsonHeader("ETag", `"7"`), productJSON}},
		{name: "patch with null", ex: exchange{"PATCH", "/products/42", 400, jsonHeader(), errorJSON("invalid_body")}},
		{name: "delete", ex: exchange{"DELETE", "/products/42", 204, nil, ""}},
		{name: "delete failing", ex: exchange{"DELETE", "/products/42", 500, jsonHeader(), errorJSON("internal")}},
		{name: "healthz", ex: exchange{"GET", "/healthz", 200, jsonHeader("Cache-Control", "no-store"), `{"status":"ok"}` + "\n"}},
		{name: "readyz ready", ex: exchange{"GET", "/readyz", 200, jsonHeader(), `{"status":"ready"}`}},
		{name: "readyz not ready", ex: exchange{"GET", "/readyz", 503, jsonHeader(),
			`{"status":"not ready"}`}},
		{name: "unlisted path", ex: exchange{"GET", "/no/such/route", 404, jsonHeader(), errorJSON("not_found")}},
		{name: "unsupported method", ex: exchange{"DELETE", "/products", 405, jsonHeader("Allow", "OPTIONS, GET, POST"), errorJSON("method_not_allowed")}},

		// Answers the document does not allow.
		{name: "undocumented status", ex: exchange{"GET", "/products/42", 418, jsonHeader(), errorJSON("internal")},
			wantErr: "status 418 is not documented"},
		{name: "not modified on a write", ex: exchange{"POST", "/products", 304, nil, ""},
			wantErr: "status 304 is not documented"},
		{name: "unlisted path answered 200", ex: exchange{"GET", "/nope", 200, jsonHeader(), `{}`},
			wantErr: "the only answer the document allows is 404 (components/responses/NoSuchRoute)"},
		{name: "unlisted path answered with another code", ex: exchange{"GET", "/nope", 404, jsonHeader(), errorJSON("invalid_parameter")},
			wantErr: "doesn't match schema"},
		{name: "unsupported method answered 404", ex: exchange{"DELETE", "/products", 404, jsonHeader(), errorJSON("not_found")},
			wantErr: "the only answer the document allows is 405 (components/responses/MethodNotAllowed)"},
		{name: "unsupported method without Allow", ex: exchange{"DELETE", "/products", 405, jsonHeader(), errorJSON("method_not_allowed")},
			wantErr: `response header "Allow" missing`},
		{name: "product without version", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), strings.Replace(productJSON, `,"version":7`, "", 1)},
			wantErr: `property "version" is missing`},
		{name: "product with an unknown field", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), strings.Replace(productJSON, `{`, `{"color":"red",`, 1)},
			wantErr: `property "color" is unsupported`},
		{name: "product with a lower-case currency", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), strings.Replace(productJSON, "USD", "usd", 1)},
			wantErr: "pricePerUnit"},
		{name: "product with a second-precision updatedAt", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), strings.Replace(productJSON, ".456789Z", "Z", 1)},
			wantErr: "updatedAt"},
		{name: "product list with wrong types", ex: exchange{"GET", "/products", 200, jsonHeader(),
			`{"products":[` + strings.Replace(strings.Replace(productJSON, `"productId":42`, `"productId":"42"`, 1), `"unitsAvailable":12`, `"unitsAvailable":"12"`, 1) + `]}`},
			wantErr: "productId"},
		{name: "product list that is an array", ex: exchange{"GET", "/products", 200, jsonHeader(), `[` + productJSON + `]`},
			wantErr: "doesn't match schema"},
		{name: "product list with a bad next", ex: exchange{"GET", "/products", 200, jsonHeader(), `{"products":[],"next":"/elsewhere"}`},
			wantErr: "next"},
		{name: "product without ETag", ex: exchange{"GET", "/products/42", 200, jsonHeader(), productJSON},
			wantErr: `response header "ETag" missing`},
		{name: "product with an unquoted ETag", ex: exchange{"PUT", "/products/42", 200, jsonHeader("ETag", "7"), productJSON},
			wantErr: `response header "ETag" doesn't match schema`},
		{name: "created without Location", ex: exchange{"POST", "/products", 201, jsonHeader("ETag", `"1"`), productJSON},
			wantErr: `response header "Location" missing`},
		{name: "unauthorized without WWW-Authenticate", ex: exchange{"PATCH", "/products/42", 401, jsonHeader(), errorJSON("unauthorized")},
			wantErr: `response header "WWW-Authenticate" missing`},
		{name: "product as HTML", ex: exchange{"GET", "/products/42", 200, map[string]string{"Content-Type": "text/html", "ETag": `"7"`}, productJSON},
			wantErr: "Content-Type"},
		{name: "product with an empty body", ex: exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), ""},
			wantErr: "body"},
		{name: "not found with another error code", ex: exchange{"GET", "/products/42", 404, jsonHeader(), errorJSON("invalid_body")},
			wantErr: "doesn't match schema"},
		{name: "error with an unknown code", ex: exchange{"GET", "/products", 400, jsonHeader(), errorJSON("bad_request")},
			wantErr: "doesn't match schema"},
		{name: "error that is plain text", ex: exchange{"PUT", "/products/42", 500, map[string]string{"Content-Type": "text/plain"}, "internal error"},
			wantErr: "Content-Type"},
		{name: "delete with a body", ex: exchange{"DELETE", "/products/42", 204, jsonHeader(), productJSON},
			wantErr: "has no body in the document"},
		{name: "readyz with the checks' details", ex: exchange{"GET", "/readyz", 200, jsonHeader(), `{"status":"ready","checks":{"database":"ok"}}`},
			wantErr: "doesn't match schema"},
		{name: "readyz not ready with status ready", ex: exchange{"GET", "/readyz", 503, jsonHeader(), `{"status":"ready"}`},
			wantErr: "doesn't match schema"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // one Validator shared by parallel tests, as -race checks
			req, resp, body := tc.ex.record()
			err := v.checkResponse(req, resp, body)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("conforming answer refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("answer accepted, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestCheckRequest(t *testing.T) {
	v := NewValidator(t)
	const input = `{"manufacturer":"Acme","productName":"Skates","pricePerUnit":"12.50USD","unitsAvailable":12}`
	bearer := map[string]string{"Authorization": "Bearer secret", "Content-Type": "application/json"}
	withHeader := func(base map[string]string, kv ...string) map[string]string {
		out := make(map[string]string, len(base)+len(kv)/2)
		for k, val := range base {
			out[k] = val
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	cases := []struct {
		name           string
		method, target string
		header         map[string]string
		body           string
		wantErr        string // "" when the request conforms
	}{
		{name: "list", method: "GET", target: "/products"},
		{name: "list with parameters", method: "GET", target: "/products?after=42&limit=1000"},
		{name: "get", method: "GET", target: "/products/9223372036854775807", header: map[string]string{"If-None-Match": `W/"7", "8"`}},
		{name: "create", method: "POST", target: "/products", header: bearer, body: input},
		{name: "create with a charset", method: "POST", target: "/products",
			header: withHeader(bearer, "Content-Type", "application/json; charset=utf-8"), body: input},
		{name: "replace with a GET result", method: "PUT", target: "/products/42", header: withHeader(bearer, "If-Match", `"7"`), body: productJSON},
		{name: "replace if any of two versions", method: "PUT", target: "/products/42", header: withHeader(bearer, "If-Match", `"7", "8"`), body: input},
		{name: "patch", method: "PATCH", target: "/products/42",
			header: withHeader(bearer, "Content-Type", "application/merge-patch+json", "If-Match", "*"), body: `{"unitsAvailable":0}`},
		{name: "delete", method: "DELETE", target: "/products/42", header: map[string]string{"Authorization": "Bearer secret"}},

		{name: "limit too large", method: "GET", target: "/products?limit=1001", wantErr: `parameter "limit"`},
		{name: "negative after", method: "GET", target: "/products?after=-1", wantErr: `parameter "after"`},
		{name: "id zero", method: "GET", target: "/products/0", wantErr: `parameter "productId"`},
		{name: "id beyond int64", method: "GET", target: "/products/9223372036854775808", wantErr: `parameter "productId"`},
		{name: "create without token", method: "POST", target: "/products",
			header: map[string]string{"Content-Type": "application/json"}, body: input, wantErr: "bearerAuth"},
		{name: "create as text", method: "POST", target: "/products",
			header: withHeader(bearer, "Content-Type", "text/plain"), body: input, wantErr: "text/plain"},
		{name: "create with an unknown field", method: "POST", target: "/products",
			header: bearer, body: strings.Replace(input, "{", `{"color":"red",`, 1), wantErr: `"color"`},
		{name: "create without price", method: "POST", target: "/products",
			header: bearer, body: strings.Replace(input, `"pricePerUnit":"12.50USD",`, "", 1), wantErr: `"pricePerUnit" is missing`},
		{name: "patch with null", method: "PATCH", target: "/products/42",
			header: withHeader(bearer, "Content-Type", "application/merge-patch+json"), body: `{"manufacturer":null}`, wantErr: "manufacturer"},
		{name: "weak If-Match", method: "DELETE", target: "/products/42",
			header: map[string]string{"Authorization": "Bearer secret", "If-Match": `W/"7"`}, wantErr: `parameter "If-Match"`},
		{name: "undocumented route", method: "GET", target: "/products/42/history", wantErr: "not an operation of the document"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			for k, val := range tc.header {
				req.Header.Set(k, val)
			}
			err := v.checkRequest(req, []byte(tc.body))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("conforming request refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("request accepted, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// recordingTB is a testing.TB whose failures are recorded instead of
// failing the test, to test the helpers' reports.
type recordingTB struct {
	testing.TB
	mu       sync.Mutex
	failures []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

func TestCheckReportsThroughT(t *testing.T) {
	v := NewValidator(t)
	cases := []struct {
		name         string
		check        func(tb testing.TB)
		wantFailures []string // substrings, one per expected failure
	}{
		{
			name: "conforming response",
			check: func(tb testing.TB) {
				req, resp, body := exchange{"GET", "/products/42", 200, jsonHeader("ETag", `"7"`), productJSON}.record()
				v.Check(tb, req, resp, body)
			},
		},
		{
			name: "malformed response",
			check: func(tb testing.TB) {
				req, resp, body := exchange{"GET", "/products/42?x=1", 418, jsonHeader(), "I'm a teapot"}.record()
				v.Check(tb, req, resp, body)
			},
			wantFailures: []string{"GET /products/42?x=1 answered 418, which api/openapi.yaml does not allow: status 418 is not documented for GET /products/{productId} (documented: 200, 304, 400, 404, 500, 503)\nresponse body: I'm a teapot"},
		},
		{
			name: "conforming request",
			check: func(tb testing.TB) {
				v.CheckRequest(tb, httptest.NewRequest("GET", "/products?limit=5", nil), nil)
			},
		},
		{
			name: "malformed request",
			check: func(tb testing.TB) {
				v.CheckRequest(tb, httptest.NewRequest("GET", "/products?limit=0", nil), nil)
			},
			wantFailures: []string{`apitest: GET /products?limit=0 is not a request api/openapi.yaml accepts: GET /products: parameter "limit" in query`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			tc.check(rec)
			if len(rec.failures) != len(tc.wantFailures) {
				t.Fatalf("failures = %q, want %d", rec.failures, len(tc.wantFailures))
			}
			for i, want := range tc.wantFailures {
				if !strings.Contains(rec.failures[i], want) {
					t.Errorf("failure %q does not contain %q", rec.failures[i], want)
				}
			}
		})
	}
}

func TestParseContract(t *testing.T) {
	cases := []struct {
		name    string
		data    string
		wantErr string
	}{
		{name: "not YAML", data: "openapi: [", wantErr: "load OpenAPI document"},
		{name: "no info", data: "openapi: 3.0.3\npaths: {}\n", wantErr: "validate OpenAPI document"},
		{name: "bad example", data: `openapi: 3.0.3
info: {title: t, version: "1"}
paths: {}
components:
  schemas:
    N: {type: integer, example: "x"}
`, wantErr: "validate OpenAPI document"},
		{name: "minimal", data: "openapi: 3.0.3\ninfo: {title: t, version: \"1\"}\npaths: {}\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseContract([]byte(tc.data))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("accepted, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}
