package main

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/productwatch/productwatch/pkg/product"
)

// Defaults of GET /products.
const defaultListLimit = 100

// productHandlers serve /products. Each handler parses the request, calls the
// store and writes the product JSON the database rendered, untouched.
type productHandlers struct {
	store           *product.Store
	maxBodyBytes    int64
	bodyReadTimeout time.Duration // the body must arrive within this
}

func (h *productHandlers) list(c echo.Context) error {
	after, err := queryInt(c, "after", 0, 0, 1<<63-1)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", defaultListLimit, 1, product.MaxListLimit)
	if err != nil {
		return err
	}
	records, err := h.store.List(c.Request().Context(), after, int(limit))
	if err != nil {
		return err
	}
	size := 32
	for _, r := range records {
		size += len(r.JSON) + 1
	}
	body := bytes.NewBuffer(make([]byte, 0, size+64))
	body.WriteString(`{"products":[`)
	for i, r := range records {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(r.JSON)
	}
	body.WriteByte(']')
	if len(records) == int(limit) {
		next := "/products?after=" + strconv.FormatInt(records[len(records)-1].ID, 10) + "&limit=" + strconv.FormatInt(limit, 10)
		c.Response().Header().Set("Link", "<"+next+`>; rel="next"`)
		body.WriteString(`,"next":"` + next + `"`)
	}
	body.WriteByte('}')
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, body.Bytes())
}

func (h *productHandlers) get(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	r, err := h.store.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	setETag(c, r.Version)
	if inm := c.Request().Header.Get("If-None-Match"); inm != "" && etagListMatches(inm, r.Version) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, r.JSON)
}

func (h *productHandlers) create(c echo.Context) error {
	body, err := h.readBody(c, echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	in, err := product.DecodeInput(body)
	if err != nil {
		return err
	}
	if in.ProductID != 0 {
		return &product.InputError{Code: product.CodeUsePut, Field: "productId",
			Message: "productId must be 0 or absent: the database assigns ids; to change product " +
				strconv.FormatInt(in.ProductID, 10) + " use PUT /products/" + strconv.FormatInt(in.ProductID, 10)}
	}
	r, err := h.store.Create(c.Request().Context(), in.Fields)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", "/products/"+strconv.FormatInt(r.ID, 10))
	setETag(c, r.Version)
	return c.Blob(http.StatusCreated, echo.MIMEApplicationJSON, r.JSON)
}

func (h *productHandlers) replace(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	pre, err := ifMatch(c)
	if err != nil {
		return err
	}
	body, err := h.readBody(c, echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	in, err := product.DecodeInput(body)
	if err != nil {
		return err
	}
	if err := checkBodyID(in.ProductID, id); err != nil {
		return err
	}
	r, err := h.store.Replace(c.Request().Context(), id, in.Fields, pre)
	if err != nil {
		return err
	}
	setETag(c, r.Version)
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, r.JSON)
}

// mimeMergePatch is the media type of a JSON merge patch (RFC 7396).
const mimeMergePatch = "application/merge-patch+json"

func (h *productHandlers) patch(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	pre, err := ifMatch(c)
	if err != nil {
		return err
	}
	body, err := h.readBody(c, mimeMergePatch, echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	p, err := product.DecodePatch(body)
	if err != nil {
		return err
	}
	if err := checkBodyID(p.ProductID, id); err != nil {
		return err
	}
	r, err := h.store.Patch(c.Request().Context(), id, p, pre)
	if err != nil {
		return err
	}
	setETag(c, r.Version)
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, r.JSON)
}

func (h *productHandlers) delete(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	pre, err := ifMatch(c)
	if err != nil {
		return err
	}
	if err := h.store.Delete(c.Request().Context(), id, pre); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// readBody checks the Content-Type against the accepted media types and reads
// the body, at most maxBodyBytes of it (*http.MaxBytesError beyond: 413).
func (h *productHandlers) readBody(c echo.Context, accepted ...string) ([]byte, error) {
	req := c.Request()
	mediaType, _, err := mime.ParseMediaType(req.Header.Get("Content-Type"))
	ok := false
	for _, a := range accepted {
		ok = ok || (err == nil && mediaType == a)
	}
	if !ok {
		return nil, &apiError{Status: http.StatusUnsupportedMediaType, Code: codeUnsupportedMediaType,
			Message: "Content-Type must be " + strings.Join(accepted, " or ") + ", not " + strconv.Quote(req.Header.Get("Content-Type"))}
	}
	if req.ContentLength > h.maxBodyBytes {
		return nil, &http.MaxBytesError{Limit: h.maxBodyBytes}
	}
	// A body shorter than its Content-Length would otherwise hold the
	// request until the server's read timeout, then look like a server
	// failure.
	if h.bodyReadTimeout > 0 {
		_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(h.bodyReadTimeout))
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), req.Body, h.maxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil, errors.As(err, &tooLarge):
		return body, err
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, &apiError{Status: http.StatusBadRequest, Code: product.CodeInvalidBody,
			Message: "the request body did not arrive within " + h.bodyReadTimeout.String() + " (is Content-Length larger than the body?)"}
	default:
		return nil, &apiError{Status: http.StatusBadRequest, Code: product.CodeInvalidBody,
			Message: "the request body ended early: it is shorter than its Content-Length, or was cut off"}
	}
}

// checkBodyID refuses a body whose productId names another product than the
// path.
func checkBodyID(bodyID, pathID int64) error {
	if bodyID != 0 && bodyID != pathID {
		return &product.InputError{Code: product.CodeInvalidBody, Field: "productId",
			Message: "productId " + strconv.FormatInt(bodyID, 10) + " does not match the path's " + strconv.FormatInt(pathID, 10) + " (omit it or send the same id)"}
	}
	return nil
}

// pathID parses the :id path parameter: a positive int64.
func pathID(c echo.Context) (int64, error) {
	raw := c.Param("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return 0, &apiError{Status: http.StatusBadRequest, Code: codeInvalidParameter, Field: "productId",
			Message: "product id must be an integer from 1 to 9223372036854775807, not " + strconv.Quote(raw)}
	}
	return id, nil
}

// queryInt parses an optional integer query parameter within [lo, hi].
func queryInt(c echo.Context, name string, def, lo, hi int64) (int64, error) {
	raw := c.QueryParam(name)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, &apiError{Status: http.StatusBadRequest, Code: codeInvalidParameter, Field: name,
			Message: name + " must be an integer from " + strconv.FormatInt(lo, 10) + " to " + strconv.FormatInt(hi, 10) + ", not " + strconv.Quote(raw)}
	}
	return n, nil
}

// setETag sets the ETag of a product: its version, quoted.
func setETag(c echo.Context, version int64) {
	c.Response().Header().Set("ETag", `"`+strconv.FormatInt(version, 10)+`"`)
}

// ifMatch turns an If-Match header into a store precondition: absent or "*"
// (the product must exist, which every write checks anyway) put no condition
// on the version; otherwise a list of quoted versions. Weak tags never match
// (If-Match uses strong comparison), so they are refused as an error rather
// than failing every time.
func ifMatch(c echo.Context) (product.Precondition, error) {
	header := strings.TrimSpace(c.Request().Header.Get("If-Match"))
	if header == "" || header == "*" {
		return product.Precondition{}, nil
	}
	var pre product.Precondition
	for _, tag := range strings.Split(header, ",") {
		v, ok := parseETag(strings.TrimSpace(tag))
		if !ok {
			return product.Precondition{}, &apiError{Status: http.StatusBadRequest, Code: codeInvalidParameter, Field: "If-Match",
				Message: `If-Match must be "*" or quoted versions such as "7" (comma-separated), not ` + strconv.Quote(header)}
		}
		pre.Versions = append(pre.Versions, v)
	}
	return pre, nil
}

// etagListMatches reports whether an If-None-Match header matches version
// (weak comparison, as If-None-Match uses).
func etagListMatches(header string, version int64) bool {
	if strings.TrimSpace(header) == "*" {
		return true
	}
	for _, tag := range strings.Split(header, ",") {
		tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
		if v, ok := parseETag(tag); ok && v == version {
			return true
		}
	}
	return false
}

// parseETag parses a strong entity tag holding a version: "7".
func parseETag(tag string) (int64, bool) {
	if len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		return 0, false
	}
	v, err := strconv.ParseInt(tag[1:len(tag)-1], 10, 64)
	return v, err == nil && v > 0
}
