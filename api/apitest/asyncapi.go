package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"go.yaml.in/yaml/v4"

	"github.com/productwatch/productwatch/api"
)

// MessageValidator checks WebSocket and NATS messages against the schemas of
// api/asyncapi.yaml. Safe for concurrent use.
type MessageValidator struct {
	schemas openapi3.Schemas
}

// loadMessageSchemas turns the AsyncAPI document's components.schemas (JSON
// Schema, the subset OpenAPI 3.0 shares) into kin-openapi schemas, with
// their $refs resolved, once per test binary.
var loadMessageSchemas = sync.OnceValues(func() (openapi3.Schemas, error) {
	var doc struct {
		Components struct {
			Schemas map[string]any `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(api.AsyncAPI, &doc); err != nil {
		return nil, fmt.Errorf("asyncapi.yaml: %w", err)
	}
	wrapper, err := json.Marshal(map[string]any{
		"openapi":    "3.0.3",
		"info":       map[string]any{"title": "asyncapi.yaml schemas", "version": "1"},
		"paths":      map[string]any{},
		"components": map[string]any{"schemas": doc.Components.Schemas},
	})
	if err != nil {
		return nil, fmt.Errorf("asyncapi.yaml schemas: %w", err)
	}
	loaded, err := openapi3.NewLoader().LoadFromData(wrapper)
	if err != nil {
		return nil, fmt.Errorf("asyncapi.yaml schemas: %w", err)
	}
	if err := loaded.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("asyncapi.yaml schemas: %w", err)
	}
	return loaded.Components.Schemas, nil
})

// NewMessageValidator loads the schemas of api/asyncapi.yaml.
func NewMessageValidator(t testing.TB) *MessageValidator {
	t.Helper()
	schemas, err := loadMessageSchemas()
	if err != nil {
		t.Fatal(err)
	}
	return &MessageValidator{schemas: schemas}
}

// Validate checks msg against the named schema (Subscribe, Unsubscribe,
// ChangeEvent, Snapshot, Ack, Error, EventBatch).
func (v *MessageValidator) Validate(schema string, msg []byte) error {
	ref, ok := v.schemas[schema]
	if !ok {
		return fmt.Errorf("asyncapi.yaml has no schema %q", schema)
	}
	var value any
	if err := json.Unmarshal(msg, &value); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := ref.Value.VisitJSON(value); err != nil {
		return fmt.Errorf("%s does not match schema %s: %w", msg, schema, err)
	}
	return nil
}

// CheckServerMessage finds which server message msg is (by its type or
// action; a JSON array is an EventBatch) and validates it; an unrecognised
// message fails the test.
func (v *MessageValidator) CheckServerMessage(t testing.TB, msg []byte) {
	t.Helper()
	if trimmed := bytes.TrimLeft(msg, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '[' {
		if err := v.Validate("EventBatch", msg); err != nil {
			t.Error(err)
		}
		return
	}
	var probe struct {
		Type   string `json:"type"`
		Action string `json:"action"`
	}
	_ = json.Unmarshal(msg, &probe)
	schema := ""
	switch {
	case probe.Type == "ack":
		schema = "Ack"
	case probe.Type == "error":
		schema = "Error"
	case probe.Action == "SNAPSHOT":
		schema = "Snapshot"
	case probe.Action != "":
		schema = "ChangeEvent"
	default:
		t.Errorf("server message %s is none of asyncapi.yaml's", msg)
		return
	}
	if err := v.Validate(schema, msg); err != nil {
		t.Error(err)
	}
}
