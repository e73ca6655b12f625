package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
)

// TestClassifyDatabaseErrors: what the database says becomes 503 when it
// cannot serve now (retry later) and 500 only for what nobody expects.
func TestClassifyDatabaseErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		code   pqerror.Code
		status int
	}{
		{"statement timeout", "57014", http.StatusServiceUnavailable},
		{"lock timeout", "55P03", http.StatusServiceUnavailable},
		{"too many connections", "53300", http.StatusServiceUnavailable},
		{"admin shutdown", "57P01", http.StatusServiceUnavailable},
		{"connection failure", "08006", http.StatusServiceUnavailable},
		{"serialization failure", "40001", http.StatusServiceUnavailable},
		{"deadlock", "40P01", http.StatusServiceUnavailable},
		{"syntax error is ours", "42601", http.StatusInternalServerError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := fmt.Errorf("update product 1: %w", &pq.Error{Code: tc.code})
			api, unexpected := classify(context.Background(), err)
			if api.Status != tc.status {
				t.Errorf("status %d, want %d (%s)", api.Status, tc.status, api.Message)
			}
			if !unexpected {
				t.Error("a database failure must be logged")
			}
		})
	}
	api, unexpected := classify(context.Background(), errors.New("boom"))
	if api.Status != http.StatusInternalServerError || !unexpected {
		t.Errorf("unknown error: %d %v", api.Status, unexpected)
	}
}
