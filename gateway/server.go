package main

import (
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
}

// newRouter builds the gateway's HTTP handler: the REST API, probes and
// metrics, with request metrics, panic recovery and JSON errors.
func newRouter(deps routerDeps) http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(deps.logger)

	metrics := newRequestMetrics(deps.registry)
	e.Use(metrics.middleware, middleware.Recover(), securityHeaders)

	e.GET("/healthz", echo.WrapHandler(deps.probes.LiveHandler()))
	e.GET("/readyz", echo.WrapHandler(deps.probes.ReadyHandler()))
	e.GET("/metrics", echo.WrapHandler(health.MetricsHandler(deps.registry)))
	e.GET("/websocket", echo.WrapHandler(deps.websocket))
	e.GET("/", echo.WrapHandler(http.HandlerFunc(deps.web.index)))
	for _, name := range deps.web.names() {
		handler := http.HandlerFunc(deps.web.file)
		if name == "/index.html" {
			handler = deps.web.index
		}
		e.GET(name, echo.WrapHandler(handler))
	}

	h := &productHandlers{store: deps.store, maxBodyBytes: deps.maxBodyBytes}
	auth := requireToken(deps.apiToken)
	e.GET("/products", h.list)
	e.POST("/products", h.create, auth)
	e.GET("/products/:id", h.get)
	e.PUT("/products/:id", h.replace, auth)
	e.PATCH("/products/:id", h.patch, auth)
	e.DELETE("/products/:id", h.delete, auth)
	for _, r := range e.Routes() {
		metrics.routes[r.Path] = true
	}
	return e
}

// errorHandler writes every error as the API's JSON error body; unexpected
// ones are logged once, here.
func errorHandler(logger *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			err = fromEchoError(he)
		}
		api, unexpected := classify(err)
		if unexpected {
			logger.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "status", api.Status, "err", err)
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
			got, ok := strings.CutPrefix(c.Request().Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
				return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized,
					Message: "missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>"}
			}
			return next(c)
		}
	}
}

// securityHeaders sets the headers every response carries.
func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		return next(c)
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
