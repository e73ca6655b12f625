// Package deploy holds no code: its tests check the deployment files next to
// it against the programs they deploy. They parse deploy/Dockerfile with
// BuildKit's parser, load docker-compose.yml with the Compose
// specification's loader, read the compose NATS and haproxy configurations
// with nats-server's and haproxy's own checkers, and decode every manifest in
// deploy/k8s strictly into the Kubernetes API types. The environment
// variables the files set are compared with the ones the programs list in
// their -h output, so neither side can drift.
//
// The heavy dependencies (BuildKit, compose-go, k8s.io/api) are imported by
// these tests only.
package deploy
