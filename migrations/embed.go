// Package migrations holds the SQL schema of productwatch as goose migrations,
// embedded so that both programs can apply them at start (see pkg/schema).
package migrations

import "embed"

// FS holds every migration file (NNNNN_name.sql), in goose's SQL format.
//
//go:embed *.sql
var FS embed.FS
