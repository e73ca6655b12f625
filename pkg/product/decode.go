package product

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// MaxTextLength is the most characters (Unicode code points) that
// manufacturer and productName may hold. The database checks it too.
const MaxTextLength = 4096

// Codes of [InputError], as they appear in the API's error bodies.
const (
	CodeInvalidJSON = "invalid_json" // not JSON, or more than one value
	CodeInvalidBody = "invalid_body" // JSON, but not a valid product
	CodeUsePut      = "use_put"      // POST with a non-zero productId
)

// InputError says why a request body was refused. Code is one of the Code
// constants; Field names the JSON field at fault, when there is one.
type InputError struct {
	Code    string
	Field   string
	Message string
}

func (e *InputError) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

func invalidField(field, format string, args ...any) *InputError {
	return &InputError{Code: CodeInvalidBody, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Fields are the parts of a product a client writes. productId, version and
// updatedAt belong to the database.
type Fields struct {
	Manufacturer   string
	ProductName    string
	Price          Price
	UnitsAvailable int32
}

// Input is a decoded POST or PUT body: every field, and the productId the
// client named (0 when absent).
type Input struct {
	ProductID int64
	Fields
}

// Patch is a decoded JSON merge patch (RFC 7396): nil means "leave as is".
// ProductID is the id the client named, 0 when absent.
type Patch struct {
	ProductID      int64
	Manufacturer   *string
	ProductName    *string
	Price          *Price
	UnitsAvailable *int32
}

// Apply returns f with the patch's fields replaced.
func (p Patch) Apply(f Fields) Fields {
	if p.Manufacturer != nil {
		f.Manufacturer = *p.Manufacturer
	}
	if p.ProductName != nil {
		f.ProductName = *p.ProductName
	}
	if p.Price != nil {
		f.Price = *p.Price
	}
	if p.UnitsAvailable != nil {
		f.UnitsAvailable = *p.UnitsAvailable
	}
	return f
}

// JSON field names of a product.
const (
	fieldProductID      = "productId"
	fieldManufacturer   = "manufacturer"
	fieldProductName    = "productName"
	fieldPricePerUnit   = "pricePerUnit"
	fieldUnitsAvailable = "unitsAvailable"
	fieldVersion        = "version"
	fieldUpdatedAt      = "updatedAt"
)

// DecodeInput decodes a POST or PUT body strictly: one JSON object, field
// names matched exactly, no unknown fields, every writable field present and
// valid. version and updatedAt are accepted and ignored, so that a product
// read with GET can be sent back as it is (If-Match is the concurrency
// control). Errors are *InputError.
func DecodeInput(data []byte) (Input, error) {
	p, err := decodeFields(data, true)
	if err != nil {
		return Input{}, err
	}
	return Input{ProductID: p.ProductID, Fields: p.Apply(Fields{})}, nil
}

// DecodePatch decodes a JSON merge patch body: like [DecodeInput], but every
// field is optional. null is refused, since no field of a product can be
// removed. Errors are *InputError.
func DecodePatch(data []byte) (Patch, error) {
	return decodeFields(data, false)
}

func decodeFields(data []byte, requireAll bool) (Patch, error) {
	obj, err := decodeObject(data)
	if err != nil {
		return Patch{}, err
	}
	var p Patch
	for name, raw := range obj {
		if isNull(raw) {
			if name == fieldVersion || name == fieldUpdatedAt || name == fieldProductID {
				continue
			}
			if requireAll {
				return Patch{}, invalidField(name, "must not be null")
			}
			return Patch{}, invalidField(name, "must not be null: fields of a product cannot be removed")
		}
		switch name {
		case fieldProductID:
			if p.ProductID, err = decodeInt(name, raw, math.MinInt64, math.MaxInt64); err != nil {
				return Patch{}, err
			}
			if p.ProductID < 0 {
				return Patch{}, invalidField(name, "must not be negative")
			}
		case fieldManufacturer:
			if p.Manufacturer, err = decodeText(name, raw); err != nil {
				return Patch{}, err
			}
		case fieldProductName:
			if p.ProductName, err = decodeText(name, raw); err != nil {
				return Patch{}, err
			}
		case fieldPricePerUnit:
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return Patch{}, invalidField(name, "must be a string, like \"12.50EUR\"")
			}
			price, err := ParsePrice(s)
			if err != nil {
				return Patch{}, invalidField(name, "%s", err.Error())
			}
			p.Price = &price
		case fieldUnitsAvailable:
			n, err := decodeInt(name, raw, math.MinInt32, math.MaxInt32)
			if err != nil {
				return Patch{}, err
			}
			if n < 0 {
				return Patch{}, invalidField(name, "must not be negative")
			}
			units := int32(n)
			p.UnitsAvailable = &units
		case fieldVersion:
			// Read-only: accepted so that a GET result can be sent back.
			if _, err := decodeInt(name, raw, math.MinInt64, math.MaxInt64); err != nil {
				return Patch{}, err
			}
		case fieldUpdatedAt:
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return Patch{}, invalidField(name, "must be a string (it is read-only and ignored)")
			}
		default:
			return Patch{}, invalidField(name, "unknown field (known fields: productId, manufacturer, productName, pricePerUnit, unitsAvailable)")
		}
	}
	if requireAll {
		for _, name := range [...]string{fieldManufacturer, fieldProductName, fieldPricePerUnit, fieldUnitsAvailable} {
			if _, ok := obj[name]; !ok {
				return Patch{}, invalidField(name, "is required")
			}
		}
	}
	return p, nil
}

// decodeObject parses data as exactly one JSON object.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		// encoding/json would silently turn the bad bytes into U+FFFD.
		return nil, &InputError{Code: CodeInvalidJSON, Message: "body is not valid UTF-8"}
	}
	var obj map[string]json.RawMessage
	err := json.Unmarshal(data, &obj)
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil && obj == nil:
		return nil, &InputError{Code: CodeInvalidBody, Message: "body must be a JSON object, not null"}
	case err == nil:
		return obj, nil
	case errors.As(err, &syntaxErr):
		return nil, &InputError{Code: CodeInvalidJSON, Message: fmt.Sprintf("malformed JSON at byte %d: %s", syntaxErr.Offset, strings.TrimPrefix(syntaxErr.Error(), "json: "))}
	case errors.As(err, &typeErr):
		return nil, &InputError{Code: CodeInvalidBody, Message: "body must be a JSON object, not " + typeErr.Value}
	case len(bytes.TrimSpace(data)) == 0:
		return nil, &InputError{Code: CodeInvalidJSON, Message: "empty body: a JSON object is required"}
	default:
		return nil, &InputError{Code: CodeInvalidJSON, Message: "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// decodeInt decodes a JSON integer within [lo, hi].
func decodeInt(name string, raw json.RawMessage, lo, hi int64) (int64, error) {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil || raw[0] == '"' {
		return 0, invalidField(name, "must be an integer")
	}
	v, err := n.Int64()
	if err != nil {
		return 0, invalidField(name, "must be an integer between %d and %d", lo, hi)
	}
	if v < lo || v > hi {
		return 0, invalidField(name, "must be an integer between %d and %d", lo, hi)
	}
	return v, nil
}

// decodeText decodes manufacturer or productName: a string of 1 to
// MaxTextLength characters, not blank, without NUL (PostgreSQL text cannot
// hold it). decodeObject has already refused invalid UTF-8.
func decodeText(name string, raw json.RawMessage) (*string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, invalidField(name, "must be a string")
	}
	switch {
	case strings.TrimSpace(s) == "":
		return nil, invalidField(name, "must not be empty")
	case utf8.RuneCountInString(s) > MaxTextLength:
		return nil, invalidField(name, "must be at most %d characters", MaxTextLength)
	case strings.IndexByte(s, 0) >= 0:
		return nil, invalidField(name, "must not contain NUL characters")
	}
	return &s, nil
}
