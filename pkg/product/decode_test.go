package product

import (
	"errors"
	"strings"
	"testing"
)

const validBody = `{"manufacturer":"Apple","productName":"MacBook Pro","pricePerUnit":"500EUR","unitsAvailable":6}`

func TestDecodeInput(t *testing.T) {
	long := strings.Repeat("é", MaxTextLength)
	tests := []struct {
		name      string
		body      string
		want      Input
		wantCode  string
		wantField string
	}{
		{name: "valid", body: validBody, want: Input{Fields: Fields{"Apple", "MacBook Pro", Price{"500", "EUR"}, 6}}},
		{name: "with id and read-only fields", body: `{"productId":7,"manufacturer":"A","productName":"B","pricePerUnit":"1.5USD","unitsAvailable":0,"version":3,"updatedAt":"2026-11-25T01:02:03.456789Z"}`,
			want: Input{ProductID: 7, Fields: Fields{"A", "B", Price{"1.5", "USD"}, 0}}},
		{name: "null read-only fields", body: `{"productId":null,"version":null,"updatedAt":null,"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`,
			want: Input{Fields: Fields{"A", "B", Price{"1", "USD"}, 1}}},
		{name: "4096 characters", body: `{"manufacturer":"` + long + `","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`,
			want: Input{Fields: Fields{long, "B", Price{"1", "USD"}, 1}}},
		{name: "4097 characters", body: `{"manufacturer":"` + long + `x","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "manufacturer"},
		{name: "empty body", body: ``, wantCode: CodeInvalidJSON},
		{name: "malformed", body: `{"manufacturer":`, wantCode: CodeInvalidJSON},
		{name: "trailing data", body: validBody + `{}`, wantCode: CodeInvalidJSON},
		{name: "array", body: `[1]`, wantCode: CodeInvalidBody},
		{name: "null body", body: `null`, wantCode: CodeInvalidBody},
		{name: "invalid utf-8", body: "{\"manufacturer\":\"\xff\",\"productName\":\"B\",\"pricePerUnit\":\"1USD\",\"unitsAvailable\":1}", wantCode: CodeInvalidJSON},
		{name: "unknown field", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1,"colour":"red"}`, wantCode: CodeInvalidBody, wantField: "colour"},
		{name: "field names are case-sensitive", body: `{"Manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "Manufacturer"},
		{name: "missing field", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD"}`, wantCode: CodeInvalidBody, wantField: "unitsAvailable"},
		{name: "null field", body: `{"manufacturer":null,"productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "manufacturer"},
		{name: "units as string", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":"5"}`, wantCode: CodeInvalidBody, wantField: "unitsAvailable"},
		{name: "units fractional", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1.5}`, wantCode: CodeInvalidBody, wantField: "unitsAvailable"},
		{name: "units negative", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":-1}`, wantCode: CodeInvalidBody, wantField: "unitsAvailable"},
		{name: "units over int32", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":2147483648}`, wantCode: CodeInvalidBody, wantField: "unitsAvailable"},
		{name: "name as number", body: `{"manufacturer":"A","productName":5,"pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "productName"},
		{name: "blank name", body: `{"manufacturer":"A","productName":"  ","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "productName"},
		{name: "NUL in name", body: `{"manufacturer":"A","productName":"a\u0000b","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "productName"},
		{name: "bad price", body: `{"manufacturer":"A","productName":"B","pricePerUnit":"5 euros","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "pricePerUnit"},
		{name: "price as number", body: `{"manufacturer":"A","productName":"B","pricePerUnit":5,"unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "pricePerUnit"},
		{name: "negative id", body: `{"productId":-1,"manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "productId"},
		{name: "version as string", body: `{"version":"3","manufacturer":"A","productName":"B","pricePerUnit":"1USD","unitsAvailable":1}`, wantCode: CodeInvalidBody, wantField: "version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeInput([]byte(tc.body))
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("DecodeInput: %v", err)
				}
				if got != tc.want {
					t.Errorf("DecodeInput = %+v, want %+v", got, tc.want)
				}
				return
			}
			var inputErr *InputError
			if !errors.As(err, &inputErr) {
				t.Fatalf("DecodeInput error = %v, want *InputError", err)
			}
			if inputErr.Code != tc.wantCode || inputErr.Field != tc.wantField || inputErr.Message == "" {
				t.Errorf("error = %+v, want code %q field %q and a message", inputErr, tc.wantCode, tc.wantField)
			}
		})
	}
}

func TestDecodePatch(t *testing.T) {
	base := Fields{"Apple", "MacBook", Price{"500", "EUR"}, 6}
	tests := []struct {
		name     string
		body     string
		want     Fields
		wantID   int64
		wantCode string
	}{
		{name: "empty patch", body: `{}`, want: base},
		{name: "units only", body: `{"unitsAvailable":0}`, want: Fields{"Apple", "MacBook", Price{"500", "EUR"}, 0}},
		{name: "price and name", body: `{"pricePerUnit":"9.99USD","productName":"Air"}`, want: Fields{"Apple", "Air", Price{"9.99", "USD"}, 6}},
		{name: "same id", body: `{"productId":4,"manufacturer":"Dell"}`, want: Fields{"Dell", "MacBook", Price{"500", "EUR"}, 6}, wantID: 4},
		{name: "null removes nothing", body: `{"unitsAvailable":null}`, wantCode: CodeInvalidBody},
		{name: "unknown", body: `{"stock":1}`, wantCode: CodeInvalidBody},
		{name: "malformed", body: `{"stock"`, wantCode: CodeInvalidJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := DecodePatch([]byte(tc.body))
			if tc.wantCode != "" {
				var inputErr *InputError
				if !errors.As(err, &inputErr) || inputErr.Code != tc.wantCode {
					t.Fatalf("DecodePatch error = %v, want code %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Apply(base); got != tc.want || p.ProductID != tc.wantID {
				t.Errorf("Apply = %+v (id %d), want %+v (id %d)", got, p.ProductID, tc.want, tc.wantID)
			}
		})
	}
}

// FuzzDecodeInput feeds arbitrary bytes to the request body decoders: they
// must never panic, must classify every refusal, and whatever they accept
// must satisfy the same limits the database enforces.
func FuzzDecodeInput(f *testing.F) {
	seeds := []string{
		validBody, `{}`, `[]`, `null`, ``, `{"manufacturer":null}`, `{"productId":1e3}`,
		`{"manufacturer":"A","productName":"B","pricePerUnit":"1.5USD","unitsAvailable":2147483647,"version":1,"updatedAt":"x"}`,
		`{"unitsAvailable":-0}`, `{"a":1,"a":2}`, "{\"manufacturer\":\"\\u0000\"}", `{"pricePerUnit":"٥EUR"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeInput(data)
		checkDecoded(t, err, &in.Fields, in.ProductID)
		p, err := DecodePatch(data)
		if err == nil {
			applied := p.Apply(Fields{"m", "n", Price{"1", "EUR"}, 1})
			checkDecoded(t, nil, &applied, p.ProductID)
		} else {
			checkDecoded(t, err, nil, 0)
		}
	})
}

func checkDecoded(t *testing.T, err error, f *Fields, id int64) {
	t.Helper()
	if err != nil {
		var inputErr *InputError
		if !errors.As(err, &inputErr) || inputErr.Message == "" {
			t.Fatalf("unclassified error %v", err)
		}
		switch inputErr.Code {
		case CodeInvalidJSON, CodeInvalidBody:
		default:
			t.Fatalf("unexpected code %q", inputErr.Code)
		}
		return
	}
	if id < 0 || f.UnitsAvailable < 0 {
		t.Fatalf("accepted negative id or units: %d %+v", id, f)
	}
	for _, s := range []string{f.Manufacturer, f.ProductName} {
		if strings.TrimSpace(s) == "" || strings.ContainsRune(s, 0) || len([]rune(s)) > MaxTextLength {
			t.Fatalf("accepted text %q", s)
		}
	}
	if _, err := ParsePrice(f.Price.String()); err != nil {
		t.Fatalf("accepted price %+v: %v", f.Price, err)
	}
}
