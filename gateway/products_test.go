package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const macbook = `{"manufacturer":"Apple","productName":"MacBook Pro","pricePerUnit":"500EUR","unitsAvailable":6}`

func TestProductLifecycle(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)

	created := g.create(t, macbook)
	if created.ProductID < 1 || created.Version != 1 || created.PricePerUnit != "500EUR" || created.UnitsAvailable != 6 || created.UpdatedAt == "" {
		t.Fatalf("created %+v", created)
	}
	path := "/products/" + strconv.FormatInt(created.ProductID, 10)

	got := g.do(t, request{Method: http.MethodGet, Path: path, NoAuth: true})
	if got.Status != http.StatusOK || got.Header.Get("ETag") != `"1"` || decodeProduct(t, got) != created {
		t.Fatalf("GET = %d %s %s", got.Status, got.Header.Get("ETag"), got.Body)
	}

	put := g.do(t, request{Method: http.MethodPut, Path: path, Header: map[string]string{"If-Match": `"1"`},
		Body: `{"productId":` + strconv.FormatInt(created.ProductID, 10) + `,"manufacturer":"Apple","productName":"MacBook Air","pricePerUnit":"12.50EUR","unitsAvailable":5}`})
	replaced := decodeProduct(t, put)
	if put.Status != http.StatusOK || put.Header.Get("ETag") != `"2"` || replaced.Version != 2 || replaced.ProductName != "MacBook Air" || replaced.PricePerUnit != "12.50EUR" {
		t.Fatalf("PUT = %d %s", put.Status, put.Body)
	}

	patch := g.do(t, request{Method: http.MethodPatch, Path: path, Body: `{"unitsAvailable":0}`,
		Header: map[string]string{"Content-Type": "application/merge-patch+json"}})
	patched := decodeProduct(t, patch)
	if patch.Status != http.StatusOK || patched.Version != 3 || patched.UnitsAvailable != 0 || patched.ProductName != "MacBook Air" {
		t.Fatalf("PATCH = %d %s", patch.Status, patch.Body)
	}

	// A GET result can be PUT back as it is (read-only fields are ignored).
	roundTrip := g.do(t, request{Method: http.MethodPut, Path: path, Body: string(patch.Body)})
	if roundTrip.Status != http.StatusOK || decodeProduct(t, roundTrip).Version != 4 {
		t.Fatalf("PUT of a GET result = %d %s", roundTrip.Status, roundTrip.Body)
	}

	if del := g.do(t, request{Method: http.MethodDelete, Path: path}); del.Status != http.StatusNoContent || len(del.Body) != 0 {
		t.Fatalf("DELETE = %d %s", del.Status, del.Body)
	}
	if gone := g.do(t, request{Method: http.MethodGet, Path: path}); gone.Status != http.StatusNotFound || gone.errorCode() != codeNotFound {
		t.Fatalf("GET after DELETE = %d %s", gone.Status, gone.Body)
	}
	if again := g.do(t, request{Method: http.MethodDelete, Path: path}); again.Status != http.StatusNotFound {
		t.Fatalf("second DELETE = %d %s", again.Status, again.Body)
	}

	// Every successful write left exactly one change, in version order.
	rows, err := g.DB.Query(`SELECT action, version FROM product_changes WHERE product_id = $1 ORDER BY seq`, created.ProductID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var log []string
	for rows.Next() {
		var action string
		var version int64
		if err := rows.Scan(&action, &version); err != nil {
			t.Fatal(err)
		}
		log = append(log, fmt.Sprintf("%s:%d", action, version))
	}
	if want := "INSERT:1 UPDATE:2 UPDATE:3 UPDATE:4 DELETE:5"; strings.Join(log, " ") != want {
		t.Errorf("change log %v, want %s", log, want)
	}
}

func TestGetConditional(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	p := g.create(t, macbook)
	path := "/products/" + strconv.FormatInt(p.ProductID, 10)
	tests := []struct {
		name        string
		ifNoneMatch string
		want        int
	}{
		{name: "matching", ifNoneMatch: `"1"`, want: http.StatusNotModified},
		{name: "weak matching", ifNoneMatch: `W/"1"`, want: http.StatusNotModified},
		{name: "list", ifNoneMatch: `"5", "1"`, want: http.StatusNotModified},
		{name: "star", ifNoneMatch: `*`, want: http.StatusNotModified},
		{name: "stale", ifNoneMatch: `"0"`, want: http.StatusOK},
		{name: "garbage", ifNoneMatch: `xyz`, want: http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := g.do(t, request{Method: http.MethodGet, Path: path, Header: map[string]string{"If-None-Match": tc.ifNoneMatch}})
			if r.Status != tc.want || r.Header.Get("ETag") != `"1"` {
				t.Errorf("status %d ETag %q, want %d and \"1\"", r.Status, r.Header.Get("ETag"), tc.want)
			}
		})
	}
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	var ids []int64
	for i := range 5 {
		p := g.create(t, fmt.Sprintf(`{"manufacturer":"M%d","productName":"P","pricePerUnit":"%dUSD","unitsAvailable":%d}`, i, i, i))
		ids = append(ids, p.ProductID)
	}
	var seen []int64
	next, pages := "/products?limit=2", 0
	for next != "" {
		r := g.do(t, request{Method: http.MethodGet, Path: next})
		if r.Status != http.StatusOK {
			t.Fatalf("GET %s = %d %s", next, r.Status, r.Body)
		}
		var page struct {
			Products []productJSON `json:"products"`
			Next     string        `json:"next"`
		}
		if err := json.Unmarshal(r.Body, &page); err != nil {
			t.Fatal(err)
		}
		if page.Next != "" && r.Header.Get("Link") != "<"+page.Next+`>; rel="next"` {
			t.Errorf("Link %q does not match next %q", r.Header.Get("Link"), page.Next)
		}
		for _, p := range page.Products {
			seen = append(seen, p.ProductID)
		}
		next = page.Next
		if pages++; pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint(ids) || pages != 3 {
		t.Errorf("pages gave %v in %d pages, want %v in 3", seen, pages, ids)
	}
	all := g.do(t, request{Method: http.MethodGet, Path: "/products"})
	if !strings.Contains(string(all.Body), `"productId":`+strconv.FormatInt(ids[4], 10)) || strings.Contains(string(all.Body), `"next"`) {
		t.Errorf("default page %s", all.Body)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		token  string // configured
		header string // sent
	}{
		{name: "missing", token: testToken},
		{name: "wrong", token: testToken, header: "Bearer nope"},
		{name: "not bearer", token: testToken, header: "Basic " + testToken},
		{name: "none configured", token: "", header: "Bearer "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newTestGateway(t, func(c *Config) { c.APIToken = tc.token })
			for _, req := range []request{
				{Method: http.MethodPost, Path: "/products", Body: macbook},
				{Method: http.MethodPut, Path: "/products/1", Body: macbook},
				{Method: http.MethodPatch, Path: "/products/1", Body: `{}`},
				{Method: http.MethodDelete, Path: "/products/1"},
			} {
				req.NoAuth = true
				if tc.header != "" {
					req.Header = map[string]string{"Authorization": tc.header}
				}
				r := g.do(t, req)
				if r.Status != http.StatusUnauthorized || r.errorCode() != codeUnauthorized || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s %s = %d %s", req.Method, req.Path, r.Status, r.Body)
				}
			}
			assertNoChanges(t, g)
		})
	}
}

// assertNoChanges fails when the change log is not empty: no write happened.
func assertNoChanges(t *testing.T, g *testGateway) {
	t.Helper()
	var n int
	if err := g.DB.QueryRow(`SELECT count(*) FROM product_changes`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d changes were written", n)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	p := g.create(t, macbook)
	path := "/products/" + strconv.FormatInt(p.ProductID, 10)
	before := g.do(t, request{Method: http.MethodGet, Path: path})
	huge := `{"manufacturer":"` + strings.Repeat("x", 70<<10) + `","productName":"P","pricePerUnit":"1EUR","unitsAvailable":1}`

	tests := []struct {
		name      string
		req       request
		status    int
		code      string
		wantField string
	}{
		{"malformed JSON", request{Method: http.MethodPut, Path: path, Body: `{"manufacturer":`}, 400, "invalid_json", ""},
		{"trailing data", request{Method: http.MethodPut, Path: path, Body: macbook + " []"}, 400, "invalid_json", ""},
		{"unknown field", request{Method: http.MethodPut, Path: path, Body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1EUR","unitsAvailable":1,"colour":"red"}`}, 400, "invalid_body", "colour"},
		{"wrong type", request{Method: http.MethodPut, Path: path, Body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1EUR","unitsAvailable":"1"}`}, 400, "invalid_body", "unitsAvailable"},
		{"bad price", request{Method: http.MethodPost, Path: "/products", Body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1 EUR","unitsAvailable":1}`}, 400, "invalid_body", "pricePerUnit"},
		{"unknown currency", request{Method: http.MethodPost, Path: "/products", Body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1ABC","unitsAvailable":1}`}, 400, "invalid_body", "pricePerUnit"},
		{"negative units", request{Method: http.MethodPatch, Path: path, Body: `{"unitsAvailable":-1}`}, 400, "invalid_body", "unitsAvailable"},
		{"empty name", request{Method: http.MethodPost, Path: "/products", Body: `{"manufacturer":"A","productName":"","pricePerUnit":"1EUR","unitsAvailable":1}`}, 400, "invalid_body", "productName"},
		{"missing field", request{Method: http.MethodPost, Path: "/products", Body: `{"manufacturer":"A","productName":"B","unitsAvailable":1}`}, 400, "invalid_body", "pricePerUnit"},
		{"null in patch", request{Method: http.MethodPatch, Path: path, Body: `{"productName":null}`}, 400, "invalid_body", "productName"},
		{"POST with id", request{Method: http.MethodPost, Path: "/products", Body: `{"productId":5,"manufacturer":"A","productName":"B","pricePerUnit":"1EUR","unitsAvailable":1}`}, 400, "use_put", "productId"},
		{"PUT with other id", request{Method: http.MethodPut, Path: path, Body: `{"productId":999999,"manufacturer":"A","productName":"B","pricePerUnit":"1EUR","unitsAvailable":1}`}, 400, "invalid_body", "productId"},
		{"body too large", request{Method: http.MethodPut, Path: path, Body: huge}, 413, "body_too_large", ""},
		{"not JSON content", request{Method: http.MethodPut, Path: path, Body: macbook, Header: map[string]string{"Content-Type": "text/plain"}}, 415, "unsupported_media_type", ""},
		{"no content type", request{Method: http.MethodPost, Path: "/products", Body: macbook, Header: map[string]string{"Content-Type": ""}}, 415, "unsupported_media_type", ""},
		{"patch as form", request{Method: http.MethodPatch, Path: path, Body: `{}`, Header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type", ""},
		{"id not a number", request{Method: http.MethodGet, Path: "/products/abc"}, 400, "invalid_parameter", "productId"},
		{"id zero", request{Method: http.MethodPut, Path: "/products/0", Body: macbook}, 400, "invalid_parameter", "productId"},
		{"id too big", request{Method: http.MethodDelete, Path: "/products/9223372036854775808"}, 400, "invalid_parameter", "productId"},
		{"limit too big", request{Method: http.MethodGet, Path: "/products?limit=1001"}, 400, "invalid_parameter", "limit"},
		{"limit zero", request{Method: http.MethodGet, Path: "/products?limit=0"}, 400, "invalid_parameter", "limit"},
		{"after negative", request{Method: http.MethodGet, Path: "/products?after=-1"}, 400, "invalid_parameter", "after"},
		{"PUT missing product", request{Method: http.MethodPut, Path: "/products/999999", Body: macbook}, 404, "not_found", ""},
		{"PATCH missing product", request{Method: http.MethodPatch, Path: "/products/999999", Body: `{}`}, 404, "not_found", ""},
		{"stale If-Match", request{Method: http.MethodPut, Path: path, Body: macbook, Header: map[string]string{"If-Match": `"7"`}}, 412, "precondition_failed", ""},
		{"stale If-Match on patch", request{Method: http.MethodPatch, Path: path, Body: `{}`, Header: map[string]string{"If-Match": `"2", "3"`}}, 412, "precondition_failed", ""},
		{"stale If-Match on delete", request{Method: http.MethodDelete, Path: path, Header: map[string]string{"If-Match": `"2"`}}, 412, "precondition_failed", ""},
		{"weak If-Match", request{Method: http.MethodPut, Path: path, Body: macbook, Header: map[string]string{"If-Match": `W/"1"`}}, 400, "invalid_parameter", "If-Match"},
		{"method not allowed", request{Method: http.MethodDelete, Path: "/products"}, 405, "method_not_allowed", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := g.do(t, tc.req)
			var body errorBody
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("error body %q: %v", r.Body, err)
			}
			if r.Status != tc.status || body.Error.Code != tc.code || body.Error.Field != tc.wantField || body.Error.Message == "" {
				t.Errorf("= %d %s, want %d code %q field %q", r.Status, r.Body, tc.status, tc.code, tc.wantField)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}

	// Nothing above changed anything.
	after := g.do(t, request{Method: http.MethodGet, Path: path})
	if string(after.Body) != string(before.Body) {
		t.Errorf("product changed by failed requests:\n%s\n%s", before.Body, after.Body)
	}
	var changes int
	if err := g.DB.QueryRow(`SELECT count(*) FROM product_changes`).Scan(&changes); err != nil || changes != 1 {
		t.Errorf("change log has %d rows (%v), want the one INSERT", changes, err)
	}
}

func TestIfMatch(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	p := g.create(t, macbook)
	path := "/products/" + strconv.FormatInt(p.ProductID, 10)
	steps := []struct {
		ifMatch string
		want    int
		etag    string
	}{
		{`"1"`, 200, `"2"`},
		{`"1"`, 412, ""},
		{`"9", "2"`, 200, `"3"`},
		{`*`, 200, `"4"`},
	}
	for _, s := range steps {
		r := g.do(t, request{Method: http.MethodPatch, Path: path, Body: `{"unitsAvailable":1}`, Header: map[string]string{"If-Match": s.ifMatch}})
		if r.Status != s.want || r.Header.Get("ETag") != s.etag {
			t.Fatalf("If-Match %s = %d ETag %q %s, want %d %s", s.ifMatch, r.Status, r.Header.Get("ETag"), r.Body, s.want, s.etag)
		}
	}
	if r := g.do(t, request{Method: http.MethodDelete, Path: path, Header: map[string]string{"If-Match": `"4"`}}); r.Status != http.StatusNoContent {
		t.Fatalf("DELETE If-Match \"4\" = %d %s", r.Status, r.Body)
	}
}

// TestConcurrentUpdates hammers one product from many clients: every update
// gets its own version, none is lost, and the change log has each version once.
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	g := newTestGateway(t, nil)
	p := g.create(t, macbook)
	path := "/products/" + strconv.FormatInt(p.ProductID, 10)
	const writers, each = 16, 15
	var wg sync.WaitGroup
	errs := make(chan string, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				method, body := http.MethodPatch, fmt.Sprintf(`{"unitsAvailable":%d}`, w*100+i)
				if i%2 == 1 {
					method, body = http.MethodPut, fmt.Sprintf(`{"manufacturer":"W%d","productName":"P","pricePerUnit":"%dEUR","unitsAvailable":%d}`, w, i, i)
				}
				r := g.do(t, request{Method: method, Path: path, Body: body})
				if r.Status != http.StatusOK {
					errs <- fmt.Sprintf("%s = %d %s", method, r.Status, r.Body)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	final := decodeProduct(t, g.do(t, request{Method: http.MethodGet, Path: path}))
	if want := int64(1 + writers*each); final.Version != want {
		t.Errorf("final version %d, want %d", final.Version, want)
	}
	var n, distinct, lo, hi int64
	err := g.DB.QueryRow(`SELECT count(*), count(DISTINCT version), min(version), max(version)
		FROM product_changes WHERE product_id = $1 AND action = 'UPDATE'`, p.ProductID).Scan(&n, &distinct, &lo, &hi)
	if err != nil {
		t.Fatal(err)
	}
	if n != writers*each || distinct != n || lo != 2 || hi != 1+writers*each {
		t.Errorf("change log: %d updates, %d distinct versions, %d..%d", n, distinct, lo, hi)
	}
}
