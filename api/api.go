// Package api holds productwatch's contracts: the OpenAPI document for REST
// (openapi.yaml, embedded as [OpenAPI]) and the AsyncAPI document of the
// WebSocket protocol and NATS subjects (asyncapi.yaml, [AsyncAPI]).
//
// The package only embeds the documents, so that any binary can carry it (the
// gateway may serve it) without linking an OpenAPI library. Tests check real
// answers against it with package apitest.
package api

import _ "embed" // for go:embed

// OpenAPI is the OpenAPI 3.0.3 document of the gateway's REST API, in YAML:
// products, probes and metrics, with their request and response schemas,
// error codes and the bearer security scheme. It is the source of truth that
// the gateway's answers are tested against. Treat it as read-only: every user
// of the package shares the same bytes.
//
//go:embed openapi.yaml
var OpenAPI []byte

// AsyncAPI is the AsyncAPI 3.0 document of the live side: the WebSocket
// protocol of /websocket (commands, change events, snapshots, answers, close
// codes) and the NATS subjects the bridge publishes on. Tests check real
// messages against its schemas. Treat it as read-only.
//
//go:embed asyncapi.yaml
var AsyncAPI []byte
