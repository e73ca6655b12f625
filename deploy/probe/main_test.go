package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = io.WriteString(w, `{"status":"ready"}`)
		case "/moved":
			http.Redirect(w, r, "/readyz", http.StatusFound)
		default:
			http.Error(w, "draining", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/readyz"
	ln.Close()

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "ready", args: []string{srv.URL + "/readyz"}},
		{name: "not ready", args: []string{srv.URL + "/draining"}, wantErr: "503"},
		{name: "redirect is not healthy", args: []string{srv.URL + "/moved"}, wantErr: "302"},
		{name: "nothing listening", args: []string{closed}, wantErr: "refused"},
		{name: "no url", args: nil, wantErr: "usage"},
		{name: "two urls", args: []string{srv.URL, srv.URL}, wantErr: "usage"},
		{name: "bad flag", args: []string{"-nope", srv.URL}, wantErr: "flag provided but not defined"},
		{name: "bad url", args: []string{"http://[::1"}, wantErr: "missing ']'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("run: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("run = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
