package api_test

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/productwatch/productwatch/api"
)

// loadDocument loads and validates api.OpenAPI, as any client of the
// contract would.
func loadDocument(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load api/openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("validate api/openapi.yaml: %v", err)
	}
	return doc
}

func TestOpenAPILoadsAndValidates(t *testing.T) {
	doc := loadDocument(t)
	if doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi = %q, want 3.0.3", doc.OpenAPI)
	}
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "/" {
		t.Errorf("servers = %v, want the one relative server \"/\"", doc.Servers)
	}
	if doc.Info == nil || strings.TrimSpace(doc.Info.Description) == "" {
		t.Error("info has no description")
	}
}

// operations are the documented operations, by "METHOD /path".
var operations = []struct {
	name     string // "METHOD /path"
	write    bool   // needs the bearer token
	statuses []int
}{
	{name: "GET /products", statuses: []int{200, 400, 500, 503}},
	{name: "POST /products", write: true, statuses: []int{201, 400, 401, 413, 415, 500, 503}},
	{name: "GET /products/{productId}", statuses: []int{200, 304, 400, 404, 500, 503}},
	{name: "PUT /products/{productId}", write: true, statuses: []int{200, 400, 401, 404, 412, 413, 415, 500, 503}},
	{name: "PATCH /products/{productId}", write: true, statuses: []int{200, 400, 401, 404, 412, 413, 415, 500, 503}},
	{name: "DELETE /products/{productId}", write: true, statuses: []int{204, 400, 401, 404, 412, 500, 503}},
	{name: "GET /healthz", statuses: []int{200}},
	{name: "GET /readyz", statuses: []int{200, 503}},
}

// TestOperations pins the routes, their statuses and their security, and
// checks that each is documented for a human reader.
func TestOperations(t *testing.T) {
	doc := loadDocument(t)
	documented := 0
	for _, item := range doc.Paths.Map() {
		documented += len(item.Operations())
	}
	if documented != len(operations) {
		t.Errorf("the document has %d operations, the test knows %d", documented, len(operations))
	}
	for _, tc := range operations {
		t.Run(tc.name, func(t *testing.T) {
			method, path, _ := strings.Cut(tc.name, " ")
			item := doc.Paths.Value(path)
			if item == nil {
				t.Fatalf("path %s is not documented", path)
			}
			op := item.GetOperation(method)
			if op == nil {
				t.Fatalf("%s is not documented", tc.name)
			}
			if op.OperationID == "" || op.Summary == "" || op.Description == "" {
				t.Errorf("operationId %q, summary %q, description %q: all three are required", op.OperationID, op.Summary, op.Description)
			}
			var statuses []int
			for code := range op.Responses.Map() {
				n, err := strconv.Atoi(code)
				if err != nil {
					t.Errorf("response %q: only explicit status codes are documented", code)
					continue
				}
				statuses = append(statuses, n)
			}
			slices.Sort(statuses)
			if !slices.Equal(statuses, tc.statuses) {
				t.Errorf("statuses = %v, want %v", statuses, tc.statuses)
			}
			secured := op.Security != nil && len(*op.Security) > 0
			if secured != tc.write {
				t.Errorf("needs the bearer token: %v, want %v", secured, tc.write)
			}
			if secured {
				if _, ok := (*op.Security)[0]["bearerAuth"]; !ok || len(*op.Security) != 1 {
					t.Errorf("security = %v, want bearerAuth alone", *op.Security)
				}
			}
		})
	}
}

// TestErrorResponses checks that every product operation's 4xx and 5xx
// answer is an Error body: the one error shape of the API.
func TestErrorResponses(t *testing.T) {
	doc := loadDocument(t)
	for _, tc := range operations {
		method, path, _ := strings.Cut(tc.name, " ")
		if !strings.HasPrefix(path, "/products") {
			continue // probes have their own bodies
		}
		op := doc.Paths.Value(path).GetOperation(method)
		for code, ref := range op.Responses.Map() {
			if n, _ := strconv.Atoi(code); n < 400 {
				continue
			}
			t.Run(tc.name+" "+code, func(t *testing.T) {
				media := ref.Value.Content.Get("application/json")
				if media == nil || media.Schema == nil {
					t.Fatal("no application/json schema")
				}
				if !isErrorSchema(media.Schema) {
					t.Errorf("schema %s is not the Error schema (or allOf it)", media.Schema.RefString())
				}
				if ref.Value.Description == nil || *ref.Value.Description == "" {
					t.Error("no description")
				}
			})
		}
	}
}

// isErrorSchema reports whether s is #/components/schemas/Error or an allOf
// that includes it.
func isErrorSchema(s *openapi3.SchemaRef) bool {
	const errorRef = "#/components/schemas/Error"
	if s.Ref == errorRef {
		return true
	}
	return slices.ContainsFunc(s.Value.AllOf, func(sub *openapi3.SchemaRef) bool { return sub.Ref == errorRef })
}

// example is one example value of the document and the schema it must match.
type example struct {
	name   string
	schema *openapi3.Schema
	value  any
	opts   []openapi3.SchemaValidationOption
}

// collectExamples gathers every example of the document: component schemas,
// parameters, headers, request bodies (validated as requests) and responses
// (validated as responses).
func collectExamples(t *testing.T, doc *openapi3.T) []example {
	t.Helper()
	var all []example
	asRequest := []openapi3.SchemaValidationOption{openapi3.VisitAsRequest()}
	asResponse := []openapi3.SchemaValidationOption{openapi3.VisitAsResponse()}
	addMedia := func(where string, content openapi3.Content, opts []openapi3.SchemaValidationOption) {
		for mediaType, media := range content {
			if media.Schema == nil {
				continue
			}
			if media.Example != nil {
				all = append(all, example{where + " " + mediaType, media.Schema.Value, media.Example, opts})
			}
			for name, ex := range media.Examples {
				all = append(all, example{where + " " + mediaType + " " + name, media.Schema.Value, ex.Value.Value, opts})
			}
		}
	}
	addParameter := func(where string, p *openapi3.Parameter) {
		if p.Example != nil && p.Schema != nil {
			all = append(all, example{where, p.Schema.Value, p.Example, nil})
		}
	}
	for name, s := range doc.Components.Schemas {
		if s.Value.Example == nil {
			t.Errorf("components/schemas/%s has no example", name)
			continue
		}
		all = append(all, example{"schema " + name, s.Value, s.Value.Example, nil})
	}
	for name, p := range doc.Components.Parameters {
		addParameter("parameter "+name, p.Value)
	}
	for name, h := range doc.Components.Headers {
		addParameter("header "+name, &h.Value.Parameter)
	}
	for name, b := range doc.Components.RequestBodies {
		addMedia("requestBody "+name, b.Value.Content, asRequest)
	}
	for name, r := range doc.Components.Responses {
		addMedia("response "+name, r.Value.Content, asResponse)
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.RequestBody != nil && op.RequestBody.Ref == "" {
				addMedia(where+" requestBody", op.RequestBody.Value.Content, asRequest)
			}
			for code, r := range op.Responses.Map() {
				if r.Ref == "" {
					addMedia(where+" "+code, r.Value.Content, asResponse)
				}
			}
		}
	}
	slices.SortFunc(all, func(a, b example) int { return strings.Compare(a.name, b.name) })
	return all
}

func TestExamplesMatchTheirSchemas(t *testing.T) {
	doc := loadDocument(t)
	examples := collectExamples(t, doc)
	if len(examples) < 40 {
		t.Errorf("found %d examples; the walk over the document is broken", len(examples))
	}
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			if err := ex.schema.VisitJSON(ex.value, append(ex.opts, openapi3.MultiErrors())...); err != nil {
				t.Errorf("example %v does not match its schema: %v", ex.value, err)
			}
		})
	}
}

// TestSchemas pins the constraints of the product schemas with values the
// gateway accepts or refuses.
func TestSchemas(t *testing.T) {
	doc := loadDocument(t)
	product := map[string]any{
		"productId": 42, "manufacturer": "Acme", "productName": "Skates", "pricePerUnit": "12.50USD",
		"unitsAvailable": 12, "version": 7, "updatedAt": "2026-11-25T01:02:03.456789Z",
	}
	// with returns a copy of base with key set to value (nil: JSON null).
	with := func(base map[string]any, key string, value any) map[string]any {
		out := maps.Clone(base)
		out[key] = value
		return out
	}
	// without returns a copy of base without key.
	without := func(base map[string]any, keys ...string) map[string]any {
		out := maps.Clone(base)
		for _, k := range keys {
			delete(out, k)
		}
		return out
	}
	input := without(product, "productId", "version", "updatedAt")
	cases := []struct {
		name   string
		schema string
		value  any
		valid  bool
	}{
		{"price integer", "PricePerUnit", "500EUR", true},
		{"price with cents", "PricePerUnit", "12.50USD", true},
		{"price zero", "PricePerUnit", "0JPY", true},
		{"price zero with decimals", "PricePerUnit", "0.000001EUR", true},
		{"price 15 integer digits", "PricePerUnit", "999999999999999EUR", true},
		{"price 16 integer digits", "PricePerUnit", "1000000000000000EUR", false},
		{"price 7 decimals", "PricePerUnit", "1.1234567EUR", false},
		{"price leading zero", "PricePerUnit", "012EUR", false},
		{"price trailing point", "PricePerUnit", "1.EUR", false},
		{"price negative", "PricePerUnit", "-1EUR", false},
		{"price exponent", "PricePerUnit", "1e3EUR", false},
		{"price lower-case code", "PricePerUnit", "12.50usd", false},
		{"price space", "PricePerUnit", "12.50 USD", false},
		{"price without code", "PricePerUnit", "12.50", false},
		{"manufacturer empty", "Manufacturer", "", false},
		{"manufacturer 4096 runes", "Manufacturer", strings.Repeat("é", 4096), true},
		{"manufacturer 4097 runes", "Manufacturer", strings.Repeat("é", 4097), false},
		{"units negative", "UnitsAvailable", -1, false},
		{"units int32 max", "UnitsAvailable", 2147483647, true},
		{"units beyond int32", "UnitsAvailable", 2147483648, false},
		{"product", "Product", product, true},
		{"product without version", "Product", without(product, "version"), false},
		{"product with unknown field", "Product", with(product, "color", "red"), false},
		{"product id zero", "Product", with(product, "productId", 0), false},
		{"product version zero", "Product", with(product, "version", 0), false},
		{"product updatedAt without microseconds", "Product", with(product, "updatedAt", "2026-11-25T01:02:03Z"), false},
		{"product updatedAt not UTC", "Product", with(product, "updatedAt", "2026-11-25T01:02:03.456789+01:00"), false},
		{"input", "ProductInput", input, true},
		{"input from GET", "ProductInput", product, true},
		{"input with productId 0", "ProductInput", with(input, "productId", 0), true},
		{"input with null productId", "ProductInput", with(input, "productId", nil), true},
		{"input with negative productId", "ProductInput", with(input, "productId", -1), false},
		{"input without price", "ProductInput", without(input, "pricePerUnit"), false},
		{"input with null price", "ProductInput", with(input, "pricePerUnit", nil), false},
		{"input with unknown field", "ProductInput", with(input, "color", "red"), false},
		{"patch empty", "ProductPatch", map[string]any{}, true},
		{"patch units", "ProductPatch", map[string]any{"unitsAvailable": 0}, true},
		{"patch null", "ProductPatch", map[string]any{"manufacturer": nil}, false},
		{"patch unknown field", "ProductPatch", map[string]any{"color": "red"}, false},
		{"patch GET result", "ProductPatch", product, true},
		{"error without message", "Error", map[string]any{"error": map[string]any{"code": "internal"}}, false},
		{"error with unknown code", "Error", map[string]any{"error": map[string]any{"code": "oops", "message": "x"}}, false},
		{"error with field", "Error", map[string]any{"error": map[string]any{"code": "invalid_body", "message": "x", "field": "manufacturer"}}, true},
		{"readiness", "Readiness", map[string]any{"status": "not ready"}, true},
		{"readiness with details", "Readiness", map[string]any{"status": "ready", "checks": map[string]any{"nats": "ok"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref := doc.Components.Schemas[tc.schema]
			if ref == nil {
				t.Fatalf("no schema %s", tc.schema)
			}
			err := ref.Value.VisitJSON(normalize(tc.value))
			if tc.valid && err != nil {
				t.Errorf("%s refused %v: %v", tc.schema, tc.value, err)
			}
			if !tc.valid && err == nil {
				t.Errorf("%s accepted %v", tc.schema, tc.value)
			}
		})
	}
}

// normalize turns Go ints into float64, the type JSON numbers decode to.
func normalize(v any) any {
	switch v := v.(type) {
	case int:
		return float64(v)
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = normalize(e)
		}
		return out
	default:
		return v
	}
}

func TestOpenAPIIsEmbedded(t *testing.T) {
	if !strings.HasPrefix(string(api.OpenAPI), "openapi: 3.0.3\n") {
		t.Errorf("api.OpenAPI starts with %q", fmt.Sprintf("%.20s", api.OpenAPI))
	}
}
