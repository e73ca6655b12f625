package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/productwatch/productwatch/pkg/health"
	"github.com/productwatch/productwatch/pkg/product"
)

// This file and products_http.go are the only ones that know echo: moving to
// echo v5 (v4 reaches end of life on 2026-12-31) touches these two.

// routerDeps is what the HTTP layer needs.
type routerDeps struct {
	logger       *slog.Logger
	store        *product.Store
	probes       *health.Probes
	registry     *prometheus.Registry
	websocket    http.Handler // /websocket: plain net/http, never wrapped in compression
	web          *webAssets   // the page and its assets
	apiToken     string
	maxBodyBytes int64
	// requestTimeout bounds the database work of a /products request;
	// bodyReadTimeout the arrival of its body.
	requestTimeout, bodyReadTimeout time.Duration
	hsts                            string // Strict-Transport-Security value for HTTPS responses; "": none
}

// newRouter builds the gateway's public HTTP handler: the REST API, the
// page, /websocket and terse probes, with request metrics, panic recovery
// and JSON errors. Metrics and detailed readiness are on newOpsHandler's
// private listener.
func newRouter(deps routerDeps) http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(deps.logger)

	metrics := newRequestMetrics(deps.registry)
	e.Use(metrics.middleware, middleware.Recover(), securityHeaders(deps.hsts))

	e.GET("/healthz", echo.WrapHandler(deps.probes.LiveHandler()))
	e.GET("/readyz", echo.WrapHandler(deps.probes.TerseReadyHandler()))
	e.GET("/websocket", echo.WrapHandler(deps.websocket))
	e.GET("/", echo.WrapHandler(http.HandlerFunc(deps.web.index)))
	for _, name := range deps.web.names() {
		handler := http.HandlerFunc(deps.web.file)
		if name == "/index.html" {
			handler = deps.web.index
		}
		e.GET(name, echo.WrapHandler(handler))
	}

	h := &productHandlers{store: deps.store, maxBodyBytes: deps.maxBodyBytes, bodyReadTimeout: deps.bodyReadTimeout}
	auth := requireToken(deps.apiToken)
	deadline := withDeadline(deps.requestTimeout)
	e.GET("/products", h.list, deadline)
	e.POST("/products", h.create, deadline, auth)
	e.GET("/products/:id", h.get, deadline)
	e.PUT("/products/:id", h.replace, deadline, auth)
	e.PATCH("/products/:id", h.patch, deadline, auth)
	e.DELETE("/products/:id", h.delete, deadline, auth)
	for _, r := range e.Routes() {
		metrics.routes[r.Path] = true
	}
	return e
}

// newOpsHandler serves the private listener (METRICS_ADDR): /metrics,
// /healthz and the detailed /readyz (each check's error text, which may
// name hosts and addresses, so it is not shown on the public port).
func newOpsHandler(probes *health.Probes, registry *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", health.MetricsHandler(registry))
	mux.Handle("GET /healthz", probes.LiveHandler())
	mux.Handle("GET /readyz", probes.ReadyHandler())
	return mux
}

// withDeadline gives a request's work (its database queries) at most
// timeout; past it the store's calls fail and classify answers 503
// unavailable, well before the server's write timeout would reset the
// stream without an answer.
func withDeadline(timeout time.Duration) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if timeout <= 0 {
				return next(c)
			}
			ctx, cancel := context.WithTimeout(c.Request().Context(), timeout)
			defer cancel()
			c.SetRequest(c.Request().WithContext(ctx))
			if err := next(c); err != nil {
				// Answered here, while ctx still tells a client that went
				// away (Canceled) from a deadline that passed.
				c.Error(err)
			}
			return nil
		}
	}
}

// errorHandler writes every error as the API's JSON error body; unexpected
// ones are logged once, here: server trouble (5xx) at ERROR or, for a
// database that did not answer, WARN; a client that went away at DEBUG,
// with nothing written (status 499 in the metrics).
func errorHandler(logger *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			err = fromEchoError(he)
		}
		api, unexpected := classify(c.Request().Context(), err)
		attrs := []any{"method", c.Request().Method, "path", c.Request().URL.Path, "status", api.Status, "err", err}
		switch {
		case api.Status == statusClientClosedRequest:
			logger.Debug("client went away before the answer", attrs...)
			c.Response().Status = api.Status // for the request metrics; nothing is sent
			return
		case unexpected && api.Status == http.StatusServiceUnavailable:
			logger.Warn("request failed", attrs...)
		case unexpected:
			logger.Error("request failed", attrs...)
		}
		if api.Status == http.StatusUnauthorized {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="productwatch"`)
		}
		if api.Status == http.StatusMethodNotAllowed {
			// echo has already set Allow.
			api.Message = "method " + c.Request().Method + " is not allowed here (allowed: " + c.Response().Header().Get("Allow") + ")"
		}
		if c.Request().Method == http.MethodHead {
			_ = c.NoContent(api.Status)
			return
		}
		_ = c.Blob(api.Status, echo.MIMEApplicationJSON, marshalError(api)) // the client may be gone
	}
}

// fromEchoError converts echo's own errors (unknown route, wrong method,
// body limits) to API errors.
func fromEchoError(he *echo.HTTPError) error {
	msg := http.StatusText(he.Code)
	switch he.Code {
	case http.StatusNotFound:
		return &apiError{Status: he.Code, Code: codeNotFound, Message: "no such route"}
	case http.StatusMethodNotAllowed:
		return &apiError{Status: he.Code, Code: codeMethodNotAllowed, Message: msg}
	case http.StatusRequestEntityTooLarge:
		return &apiError{Status: he.Code, Code: codeBodyTooLarge, Message: msg}
	case http.StatusUnauthorized:
		return &apiError{Status: he.Code, Code: codeUnauthorized, Message: msg}
	}
	if he.Code >= 500 {
		return he
	}
	return &apiError{Status: he.Code, Code: codeInvalidParameter, Message: msg}
}

// requireToken refuses requests without "Authorization: Bearer <token>".
// With no token configured, every write is refused: the safe default.
func requireToken(token string) echo.MiddlewareFunc {
	want := []byte(token)
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if token == "" {
				return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized,
					Message: "writes are disabled: the gateway has no API_TOKEN configured"}
			}
			// The auth scheme is case-insensitive (RFC 9110 section 11.1).
			scheme, got, _ := strings.Cut(strings.TrimSpace(c.Request().Header.Get("Authorization")), " ")
			if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
				return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized,
					Message: "missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>"}
			}
			return next(c)
		}
	}
}

// securityHeaders sets the headers every response carries, and
// Strict-Transport-Security (when hsts is set) on every HTTPS response:
// API answers, errors and the page alike.
func securityHeaders(hsts string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			h := c.Response().Header()
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Referrer-Policy", "no-referrer")
			if hsts != "" && c.Request().TLS != nil {
				h.Set("Strict-Transport-Security", hsts)
			}
			return next(c)
		}
	}
}

// requestMetrics counts requests and times them by route template, method
// and status.
type requestMetrics struct {
	routes   map[string]bool // the registered route templates; filled before serving, read-only after
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newRequestMetrics(reg prometheus.Registerer) *requestMetrics {
	m := &requestMetrics{
		routes: make(map[string]bool),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "productwatch_http_requests_total",
			Help: "HTTP requests answered, by route template, method and status code.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "productwatch_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route template, method and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method", "status"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *requestMetrics) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if err := next(c); err != nil {
			c.Error(err) // write the error now, so that its status is counted
		}
		route := c.Path()
		if !m.routes[route] {
			route = "unmatched" // keep label cardinality bounded
		}
		method := c.Request().Method
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		default:
			method = "other"
		}
		status := strconv.Itoa(c.Response().Status)
		m.requests.WithLabelValues(route, method, status).Inc()
		m.duration.WithLabelValues(route, method, status).Observe(time.Since(start).Seconds())
		return nil
	}
}
