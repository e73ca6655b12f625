package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// webFS is the page: index.html, main.css and the JS modules. Plain ES
// modules, no build step.
//
//go:embed web
var webFS embed.FS

// pushedCookie marks a browser that has had the assets pushed (for an hour):
// push only helps a cold cache.
const pushedCookie = "assetspushed"

// asset is one embedded file, with what serving it needs computed once.
type asset struct {
	name        string // "/main.css"
	contentType string
	body, gz    []byte // gz: gzip-compressed, nil when not worth it
	etag        string
}

// webAssets serves the page and its assets: ETag and revalidation, gzip
// when the client takes it (static responses only: /websocket is never
// compressed), HTTP/2 server push of the assets to browsers that have not
// had them, and 103 Early Hints.
type webAssets struct {
	assets   map[string]*asset
	preload  []string // the assets the page needs, in Link preload form
	pushList []string // the assets pushed with the page
}

// hstsValue is the Strict-Transport-Security header for HSTS_MAX_AGE; ""
// when off. The router sets it on every HTTPS response.
func hstsValue(maxAge int) string {
	if maxAge <= 0 {
		return ""
	}
	return "max-age=" + strconv.Itoa(maxAge)
}

func newWebAssets() (*webAssets, error) {
	w := &webAssets{assets: map[string]*asset{}}
	err := fs.WalkDir(webFS, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := webFS.ReadFile(p)
		if err != nil {
			return err
		}
		name := "/" + strings.TrimPrefix(p, "web/")
		sum := sha256.Sum256(body)
		a := &asset{name: name, body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`,
			contentType: mime.TypeByExtension(path.Ext(name))}
		if a.contentType == "" {
			a.contentType = "application/octet-stream"
		}
		if strings.HasSuffix(name, ".js") {
			a.contentType = "text/javascript; charset=utf-8"
		}
		if strings.HasSuffix(name, ".d.ts") { // the JS client's type declarations, for editors and tsc
			a.contentType = "application/typescript; charset=utf-8"
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(body)
		_ = zw.Close()
		if buf.Len() < len(body) {
			a.gz = buf.Bytes()
		}
		w.assets[name] = a
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded web assets: %w", err)
	}
	w.preload = []string{"</main.css>; rel=preload; as=style", "</productwatch.js>; rel=modulepreload", "</app.js>; rel=modulepreload"}
	w.pushList = []string{"/main.css", "/productwatch.js", "/app.js"}
	return w, nil
}

// names returns the paths of the assets (for the router).
func (w *webAssets) names() []string {
	names := make([]string, 0, len(w.assets))
	for name := range w.assets {
		names = append(names, name)
	}
	return names
}

// index serves the page: 103 Early Hints with the preload links, then, on
// HTTP/2 without the pushed cookie, a push of the assets (and the cookie,
// for an hour), then the page.
func (w *webAssets) index(rw http.ResponseWriter, r *http.Request) {
	rw = unwrap(rw)
	h := rw.Header()
	for _, link := range w.preload {
		h.Add("Link", link)
	}
	rw.WriteHeader(http.StatusEarlyHints)
	if _, err := r.Cookie(pushedCookie); err != nil {
		if pusher, ok := rw.(http.Pusher); ok {
			pushed := false
			for _, target := range w.pushList {
				// ErrNotSupported: the client turned push off (current
				// browsers do); the hints above serve them.
				if pusher.Push(target, &http.PushOptions{Header: http.Header{"Accept-Encoding": r.Header["Accept-Encoding"]}}) == nil {
					pushed = true
				}
			}
			if pushed {
				http.SetCookie(rw, &http.Cookie{Name: pushedCookie, Value: "1", Path: "/", MaxAge: 3600,
					HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
			}
		}
	}
	w.serve(rw, r, w.assets["/index.html"])
}

// file serves one asset by its path.
func (w *webAssets) file(rw http.ResponseWriter, r *http.Request) {
	a, ok := w.assets[r.URL.Path]
	if !ok {
		http.NotFound(rw, r)
		return
	}
	w.serve(rw, r, a)
}

func (w *webAssets) serve(rw http.ResponseWriter, r *http.Request, a *asset) {
	h := rw.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("ETag", a.etag)
	h.Set("Cache-Control", "no-cache") // revalidate: cheap with the ETag, and a deploy shows at once
	h.Set("Vary", "Accept-Encoding")
	if strings.HasPrefix(a.contentType, "text/html") {
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, a.etag) {
		rw.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if a.gz != nil && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	rw.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = rw.Write(body)
	}
}

// acceptsGzip reports whether an Accept-Encoding header takes gzip (with a
// q-value above 0).
func acceptsGzip(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q := 1.0
		if v, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				q = f
			}
		}
		return q > 0
	}
	return false
}

// unwrap returns the writer beneath a router's wrapper (echo's Response):
// the page writes a 103 before its 200, which echo's wrapper would take for
// the final status, and pushes, which it does not pass on.
func unwrap(rw http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return rw
		}
		rw = u.Unwrap()
	}
}
