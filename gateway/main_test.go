package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/productwatch/productwatch/api/apitest"
	"github.com/productwatch/productwatch/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const testToken = "test-token-0123456789" // API_TOKEN needs 16 bytes or more

// testGateway is a gateway on a fresh database behind a real HTTP server.
type testGateway struct {
	*testenv.PG
	srv       *httptest.Server
	ops       *httptest.Server // the METRICS_ADDR handler: metrics, detailed readiness
	validator *apitest.Validator
}

// newTestServers serves g's public and private handlers until the test ends.
func newTestServers(t testing.TB, pg *testenv.PG, g *Gateway) *testGateway {
	t.Helper()
	srv := httptest.NewServer(g.handler)
	t.Cleanup(srv.Close)
	ops := httptest.NewServer(g.ops)
	t.Cleanup(ops.Close)
	return &testGateway{PG: pg, srv: srv, ops: ops, validator: apitest.NewValidator(t)}
}

// opsGet GETs path from the private listener.
func (g *testGateway) opsGet(t testing.TB, path string) response {
	t.Helper()
	resp, err := http.Get(g.ops.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// newTestGateway starts a gateway with cfg's defaults overridden by change.
func newTestGateway(t *testing.T, change func(*Config)) *testGateway {
	t.Helper()
	pg := testenv.Postgres(t)
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DatabaseURL = pg.DSN
	cfg.APIToken = testToken
	if change != nil {
		change(&cfg)
	}
	g, err := newGateway(cfg, pg.DB, nil, newResyncQueue(), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return newTestServers(t, pg, g)
}

// response is a finished HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// errorCode returns the code of an error body, "" when there is none.
func (r response) errorCode() string {
	var body errorBody
	_ = json.Unmarshal(r.Body, &body)
	return body.Error.Code
}

// request describes one HTTP request of a test.
type request struct {
	Method, Path string
	Body         string
	Header       map[string]string // Content-Type defaults to application/json with a body
	NoAuth       bool              // leave out the bearer token
}

// do sends req, reads the whole answer and checks it against api/openapi.yaml.
func (g *testGateway) do(t testing.TB, req request) response {
	t.Helper()
	var body io.Reader
	if req.Body != "" {
		body = strings.NewReader(req.Body)
	}
	httpReq, err := http.NewRequest(req.Method, g.srv.URL+req.Path, body)
	if err != nil {
		t.Fatal(err)
	}
	if req.Body != "" {
		httpReq.Header.Set("Content-Type", "application/json")
	}
	if !req.NoAuth {
		httpReq.Header.Set("Authorization", "Bearer "+testToken)
	}
	for k, v := range req.Header {
		httpReq.Header.Set(k, v)
	}
	resp, err := g.srv.Client().Do(httpReq)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// Re-create the request for the validator (the original body is spent).
	checkReq, _ := http.NewRequest(req.Method, g.srv.URL+req.Path, bytes.NewReader([]byte(req.Body)))
	checkReq.Header = httpReq.Header.Clone()
	g.validator.Check(t, checkReq, resp, data)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// productJSON is a product as the API returns it.
type productJSON struct {
	ProductID      int64  `json:"productId"`
	Manufacturer   string `json:"manufacturer"`
	ProductName    string `json:"productName"`
	PricePerUnit   string `json:"pricePerUnit"`
	UnitsAvailable int32  `json:"unitsAvailable"`
	Version        int64  `json:"version"`
	UpdatedAt      string `json:"updatedAt"`
}

func decodeProduct(t testing.TB, r response) productJSON {
	t.Helper()
	var p productJSON
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("decode product %s: %v", r.Body, err)
	}
	return p
}

// create makes a product through the API and returns it.
func (g *testGateway) create(t testing.TB, body string) productJSON {
	t.Helper()
	r := g.do(t, request{Method: http.MethodPost, Path: "/products", Body: body})
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /products = %d %s", r.Status, r.Body)
	}
	return decodeProduct(t, r)
}
